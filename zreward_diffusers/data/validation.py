"""Row-by-row validation of records and pairs: a bad row is reported with where it came from, never dropped silently.

Each row is checked in a fixed order and reported with its first problem, as a `BadRow` naming the source (a file
name, `"Dataset"`, or `"records"` / `"pairs"` for Python lists), the row's index (the 1-based line number in a
JSONL or CSV file, the 0-based position in a parquet table, a `datasets.Dataset` or a list), the field and the
reason. By default the rows are checked in full and a `DataValidationError` (a `ValueError`) lists the bad ones
(the first 20, then a count). With `skip_bad_rows=True` the bad rows are left out, one warning gives their count
and the first few, and the caller keeps them (`RewardDataset.skipped`).

Records:
    record_id a non-empty string, unique; prompt a non-empty string; image an existing file (decoded too with
    `verify_images=True`) or an in-memory PIL image; group_id a non-empty string; labels, histograms and rationales
    keyed by known dimensions; labels finite and within `[v_1, v_K]`; histograms of length K, finite,
    non-negative, with a positive sum; rationales strings; meta a dict.
Pairs:
    record_a and record_b distinct ids of valid records of the pair's group; preference -1, 0 or 1; dimension a
    known one or None.

>>> from zreward_diffusers.data.records import Record
>>> record = Record("r0", "", Image.new("RGB", (4, 4)), "g0")
>>> validate_rows([record], dimensions=("alignment",), levels=(1.0, 5.0))
Traceback (most recent call last):
...
zreward_diffusers.data.validation.DataValidationError: 1 bad row:
  records row 0, field 'prompt': must be a non-empty string, got ''
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from .records import Pair, Record, resolve_image_path

__all__ = [
    "BadRow",
    "DataValidationError",
    "RowLocation",
    "check_pair",
    "check_record",
    "check_schema",
    "find_bad_pairs",
    "find_bad_records",
    "report_bad_rows",
    "validate_rows",
]

logger = logging.getLogger(__name__)

MAX_LISTED_BAD_ROWS = 20
MAX_LOGGED_BAD_ROWS = 5


class RowLocation(NamedTuple):
    """Where a row came from: `source` (file name or `"Dataset"`), `unit` (`"line"` or `"row"`) and `index`."""

    source: str
    unit: str
    index: int


@dataclass(frozen=True)
class BadRow:
    """A row that failed validation: where it came from, the first field found wrong, and why."""

    source: str
    unit: str
    index: int
    field: str
    reason: str

    @classmethod
    def at(cls, location: RowLocation, field: str, reason: str) -> BadRow:
        return cls(location.source, location.unit, location.index, field, reason)

    def __str__(self) -> str:
        return f"{self.source} {self.unit} {self.index}, field {self.field!r}: {self.reason}"


class DataValidationError(ValueError):
    """Raised when rows fail validation; `bad_rows` holds all of them, the message lists the first 20."""

    def __init__(self, bad_rows: Sequence[BadRow]):
        self.bad_rows = list(bad_rows)
        count = len(self.bad_rows)
        lines = [f"{count} bad row{'s' if count != 1 else ''}:"]
        lines += [f"  {bad}" for bad in self.bad_rows[:MAX_LISTED_BAD_ROWS]]
        if count > MAX_LISTED_BAD_ROWS:
            lines.append(f"  ... and {count - MAX_LISTED_BAD_ROWS} more")
        super().__init__("\n".join(lines))


def check_schema(dimensions: Sequence[str], levels: Sequence[float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Normalise and check the rubric dimension names and level values a dataset is validated against.

    >>> check_schema(["alignment"], [1, 5])
    (('alignment',), (1.0, 5.0))
    """
    dimensions = tuple(dimensions)
    if not dimensions or not all(isinstance(name, str) and name for name in dimensions):
        raise ValueError(f"`dimensions` must be non-empty strings, at least one, got {dimensions}")
    if len(set(dimensions)) != len(dimensions):
        raise ValueError(f"`dimensions` must be unique, got {dimensions}")
    levels = tuple(float(value) for value in levels)
    if len(levels) < 2 or not all(math.isfinite(v) for v in levels) or any(
        b <= a for a, b in zip(levels, levels[1:], strict=False)
    ):
        raise ValueError(f"`levels` must be at least two finite, strictly increasing values, got {levels}")
    return dimensions, levels


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _non_empty_string(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _unknown_dimension(name, dimensions: tuple[str, ...]) -> str:
    return f"unknown dimension {name!r}; the known dimensions are {list(dimensions)}"


def _check_image(image, root: Path | None, verify_images: bool) -> str | None:
    if isinstance(image, Image.Image):
        if verify_images:
            try:
                image.load()
            except (OSError, ValueError) as error:
                return f"the in-memory image cannot be decoded: {error}"
        return None
    if not isinstance(image, str):
        return f"must be a path or a PIL image, got {type(image).__name__}"
    if not image:
        return "must be a path or a PIL image, got an empty path"
    path = resolve_image_path(image, root)
    if not path.is_file():
        return f"image file not found: {path}"
    if verify_images:
        try:
            with Image.open(path) as opened:
                opened.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return f"{path} cannot be decoded as an image: {error}"
    return None


def check_record(
    record: Record,
    *,
    dimensions: tuple[str, ...],
    levels: tuple[float, ...],
    root: Path | None = None,
    verify_images: bool = False,
) -> tuple[str, str] | None:
    """The first problem of `record` as `(field, reason)`, or None; uniqueness of ids is checked by `validate_rows`."""
    if not _non_empty_string(record.record_id):
        return "record_id", f"must be a non-empty string, got {record.record_id!r}"
    if not _non_empty_string(record.prompt):
        return "prompt", f"must be a non-empty string, got {record.prompt!r}"
    problem = _check_image(record.image, root, verify_images)
    if problem:
        return "image", problem
    if not _non_empty_string(record.group_id):
        return "group_id", f"must be a non-empty string, got {record.group_id!r}"
    for name in ("labels", "histograms", "rationales", "meta"):
        if not isinstance(getattr(record, name), dict):
            return name, f"must be a dict, got {type(getattr(record, name)).__name__}"
    low, high = levels[0], levels[-1]
    for dimension, value in record.labels.items():
        field = f"labels.{dimension}"
        if dimension not in dimensions:
            return field, _unknown_dimension(dimension, dimensions)
        if not _is_number(value) or not math.isfinite(value):
            return field, f"must be a finite number, got {value!r}"
        if not low <= value <= high:
            return field, f"{value} is outside the level range [{low}, {high}]"
    for dimension, counts in record.histograms.items():
        field = f"histograms.{dimension}"
        if dimension not in dimensions:
            return field, _unknown_dimension(dimension, dimensions)
        if not isinstance(counts, (list, tuple)) or len(counts) != len(levels):
            shown = len(counts) if isinstance(counts, (list, tuple)) else type(counts).__name__
            return field, f"must be a list of {len(levels)} counts (one per level), got {shown}"
        if not all(_is_number(count) and math.isfinite(count) for count in counts):
            return field, f"counts must be finite numbers, got {list(counts)}"
        if any(count < 0 for count in counts):
            return field, f"counts must be non-negative, got {list(counts)}"
        if sum(counts) <= 0:
            return field, f"counts must have a positive sum, got {list(counts)}"
    for dimension, text in record.rationales.items():
        field = f"rationales.{dimension}"
        if dimension not in dimensions:
            return field, _unknown_dimension(dimension, dimensions)
        if not isinstance(text, str):
            return field, f"must be a string, got {type(text).__name__}"
    return None


def check_pair(pair: Pair, records_by_id: dict[str, Record], dimensions: tuple[str, ...]) -> tuple[str, str] | None:
    """The first problem of `pair` as `(field, reason)`, or None; `records_by_id` holds the valid records."""
    if not _non_empty_string(pair.group_id):
        return "group_id", f"must be a non-empty string, got {pair.group_id!r}"
    for name in ("record_a", "record_b"):
        record_id = getattr(pair, name)
        if not isinstance(record_id, str) or record_id not in records_by_id:
            return name, f"{record_id!r} is not the id of a (valid) record"
        group_id = records_by_id[record_id].group_id
        if group_id != pair.group_id:
            return name, f"record {record_id!r} is in group {group_id!r}, not the pair's group {pair.group_id!r}"
    if pair.record_a == pair.record_b:
        return "record_b", f"a pair compares two different records, got {pair.record_a!r} twice"
    if not isinstance(pair.preference, numbers.Integral) or isinstance(pair.preference, bool) or \
            pair.preference not in (-1, 0, 1):
        return "preference", f"must be -1, 0 or 1, got {pair.preference!r}"
    if pair.dimension is not None and pair.dimension not in dimensions:
        return "dimension", _unknown_dimension(pair.dimension, dimensions) + " (or None for overall)"
    return None


def find_bad_records(
    records: Sequence[Record],
    locations: Sequence[RowLocation],
    *,
    dimensions: tuple[str, ...],
    levels: tuple[float, ...],
    root: Path | None = None,
    verify_images: bool = False,
) -> tuple[list[Record], list[BadRow]]:
    """Split `records` into the valid ones and a `BadRow` per bad one (the first of duplicate ids is kept)."""
    valid: list[Record] = []
    bad_rows: list[BadRow] = []
    first_seen: dict[str, RowLocation] = {}
    for record, location in zip(records, locations, strict=True):
        problem = check_record(record, dimensions=dimensions, levels=levels, root=root, verify_images=verify_images)
        if problem is None and record.record_id in first_seen:
            first = first_seen[record.record_id]
            problem = "record_id", f"duplicate {record.record_id!r}, first seen at {first.source} {first.unit} " \
                                   f"{first.index}"
        if problem is not None:
            bad_rows.append(BadRow.at(location, *problem))
        else:
            first_seen[record.record_id] = location
            valid.append(record)
    return valid, bad_rows


def find_bad_pairs(
    pairs: Sequence[Pair],
    locations: Sequence[RowLocation],
    records_by_id: dict[str, Record],
    dimensions: tuple[str, ...],
) -> tuple[list[Pair], list[BadRow]]:
    """Split `pairs` into the valid ones (against the valid records `records_by_id`) and a `BadRow` per bad one."""
    valid: list[Pair] = []
    bad_rows: list[BadRow] = []
    for pair, location in zip(pairs, locations, strict=True):
        problem = check_pair(pair, records_by_id, dimensions)
        if problem is not None:
            bad_rows.append(BadRow.at(location, *problem))
        else:
            valid.append(pair)
    return valid, bad_rows


def report_bad_rows(bad_rows: Sequence[BadRow], skip_bad_rows: bool) -> None:
    """Raise `DataValidationError` listing `bad_rows`, or with `skip_bad_rows` log one warning summarising them."""
    if not bad_rows:
        return
    if not skip_bad_rows:
        raise DataValidationError(bad_rows)
    shown = "; ".join(str(bad) for bad in bad_rows[:MAX_LOGGED_BAD_ROWS])
    more = f" (and {len(bad_rows) - MAX_LOGGED_BAD_ROWS} more)" if len(bad_rows) > MAX_LOGGED_BAD_ROWS else ""
    logger.warning("skipped %d bad rows: %s%s", len(bad_rows), shown, more)


def validate_rows(
    records: Sequence[Record],
    pairs: Sequence[Pair] = (),
    *,
    dimensions: Sequence[str],
    levels: Sequence[float],
    root: str | Path | None = None,
    verify_images: bool = False,
    skip_bad_rows: bool = False,
    record_locations: Sequence[RowLocation] | None = None,
    pair_locations: Sequence[RowLocation] | None = None,
    bad_rows: Sequence[BadRow] = (),
) -> tuple[list[Record], list[Pair], list[BadRow]]:
    """Check every record and pair; return the valid ones and the bad rows, or raise `DataValidationError`.

    Args:
        records / pairs: the rows to check.
        dimensions / levels: the rubric dimension names and level values labels are checked against.
        root: the directory relative image paths are resolved against (None: the working directory).
        verify_images: decode every image, not only check that its file exists.
        skip_bad_rows: leave bad rows out (logging one warning) instead of raising.
        record_locations / pair_locations: where each row came from, for the messages (default: its position
            in the list, in a source named "records" / "pairs").
        bad_rows: rows a reader already found bad (e.g. invalid JSON), reported with the others.

    Returns:
        `(valid_records, valid_pairs, bad_rows)`; pairs are checked against the valid records only, so a pair of
        a skipped record is reported too.
    """
    dimensions, levels = check_schema(dimensions, levels)
    root = None if root is None else Path(root)
    if record_locations is None:
        record_locations = [RowLocation("records", "row", index) for index in range(len(records))]
    if pair_locations is None:
        pair_locations = [RowLocation("pairs", "row", index) for index in range(len(pairs))]
    valid_records, bad_records = find_bad_records(
        records, record_locations, dimensions=dimensions, levels=levels, root=root, verify_images=verify_images
    )
    valid_pairs, bad_pairs = find_bad_pairs(
        pairs, pair_locations, {record.record_id: record for record in valid_records}, dimensions
    )
    found = [*bad_rows, *bad_records, *bad_pairs]
    report_bad_rows(found, skip_bad_rows)
    return valid_records, valid_pairs, found
