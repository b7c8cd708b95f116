"""Row-by-row validation of records and pairs: a bad row is reported with where it came from, never dropped silently.

Each row is checked in a fixed order and reported with its first problem, as a `BadRow` naming the source (a file
name, `"Dataset"`, or `"records"` / `"pairs"` for Python lists), the row's index (the 1-based line number in a
JSONL or CSV file, the 0-based position in a parquet table, a `datasets.Dataset` or a list), the field and the
reason. By default the rows are checked in full and a `DataValidationError` (a `ValueError`) lists the bad ones
(the first 20, then a count). With `skip_bad_rows=True` the bad rows are left out, one warning gives their count
and the first few, and the caller keeps them (`RewardDataset.skipped`).

Records:
    record_id a non-empty string, unique; prompt a non-empty string; image an existing file inside the dataset
    root or an in-memory PIL image, at most `MAX_IMAGE_PIXELS` pixels and decodable (with `verify_images=True`, the
    default; `verify_images=False` only checks that the file exists); group_id a non-empty string; labels,
    histograms and rationales keyed by known dimensions; labels finite and within `[v_1, v_K]`; histograms of
    length K, finite, non-negative, with a positive sum; rationales strings; meta a dict.
Image paths:
    relative paths resolve against the dataset root (`root`, or the working directory when it is None). A path
    that leaves the root — through `..`, as an absolute path elsewhere, or through a symbolic link — is a bad row
    unless `allow_outside_root=True` (for a dataset you trust to read files from anywhere).
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

import io
import logging
import math
import numbers
import reprlib
import warnings
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
    "in_source_order",
    "is_finite_number",
    "outside_root",
    "report_bad_rows",
    "shown",
    "validate_rows",
]

logger = logging.getLogger(__name__)

MAX_LISTED_BAD_ROWS = 20
MAX_LOGGED_BAD_ROWS = 5
# Images of more pixels are refused before they are decoded (decompression bombs: a few kB of PNG can decode to
# gigabytes). PIL's own default limit, checked here explicitly so that it holds whatever `PIL.Image.MAX_IMAGE_PIXELS`
# is set to; raise it here for larger images.
MAX_IMAGE_PIXELS = 89_478_485

_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 120, 120, 60
_SHOWN.maxlist = _SHOWN.maxtuple = 12
_SHOWN.maxdict, _SHOWN.maxlevel = 8, 3


def shown(value) -> str:
    """A repr for messages: long strings, large numbers and deep or long containers abbreviated.

    >>> shown("x" * 500)[:12], shown([[[[[1]]]]])
    ("'xxxxxxxxxxx", '[[[[...]]]]')
    """
    try:
        return _SHOWN.repr(value)
    except (ValueError, RecursionError):  # an integer of more than 4300 digits has no repr
        return f"<a {type(value).__name__} too large to show>"


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
    names, values = _as_tuple(dimensions), _as_tuple(levels)
    if names is None or not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"`dimensions` must be non-empty strings, at least one, got {shown(dimensions)}")
    if len(set(names)) != len(names):
        raise ValueError(f"`dimensions` must be unique, got {shown(names)}")
    if values is None or len(values) < 2 or not all(map(is_finite_number, values)) or any(
        b <= a for a, b in zip(values, values[1:], strict=False)
    ):
        raise ValueError(f"`levels` must be at least two finite, strictly increasing values, got {shown(levels)}")
    return names, tuple(float(value) for value in values)


def _as_tuple(values) -> tuple | None:
    """The items of a list, tuple or array; None for a string, a mapping or a scalar."""
    if isinstance(values, (str, bytes, dict)):
        return None
    try:
        return tuple(values)
    except TypeError:
        return None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A real number (not a bool) that is finite; an integer too large for a float is not."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _non_empty_string(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _unknown_dimension(name, dimensions: tuple[str, ...]) -> str:
    return f"unknown dimension {shown(name)}; the known dimensions are {list(dimensions)}"


def _too_many_pixels(image: Image.Image) -> str | None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{width} x {height} = {width * height} pixels, more than the limit of {MAX_IMAGE_PIXELS} (a "
                "decompression bomb?); raise zreward_diffusers.data.validation.MAX_IMAGE_PIXELS for larger images")
    return None


def _decode(image: Image.Image) -> str | None:
    """Why `image` cannot be decoded, or None; PIL raises many error types for broken files.

    An image opened lazily from encoded bytes (parquet, `datasets` binary columns) is verified on a throwaway copy,
    so that verifying a large dataset does not hold every decoded image in memory.
    """
    problem = _too_many_pixels(image)
    if problem:
        return problem
    try:
        encoded = getattr(getattr(image, "fp", None), "getvalue", None)
        if encoded is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel count is checked above
                with Image.open(io.BytesIO(encoded())) as copy:
                    copy.load()
        else:
            image.load()
    except Exception as error:  # OSError, SyntaxError, ValueError, struct.error, ... depending on the decoder
        return f"cannot be decoded as an image: {type(error).__name__}: {shown(str(error))}"
    return None


def outside_root(path: Path, root: Path | None) -> str | None:
    """Why `path` (already joined to `root`) is outside the dataset root, or None when it is inside."""
    base = Path.cwd() if root is None else Path(root)
    resolved, base = path.resolve(), base.resolve()
    if resolved.is_relative_to(base):
        return None
    return (f"{shown(str(path))} is outside the dataset root {shown(str(base))} (it resolves to "
            f"{shown(str(resolved))}); pass allow_outside_root=True to read images from anywhere")


def _check_image(image, root: Path | None, verify_images: bool, allow_outside_root: bool = False) -> str | None:
    if isinstance(image, Image.Image):
        if verify_images:
            problem = _decode(image)
            if problem:
                return f"the in-memory image {problem}"
        return None
    if not isinstance(image, str):
        return f"must be a path or a PIL image, got {type(image).__name__}"
    if not image:
        return "must be a path or a PIL image, got an empty path"
    path = resolve_image_path(image, root)
    try:
        problem = None if allow_outside_root else outside_root(path, root)
        if problem:
            return problem
        if not path.is_file():
            return f"image file not found: {shown(str(path))}"
    except (OSError, ValueError, RuntimeError) as error:  # a name too long, a NUL byte, a symlink loop
        return f"{shown(image)} is not a usable path: {shown(str(error))}"
    if verify_images:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by pixel count
                with Image.open(path) as opened:
                    problem = _decode(opened)
        except Exception as error:  # not an image at all (an empty file), or over PIL's own hard limit
            problem = f"cannot be decoded as an image: {type(error).__name__}: {shown(str(error))}"
        if problem:
            return f"{shown(str(path))} {problem}"
    return None


def check_record(
    record: Record,
    *,
    dimensions: tuple[str, ...],
    levels: tuple[float, ...],
    root: Path | None = None,
    verify_images: bool = True,
    allow_outside_root: bool = False,
) -> tuple[str, str] | None:
    """The first problem of `record` as `(field, reason)`, or None; uniqueness of ids is checked by `validate_rows`."""
    if not _non_empty_string(record.record_id):
        return "record_id", f"must be a non-empty string, got {shown(record.record_id)}"
    if not _non_empty_string(record.prompt):
        return "prompt", f"must be a non-empty string, got {shown(record.prompt)}"
    problem = _check_image(record.image, root, verify_images, allow_outside_root)
    if problem:
        return "image", problem
    if not _non_empty_string(record.group_id):
        return "group_id", f"must be a non-empty string, got {shown(record.group_id)}"
    for name in ("labels", "histograms", "rationales", "meta"):
        if not isinstance(getattr(record, name), dict):
            return name, f"must be a dict, got {type(getattr(record, name)).__name__}"
    low, high = levels[0], levels[-1]
    for dimension, value in record.labels.items():
        field = f"labels.{dimension}"
        if dimension not in dimensions:
            return field, _unknown_dimension(dimension, dimensions)
        if not is_finite_number(value):
            return field, f"must be a finite number, got {shown(value)}"
        if not low <= value <= high:
            return field, f"{shown(value)} is outside the level range [{low}, {high}]"
    for dimension, counts in record.histograms.items():
        field = f"histograms.{dimension}"
        if dimension not in dimensions:
            return field, _unknown_dimension(dimension, dimensions)
        if not isinstance(counts, (list, tuple)) or len(counts) != len(levels):
            got = len(counts) if isinstance(counts, (list, tuple)) else type(counts).__name__
            return field, f"must be a list of {len(levels)} counts (one per level), got {got}"
        if not all(is_finite_number(count) for count in counts):
            return field, f"counts must be finite numbers, got {shown(list(counts))}"
        if any(count < 0 for count in counts):
            return field, f"counts must be non-negative, got {shown(list(counts))}"
        if sum(counts) <= 0:
            return field, f"counts must have a positive sum, got {shown(list(counts))}"
        if not math.isfinite(sum(counts)):
            return field, f"counts must have a finite sum, got {shown(list(counts))}"
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
        return "group_id", f"must be a non-empty string, got {shown(pair.group_id)}"
    for name in ("record_a", "record_b"):
        record_id = getattr(pair, name)
        if not isinstance(record_id, str) or record_id not in records_by_id:
            return name, f"{shown(record_id)} is not the id of a (valid) record"
        group_id = records_by_id[record_id].group_id
        if group_id != pair.group_id:
            return name, f"record {record_id!r} is in group {group_id!r}, not the pair's group {pair.group_id!r}"
    if pair.record_a == pair.record_b:
        return "record_b", f"a pair compares two different records, got {pair.record_a!r} twice"
    if not isinstance(pair.preference, numbers.Integral) or isinstance(pair.preference, bool) or \
            pair.preference not in (-1, 0, 1):
        return "preference", f"must be -1, 0 or 1, got {shown(pair.preference)}"
    if pair.dimension is not None and not (isinstance(pair.dimension, str) and pair.dimension in dimensions):
        return "dimension", _unknown_dimension(pair.dimension, dimensions) + " (or None for overall)"
    return None


def find_bad_records(
    records: Sequence[Record],
    locations: Sequence[RowLocation],
    *,
    dimensions: tuple[str, ...],
    levels: tuple[float, ...],
    root: Path | None = None,
    verify_images: bool = True,
    allow_outside_root: bool = False,
) -> tuple[list[Record], list[BadRow]]:
    """Split `records` into the valid ones and a `BadRow` per bad one (the first of duplicate ids is kept)."""
    valid: list[Record] = []
    bad_rows: list[BadRow] = []
    first_seen: dict[str, RowLocation] = {}
    for record, location in zip(records, locations, strict=True):
        try:
            problem = check_record(record, dimensions=dimensions, levels=levels, root=root,
                                   verify_images=verify_images, allow_outside_root=allow_outside_root)
        except Exception as error:  # a value no check foresaw: the row is bad, the others are still read
            problem = "(row)", f"cannot be checked: {type(error).__name__}: {shown(str(error))}"
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
        try:
            problem = check_pair(pair, records_by_id, dimensions)
        except Exception as error:  # a value no check foresaw: the row is bad, the others are still read
            problem = "(row)", f"cannot be checked: {type(error).__name__}: {shown(str(error))}"
        if problem is not None:
            bad_rows.append(BadRow.at(location, *problem))
        else:
            valid.append(pair)
    return valid, bad_rows


def in_source_order(bad_rows: Sequence[BadRow], sources: Sequence[str] = ()) -> list[BadRow]:
    """`bad_rows` sorted by source (in the order of `sources`, then of first appearance) and by line or row within
    each, so that a message lists them as they appear in the files, whatever check found them."""
    rank: dict[str, int] = {}
    for source in (*sources, *(bad.source for bad in bad_rows)):
        rank.setdefault(source, len(rank))
    return sorted(bad_rows, key=lambda bad: (rank[bad.source], bad.index))


def report_bad_rows(bad_rows: Sequence[BadRow], skip_bad_rows: bool) -> None:
    """Raise `DataValidationError` listing `bad_rows`, or with `skip_bad_rows` log one warning summarising them."""
    if not bad_rows:
        return
    if not skip_bad_rows:
        raise DataValidationError(bad_rows)
    listed = "; ".join(str(bad) for bad in bad_rows[:MAX_LOGGED_BAD_ROWS])
    more = f" (and {len(bad_rows) - MAX_LOGGED_BAD_ROWS} more)" if len(bad_rows) > MAX_LOGGED_BAD_ROWS else ""
    logger.warning("skipped %d bad rows: %s%s", len(bad_rows), listed, more)


def validate_rows(
    records: Sequence[Record],
    pairs: Sequence[Pair] = (),
    *,
    dimensions: Sequence[str],
    levels: Sequence[float],
    root: str | Path | None = None,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
    record_locations: Sequence[RowLocation] | None = None,
    pair_locations: Sequence[RowLocation] | None = None,
    bad_rows: Sequence[BadRow] = (),
) -> tuple[list[Record], list[Pair], list[BadRow]]:
    """Check every record and pair; return the valid ones and the bad rows, or raise `DataValidationError`.

    Args:
        records / pairs: the rows to check.
        dimensions / levels: the rubric dimension names and level values labels are checked against.
        root: the dataset root: relative image paths resolve against it and no image path may leave it (None: the
            working directory).
        verify_images: decode every image (the default), not only check that its file exists.
        skip_bad_rows: leave bad rows out (logging one warning) instead of raising.
        allow_outside_root: accept image paths outside `root` (a dataset you trust).
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
        records, record_locations, dimensions=dimensions, levels=levels, root=root, verify_images=verify_images,
        allow_outside_root=allow_outside_root,
    )
    valid_pairs, bad_pairs = find_bad_pairs(
        pairs, pair_locations, {record.record_id: record for record in valid_records}, dimensions
    )
    found = in_source_order([*bad_rows, *bad_records, *bad_pairs],
                            [location.source for location in (*record_locations, *pair_locations)])
    report_bad_rows(found, skip_bad_rows)
    return valid_records, valid_pairs, found
