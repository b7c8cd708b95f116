"""Readers: local JSONL / JSON / CSV / parquet files and Hugging Face `datasets.Dataset`s to a `RewardDataset`.

A `column_map` maps our fields to source columns. The targets are the `Record` fields (`record_id`, `prompt`,
`image`, `group_id`, `labels`, `histograms`, `rationales`, `meta`) and dotted per-key targets:
`labels.<dimension>`, `histograms.<dimension>`, `rationales.<dimension>` and `meta.<key>`. A field a map leaves
out is read from the column of the same name when there is one. Then:

- `prompt` and `image` are required; a mapped column the source lacks is a `ValueError` naming it.
- `record_id` absent: the row's index (see `validation`) as a string; `group_id` absent or empty: the prompt.
- Images may be paths (relative to `root`, by default the file's directory; for a `datasets.Dataset`, the working
  directory), PIL images (the `datasets` `Image` feature), encoded bytes, or `{"bytes", "path"}` dicts (an `Image`
  feature read without decoding, or stored in parquet). Bytes are opened lazily as in-memory PIL images.
- A per-dimension cell that is empty (None, a blank string, or NaN in a CSV / parquet / `datasets` column, where
  NaN marks a missing value) means "not labelled". In JSON sources (`.jsonl`, `.json`) only null means that: a NaN
  there is a value, and a bad row. CSV cells are text: labels are parsed as numbers, histograms and whole-dict
  columns as JSON.
- Images are decoded to verify them (`verify_images=True`, the default) and image paths must stay inside `root`
  (`allow_outside_root=True` lifts that); see `validation`.
- A row that cannot be read (invalid JSON or UTF-8, a number of more than 4300 digits, nesting deeper than
  `jsonl.MAX_JSON_DEPTH`, undecodable image bytes) is a bad row like any other: it is reported with its line or
  row, and `skip_bad_rows=True` skips it and reads the rest.

>>> import datasets
>>> from PIL import Image
>>> source = datasets.Dataset.from_dict({"caption": ["a red circle"], "file": [Image.new("RGB", (8, 8))],
...                                      "align": [4.5]})
>>> dataset = from_hf_dataset(source, {"prompt": "caption", "image": "file", "labels.alignment": "align"})
>>> record = dataset.records[0]
>>> record.record_id, record.group_id, record.labels
('0', 'a red circle', {'alignment': 4.5})
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from .dataset import DEFAULT_DIMENSIONS, DEFAULT_LEVELS, INFO_FILE, RewardDataset
from .jsonl import MAX_JSON_DEPTH, json_depth, parse_json, parse_jsonl
from .records import Record
from .validation import BadRow, RowLocation, check_schema, is_finite_number, shown, validate_rows

__all__ = [
    "IMAGE_OPEN_ERRORS",
    "RECORD_FIELDS",
    "Table",
    "from_hf_dataset",
    "image_value",
    "load_dataset",
    "read_records",
    "read_table",
    "records_from_table",
    "resolve_column_map",
    "unreadable_row",
]

RECORD_FIELDS = ("record_id", "prompt", "image", "group_id", "labels", "histograms", "rationales", "meta")
PER_DIMENSION_FIELDS = ("labels", "histograms", "rationales")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# What opening encoded image bytes may raise: not an image, or over PIL's own decompression-bomb limit.
IMAGE_OPEN_ERRORS = (OSError, Image.DecompressionBombError)


class Table(NamedTuple):
    """Rows of a source: its `columns`, `(location, row)` pairs, rows already found bad (e.g. invalid JSON), and
    whether NaN marks a missing cell (tabular sources) or is a value like any other (JSON)."""

    columns: list[str]
    rows: Iterable[tuple[RowLocation, dict]]
    bad_rows: list[BadRow]
    nan_is_missing: bool = True


def read_table(source) -> Table:
    """Rows of a `.jsonl`, `.json` (a list of objects), `.csv` or `.parquet` file, a `datasets.Dataset`, or dicts.

    Row indices: 1-based line numbers for JSONL and CSV (the header is line 1), 0-based positions otherwise.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _read_jsonl_table(path)
        if suffix == ".json":
            return _read_json_table(path)
        if suffix == ".csv":
            return _read_csv_table(path)
        if suffix == ".parquet":
            import pyarrow.parquet

            table = pyarrow.parquet.read_table(path)
            return Table(list(table.column_names), _indexed(path.name, table.to_pylist()), [])
        raise ValueError(f"cannot read {path}: expected a file ending in one of {TABLE_SUFFIXES}")
    if isinstance(source, Mapping):
        raise TypeError(
            f"got a mapping with keys {list(source)[:5]}, e.g. a DatasetDict: pass one split, e.g. dataset['train']"
        )
    if hasattr(source, "column_names"):
        rows = _dataset_rows(source) if hasattr(source, "select") and hasattr(source, "__len__") else \
            _indexed("Dataset", source)
        return Table(list(source.column_names), rows, [])
    if isinstance(source, Sequence) and all(isinstance(row, Mapping) for row in source):
        columns = list(dict.fromkeys(key for row in source for key in row))
        return Table(columns, _indexed("rows", source), [])
    raise TypeError(
        f"expected a path to a {'/'.join(TABLE_SUFFIXES)} file, a datasets.Dataset or a list of dicts, "
        f"got {type(source).__name__}"
    )


def _indexed(source: str, rows: Iterable[Mapping]) -> Iterator[tuple[RowLocation, dict]]:
    for index, row in enumerate(rows):
        yield RowLocation(source, "row", index), dict(row) if isinstance(row, Mapping) else row


def _dataset_rows(dataset) -> Iterator[tuple[RowLocation, dict | Exception]]:
    """The rows of a `datasets.Dataset`; a row `datasets` fails to produce (e.g. it cannot decode an `Image`
    feature) is yielded as its exception, and reading resumes after it."""
    index, rows = 0, iter(dataset)
    while index < len(dataset):
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:
            yield RowLocation("Dataset", "row", index), error
            index += 1
            rows = iter(dataset.select(range(index, len(dataset))))
            continue
        yield RowLocation("Dataset", "row", index), dict(row)
        index += 1


def unreadable_row(row) -> str | None:
    """Why a table row cannot be used (an error met reading it, or not a mapping), or None."""
    if isinstance(row, Exception):
        return f"cannot be read: {type(row).__name__}: {shown(str(row))}"
    if not isinstance(row, Mapping):
        return f"expected a mapping of column to value, got {type(row).__name__}"
    return None


def _read_jsonl_table(path: Path) -> Table:
    rows, bad_rows = [], []
    with open(path, "rb") as lines:  # decoded line by line: one line that is not UTF-8 is one bad row
        for line_number, value, error in parse_jsonl(lines):
            location = RowLocation(path.name, "line", line_number)
            if error is None and not isinstance(value, dict):
                error = f"expected a JSON object, got {type(value).__name__}"
            if error is not None:
                bad_rows.append(BadRow.at(location, "(row)", error))
            else:
                rows.append((location, value))
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    return Table(columns, rows, bad_rows, nan_is_missing=False)


def _read_json_table(path: Path) -> Table:
    """A `.json` file holding a list of objects; an element that is not an object, or nests too deep, is a bad row."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text: {error}") from error
    value, error = parse_json(text, max_depth=sys.getrecursionlimit())  # too deep rows are bad rows, below
    if error is not None:  # the file as a whole is not JSON: there are no rows to tell apart
        raise ValueError(f"{path}: {error}")
    if not isinstance(value, list):
        raise ValueError(f"{path}: a .json source must hold a list of objects (one per row), got "
                         f"{type(value).__name__}")
    rows, bad_rows = [], []
    for index, row in enumerate(value):
        location = RowLocation(path.name, "row", index)
        if not isinstance(row, dict):
            bad_rows.append(BadRow.at(location, "(row)", f"expected a JSON object, got {type(row).__name__}"))
        elif json_depth(row, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            bad_rows.append(BadRow.at(location, "(row)", f"JSON nested deeper than {MAX_JSON_DEPTH} levels"))
        else:
            rows.append((location, row))
    return Table(list(dict.fromkeys(key for _, row in rows for key in row)), rows, bad_rows, nan_is_missing=False)


def _read_csv_table(path: Path) -> Table:
    rows = []
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        previous_end = 1  # the header line; a quoted cell may span lines, so rows start after the previous end
        try:
            for row in reader:
                rows.append((RowLocation(path.name, "line", previous_end + 1), row))
                previous_end = reader.line_num
            columns = list(reader.fieldnames or [])
        except csv.Error as error:  # e.g. a cell over csv.field_size_limit(): the file's structure breaks there
            raise ValueError(f"{path}: cannot read the CSV row starting on line {previous_end + 1}: {error}") \
                from error
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text after line {previous_end}: {error}") from error
    return Table(columns, rows, [])


def _is_missing(value, nan: bool = True) -> bool:
    """None, a blank string, or (when `nan`: tabular sources) NaN."""
    return value is None or (nan and isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip()
    )


def _number(value):
    """A float for numeric text (CSV cells); anything else unchanged, for validation to judge."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _json_text(value):
    """Parsed JSON for text (CSV cells holding lists or dicts); anything else, or bad JSON, unchanged (for
    validation to judge)."""
    if isinstance(value, str):
        parsed, error = parse_json(value)
        return value if error is not None else parsed
    return value


def _group_id(value, prompt, nan_is_missing: bool):
    """A row's group: the prompt when absent; numbers (a `prompt_id` column) as text; anything else unchanged, for
    validation to judge (a dict or a list is not a group id)."""
    if _is_missing(value, nan_is_missing):
        return prompt
    if isinstance(value, str) or (is_finite_number(value) and not isinstance(value, bool)):
        return str(value)
    return value


def image_value(value) -> str | Image.Image | None:
    """A `Record.image` from a cell: a path, a PIL image, encoded bytes, or a `{"bytes", "path"}` dict.

    Raises `OSError` (PIL's `UnidentifiedImageError`) for bytes that are not an image.

    >>> image_value({"bytes": None, "path": "a.png"})
    'a.png'
    """
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def resolve_column_map(
    column_map: Mapping[str, str] | None, columns: Sequence[str], dimensions: tuple[str, ...]
) -> dict[str, str]:
    """The full target -> column map: `column_map` checked, plus the same-name columns for fields it leaves out.

    >>> resolve_column_map({"prompt": "caption", "labels.realism": "real"}, ["caption", "image", "real"],
    ...                    ("alignment", "realism"))
    {'prompt': 'caption', 'labels.realism': 'real', 'image': 'image'}
    """
    column_map = dict(column_map or {})
    for target, column in column_map.items():
        field, _, key = target.partition(".")
        if not (target in RECORD_FIELDS or (key and (field in PER_DIMENSION_FIELDS or field == "meta"))):
            raise ValueError(
                f"column_map: unknown target {target!r}; the targets are {list(RECORD_FIELDS)} and dotted "
                f"'labels.<dimension>', 'histograms.<dimension>', 'rationales.<dimension>', 'meta.<key>'"
            )
        if field in PER_DIMENSION_FIELDS and key and key not in dimensions:
            raise ValueError(f"column_map: target {target!r} names unknown dimension {key!r}; the known dimensions "
                             f"are {list(dimensions)}")
        if column not in columns:
            raise ValueError(f"column_map maps {target!r} to column {column!r}, which the source does not have; "
                             f"its columns are {list(columns)}")
    for target in RECORD_FIELDS:
        if target not in column_map and target in columns:
            column_map[target] = target
    for required in ("prompt", "image"):
        if required not in column_map:
            raise ValueError(f"the source has no {required!r} column; map one with column_map={{{required!r}: "
                             f"<column>}}; its columns are {list(columns)}")
    return column_map


def records_from_table(
    table: Table, column_map: Mapping[str, str] | None, dimensions: tuple[str, ...]
) -> tuple[list[Record], list[RowLocation], list[BadRow]]:
    """Build one `Record` per row of `table` through `column_map` (see the module docstring); not yet validated."""
    mapping = resolve_column_map(column_map, table.columns, dimensions)
    records, locations, bad_rows = [], [], list(table.bad_rows)
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            record = _record_from_row(row, mapping, location, table.nan_is_missing)
        except _BadCell as bad:
            bad_rows.append(BadRow.at(location, bad.field, bad.reason))
            continue
        except Exception as error:  # a value nothing foresaw: this row is bad, the others are still read
            bad_rows.append(BadRow.at(location, "(row)", f"cannot be read: {type(error).__name__}: "
                                                         f"{shown(str(error))}"))
            continue
        records.append(record)
        locations.append(location)
    return records, locations, bad_rows


class _BadCell(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _record_from_row(row: Mapping, mapping: dict[str, str], location: RowLocation, nan_is_missing: bool) -> Record:
    values = {target: row.get(column) for target, column in mapping.items()}
    try:
        image = image_value(values["image"])
    except IMAGE_OPEN_ERRORS as error:
        raise _BadCell("image", f"the bytes are not an image: {shown(str(error))}") from error
    keyed = {}
    for name in (*PER_DIMENSION_FIELDS, "meta"):
        whole = values.get(name)
        whole = {} if _is_missing(whole, nan_is_missing) else _json_text(whole)
        if isinstance(whole, dict) and name in PER_DIMENSION_FIELDS:
            # Struct columns (parquet, datasets) hold every key, None where a row has no value.
            whole = {key: value for key, value in whole.items() if not _is_missing(value, nan_is_missing)}
        keyed[name] = whole
    for target, value in values.items():
        name, _, key = target.partition(".")
        if key and not _is_missing(value, nan_is_missing) and isinstance(keyed[name], dict):
            keyed[name] = {**keyed[name], key: _number(value) if name == "labels" else
                           _json_text(value) if name == "histograms" else value}
    record_id = values.get("record_id", str(location.index))
    return Record(
        record_id=str(record_id) if isinstance(record_id, int) and not isinstance(record_id, bool) else record_id,
        prompt=values["prompt"],
        image=image,
        group_id=_group_id(values.get("group_id"), values["prompt"], nan_is_missing),
        **keyed,
    )


def _dataset_from_table(
    table: Table,
    column_map: Mapping[str, str] | None,
    *,
    root: str | Path | None,
    dimensions: Sequence[str],
    levels: Sequence[float],
    verify_images: bool,
    skip_bad_rows: bool,
    allow_outside_root: bool,
    description: str,
) -> RewardDataset:
    dimensions, levels = check_schema(dimensions, levels)
    records, locations, bad_rows = records_from_table(table, column_map, dimensions)
    valid_records, _, skipped = validate_rows(
        records, dimensions=dimensions, levels=levels, root=root, verify_images=verify_images,
        skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root, record_locations=locations,
        bad_rows=bad_rows,
    )
    return RewardDataset(valid_records, [], root, dimensions, levels, skipped, description)


def read_records(
    path: str | Path,
    column_map: Mapping[str, str] | None = None,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
    description: str = "",
) -> RewardDataset:
    """Read records (no pairs) from a local `.jsonl`, `.json`, `.csv` or `.parquet` file and validate every row.

    Args:
        path: the file.
        column_map: our field -> source column (see the module docstring).
        root: the dataset root: relative image paths resolve against it, and no image path may leave it (default
            the file's directory).
        dimensions / levels: the rubric scale the labels are on (default: the default `Rubric`'s).
        verify_images: decode every image (the default; refusing corrupt, empty and over-large ones), or with
            False only check that each file exists (faster).
        skip_bad_rows: skip and log bad rows (kept in `skipped`) instead of raising `DataValidationError`.
        allow_outside_root: accept image paths outside `root` (`..`, absolute paths, symbolic links leading out).
        description: stored on the dataset.

    Pairs come from a format mapper (`formats`) or from labels (`collate.label_pairs`).
    """
    path = Path(path)
    return _dataset_from_table(
        read_table(path), column_map, root=path.parent if root is None else root, dimensions=dimensions,
        levels=levels, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
        allow_outside_root=allow_outside_root, description=description,
    )


def from_hf_dataset(
    dataset,
    column_map: Mapping[str, str] | None = None,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
    description: str = "",
) -> RewardDataset:
    """Read records from a Hugging Face `datasets.Dataset` (one split); arguments as for `read_records`.

    Image columns may hold PIL images (the `Image` feature), encoded bytes, `{"bytes", "path"}` dicts or paths
    (relative to `root`, default the working directory, which they must not leave unless `allow_outside_root`).
    Row indices in messages are 0-based positions; a row `datasets` cannot decode is a bad row.
    """
    if not hasattr(dataset, "column_names"):
        raise TypeError(f"`dataset` must be a datasets.Dataset (one split), got {type(dataset).__name__}")
    return _dataset_from_table(
        read_table(dataset), column_map, root=root, dimensions=dimensions, levels=levels,
        verify_images=verify_images, skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
        description=description,
    )


def load_dataset(
    path_or_dataset,
    column_map: Mapping[str, str] | None = None,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """Load our directory format, a `.jsonl` / `.json` / `.csv` / `.parquet` file, or a `datasets.Dataset`.

    Our directory format stores its own scale and image paths, so `column_map`, `root`, `dimensions` and `levels`
    must be left out for it (its root is the directory); elsewhere they default as in `read_records`.
    """
    if isinstance(path_or_dataset, (str, os.PathLike)) and Path(path_or_dataset).is_dir():
        directory = Path(path_or_dataset)
        if not (directory / INFO_FILE).is_file():
            raise ValueError(f"{directory} is a directory without {INFO_FILE}: not a dataset saved by RewardDataset; "
                             f"pass a {'/'.join(TABLE_SUFFIXES)} file or a saved dataset directory")
        given = [name for name, value in (("column_map", column_map), ("root", root), ("dimensions", dimensions),
                                          ("levels", levels)) if value is not None]
        if given:
            raise ValueError(f"{directory} is a saved RewardDataset, which stores its own scale and image paths; "
                             f"do not pass {given}")
        return RewardDataset.load(directory, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
                                  allow_outside_root=allow_outside_root)
    options = dict(root=root, dimensions=DEFAULT_DIMENSIONS if dimensions is None else dimensions,
                   levels=DEFAULT_LEVELS if levels is None else levels, verify_images=verify_images,
                   skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root)
    if isinstance(path_or_dataset, (str, os.PathLike)):
        return read_records(path_or_dataset, column_map, **options)
    return from_hf_dataset(path_or_dataset, column_map, **options)
