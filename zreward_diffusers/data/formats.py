"""Mappers from public human-preference datasets to a `RewardDataset`.

The schemas below are written from the public dataset cards as we know them (no file of the real datasets is
read by the tests, which fabricate small files with these columns); columns we do not use are ignored. Each
mapper takes what `readers.read_table` takes: a `.jsonl`, `.json` (a list of objects, as HPDv2 ships), `.csv` or
`.parquet` file, a `datasets.Dataset` (one split) or a list of dicts. Relative image paths resolve against `root`
(default: the file's directory, or the working directory for a `datasets.Dataset` or a list), and must not leave
it unless `allow_outside_root=True`; images are decoded to verify them unless `verify_images=False`. Bad rows raise
a `DataValidationError` naming their index, or are skipped and logged with `skip_bad_rows=True`; in JSON sources a
NaN is a bad value, not a missing one (as in `readers`).

- ImageRewardDB (THUDM/ImageRewardDB): one image per row, `prompt_id, prompt, image_path, rank` (1 = best in the
  prompt group, equal ranks tie) and the 1-7 ratings `overall_rating, image_text_alignment_rating,
  fidelity_rating`; the Hugging Face version adds an `image` column (the `Image` feature) used when present.
- Pick-a-Pic (yuvalkirstain/pickapic_v1, pickapic_v2): one comparison per row, `caption, jpg_0, jpg_1` (encoded
  bytes) or `image_0_path, image_1_path`, and `label_0, label_1` (1/0, or 0.5/0.5 for a tie); image ids from
  `image_0_uid, image_1_uid` when present.
- HPDv2 (ymhao/HPDv2): one prompt per row, `prompt, image_path: list[str]` with `rank: list[int]` (test split,
  1 = best) or `human_preference: list[int]` (train split, 1 = chosen); an `image` list replaces the paths.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .dataset import DEFAULT_DIMENSIONS, DEFAULT_LEVELS, RewardDataset
from .readers import IMAGE_OPEN_ERRORS, image_value, read_table, unreadable_row
from .records import Pair, Record
from .validation import (
    BadRow,
    RowLocation,
    check_schema,
    find_bad_pairs,
    find_bad_records,
    in_source_order,
    is_finite_number,
    report_bad_rows,
    shown,
)

__all__ = [
    "IMAGEREWARD_RATING_COLUMNS",
    "IMAGEREWARD_RATING_LABELS",
    "IMAGEREWARD_RATING_RANGE",
    "from_hpdv2",
    "from_imagereward_db",
    "from_pickapic",
]

IMAGEREWARD_RATING_COLUMNS = ("overall_rating", "image_text_alignment_rating", "fidelity_rating")
IMAGEREWARD_RATING_RANGE = (1.0, 7.0)
# A suggested `rating_labels`: ImageReward's alignment rating is our alignment; its fidelity rating (distortions,
# implausible details) is closest to our realism. The overall rating has no rubric dimension of its own.
IMAGEREWARD_RATING_LABELS = {"image_text_alignment_rating": "alignment", "fidelity_rating": "realism"}


def _missing(value, nan: bool = True) -> bool:
    """None, "", or (when `nan`: tabular sources, where NaN marks a missing cell) NaN."""
    return value is None or (nan and isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value == "")


def _unforeseen(location: RowLocation, error: Exception) -> BadRow:
    """A row that failed in a way no check foresaw: it is a bad row, and the others are still read."""
    return BadRow.at(location, "(row)", f"cannot be read: {type(error).__name__}: {shown(str(error))}")


def _default_root(source, root):
    if root is not None:
        return Path(root)
    return Path(source).parent if isinstance(source, (str, os.PathLike)) else None


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _finish(
    records: list[Record],
    record_locations: list[RowLocation],
    bad_rows: list[BadRow],
    make_pairs: Callable[[dict[str, Record]], list[tuple[Pair, RowLocation]]],
    *,
    root: Path | None,
    dimensions: Sequence[str],
    levels: Sequence[float],
    verify_images: bool,
    skip_bad_rows: bool,
    allow_outside_root: bool,
    description: str,
) -> RewardDataset:
    """Validate the records, derive pairs from the valid ones, validate those, then raise or skip and log."""
    dimensions, levels = check_schema(dimensions, levels)
    valid_records, bad_records = find_bad_records(
        records, record_locations, dimensions=dimensions, levels=levels, root=root, verify_images=verify_images,
        allow_outside_root=allow_outside_root,
    )
    # A row is reported once: by its first problem.
    reported = {(bad.source, bad.unit, bad.index) for bad in bad_rows}
    for bad in bad_records:
        if (bad.source, bad.unit, bad.index) not in reported:
            reported.add((bad.source, bad.unit, bad.index))
            bad_rows.append(bad)
    by_id = {record.record_id: record for record in valid_records}
    pairs_at = [(pair, location) for pair, location in make_pairs(by_id) if tuple(location) not in reported]
    valid_pairs, bad_pairs = find_bad_pairs(
        [pair for pair, _ in pairs_at], [location for _, location in pairs_at], by_id, dimensions
    )
    bad_rows = in_source_order([*bad_rows, *bad_pairs], [location.source for location in record_locations])
    report_bad_rows(bad_rows, skip_bad_rows)
    return RewardDataset(valid_records, valid_pairs, root, dimensions, levels, bad_rows, description)


def _rank_pairs(group_id: str, ranked: list[tuple[str, float, RowLocation]]) -> list[tuple[Pair, RowLocation]]:
    """Every pair of a group's `(record_id, rank, location)`s, 1 = best: +1 when a ranks better than b, 0 if equal."""
    return [
        (Pair(group_id, a, b, _sign(rank_b - rank_a)), location)
        for i, (a, rank_a, location) in enumerate(ranked)
        for b, rank_b, _ in ranked[i + 1:]
    ]


def from_imagereward_db(
    source,
    *,
    root: str | Path | None = None,
    rating_labels: Mapping[str, str] | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """ImageRewardDB-style rows (one image each) to records grouped by `prompt_id`, with overall pairs from `rank`.

    Every pair of ranked images of a prompt becomes a `Pair` (+1 when `record_a` has the smaller rank, 0 for equal
    ranks). The ratings present and the rank are kept in `meta`. With `rating_labels` (rating column -> rubric
    dimension, e.g. `IMAGEREWARD_RATING_LABELS`) a rating `r` on 1-7 also becomes the label
    `v_1 + (r - 1) / 6 * (v_K - v_1)` (1 -> 1.0, 4 -> 3.0, 7 -> 5.0 on the default scale); a rating outside 1-7
    is a bad row. The record id is `image_path`, or `"<prompt_id>/<row index>"` without one.

    >>> rows = [{"prompt_id": 7, "prompt": "a cat", "image_path": "a.png", "rank": 1, "fidelity_rating": 7},
    ...         {"prompt_id": 7, "prompt": "a cat", "image_path": "b.png", "rank": 2, "fidelity_rating": 4}]
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a.png", "b.png"):
    ...     Image.new("RGB", (4, 4)).save(root / name)  # every image is decoded to verify it
    >>> dataset = from_imagereward_db(rows, root=root, rating_labels={"fidelity_rating": "realism"})
    >>> [record.labels for record in dataset.records], dataset.pairs[0].preference
    ([{'realism': 5.0}, {'realism': 3.0}], 1)
    """
    table = read_table(source)
    root = _default_root(source, root)
    low, high = IMAGEREWARD_RATING_RANGE
    _, (first, *_, last) = check_schema(dimensions, levels)
    rating_labels = dict(rating_labels or {})
    for column, dimension in rating_labels.items():
        if column not in IMAGEREWARD_RATING_COLUMNS:
            raise ValueError(f"rating_labels: unknown rating column {column!r}; the ratings are "
                             f"{list(IMAGEREWARD_RATING_COLUMNS)}")
        if dimension not in dimensions:
            raise ValueError(f"rating_labels: {column!r} maps to unknown dimension {dimension!r}; the known "
                             f"dimensions are {list(dimensions)}")
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    ranks: dict[str, tuple[float, RowLocation]] = {}
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            problem = _imagereward_problem(row, rating_labels, nan)
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            try:
                image = image_value(row["image"]) if not _missing(row.get("image"), nan) else row.get("image_path")
            except IMAGE_OPEN_ERRORS as error:
                bad_rows.append(BadRow.at(location, "image", f"the bytes are not an image: {shown(str(error))}"))
                continue
            group_id = row.get("prompt_id")
            group_id = row.get("prompt") if _missing(group_id, nan) else str(group_id)
            path = row.get("image_path")
            record_id = path if isinstance(path, str) and path else f"{group_id}/{location.index}"
            meta = {column: row[column] for column in ("rank", *IMAGEREWARD_RATING_COLUMNS)
                    if not _missing(row.get(column), nan)}
            labels = {dimension: first + (row[column] - low) / (high - low) * (last - first)
                      for column, dimension in rating_labels.items() if not _missing(row.get(column), nan)}
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        records.append(Record(record_id, row.get("prompt"), image, group_id, labels=labels, meta=meta))
        locations.append(location)
        if not _missing(row.get("rank"), nan):
            ranks.setdefault(record_id, (row["rank"], location))

    def make_pairs(by_id: dict[str, Record]) -> list[tuple[Pair, RowLocation]]:
        groups: dict[str, list[tuple[str, float, RowLocation]]] = {}
        for record_id, (rank, location) in ranks.items():
            if record_id in by_id:
                groups.setdefault(by_id[record_id].group_id, []).append((record_id, rank, location))
        return [item for group_id, ranked in groups.items() for item in _rank_pairs(group_id, ranked)]

    return _finish(records, locations, bad_rows, make_pairs, root=root, dimensions=dimensions, levels=levels,
                   verify_images=verify_images, skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
                   description="ImageRewardDB")


def _is_number(value) -> bool:
    return is_finite_number(value) and isinstance(value, (int, float))


def _imagereward_problem(row: dict, rating_labels: dict[str, str], nan: bool = True) -> tuple[str, str] | None:
    if _missing(row.get("image"), nan) and _missing(row.get("image_path"), nan):
        return "image_path", "missing: a row needs an image_path (or an image)"
    if not _missing(row.get("rank"), nan) and not _is_number(row["rank"]):
        return "rank", f"must be a number (1 = best), got {shown(row['rank'])}"
    low, high = IMAGEREWARD_RATING_RANGE
    for column in IMAGEREWARD_RATING_COLUMNS:
        value = row.get(column)
        if not _missing(value, nan) and (not _is_number(value) or not low <= value <= high):
            return column, f"must be a rating in [{low:g}, {high:g}], got {shown(value)}"
    return None


_PICKAPIC_PREFERENCES = {(1.0, 0.0): 1, (0.0, 1.0): -1, (0.5, 0.5): 0}


def from_pickapic(
    source,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """Pick-a-Pic-style rows (one comparison each) to two records and one overall pair per row, grouped by caption.

    `label_0, label_1` of 1/0 give preference +1 (image 0 preferred), 0/1 give -1, 0.5/0.5 a tie; anything else
    (e.g. an unlabelled row) is a bad row. Images come from `jpg_0, jpg_1` when the source has them, else from
    `image_0_path, image_1_path`. Record ids are `image_0_uid, image_1_uid` when present, else
    `"<row index>:0"` and `"<row index>:1"`; an image id seen in an earlier row is the same record.

    >>> import io
    >>> from PIL import Image
    >>> def png(colour):
    ...     buffer = io.BytesIO()
    ...     Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    ...     return buffer.getvalue()
    >>> rows = [{"caption": "a red cube", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": 1, "label_1": 0}]
    >>> dataset = from_pickapic(rows)
    >>> [record.record_id for record in dataset.records], dataset.pairs
    (['0:0', '0:1'], [Pair(group_id='a red cube', record_a='0:0', record_b='0:1', preference=1, dimension=None)])
    """
    table = read_table(source)
    root = _default_root(source, root)
    image_columns = ("jpg_0", "jpg_1") if "jpg_0" in table.columns else ("image_0_path", "image_1_path")
    missing = [column for column in (*image_columns, "caption", "label_0", "label_1") if column not in table.columns]
    if missing:
        raise ValueError(f"a Pick-a-Pic source needs the columns {missing}; its columns are {table.columns}")
    records, locations, bad_rows = [], [], list(table.bad_rows)
    pairs: list[tuple[Pair, RowLocation]] = []
    seen: set[str] = set()
    nan = table.nan_is_missing
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            labels = (row.get("label_0"), row.get("label_1"))
            if not all(_is_number(label) for label in labels) or \
                    tuple(map(float, labels)) not in _PICKAPIC_PREFERENCES:
                bad_rows.append(BadRow.at(location, "label_0", f"label_0, label_1 must be 1/0, 0/1 or 0.5/0.5, got "
                                                               f"{shown(labels[0])}/{shown(labels[1])}"))
                continue
            sides = []  # (record_id, column, cell) of each image
            for side, column in enumerate(image_columns):
                uid = row.get(f"image_{side}_uid")
                sides.append((str(uid) if not _missing(uid, nan) else f"{location.index}:{side}", column,
                              row.get(column)))
            try:
                new_images = {record_id: image_value(cell) for record_id, _, cell in sides if record_id not in seen}
            except IMAGE_OPEN_ERRORS as error:
                bad_rows.append(BadRow.at(location, "image", f"the bytes are not an image: {shown(str(error))}"))
                continue
            preference = _PICKAPIC_PREFERENCES[tuple(map(float, labels))]
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        for side, (record_id, _, _) in enumerate(sides):
            if record_id in new_images and record_id not in seen:
                seen.add(record_id)
                meta = {"model": row[f"model_{side}"]} if not _missing(row.get(f"model_{side}"), nan) else {}
                records.append(Record(record_id, row.get("caption"), new_images[record_id], row.get("caption"),
                                      meta=meta))
                locations.append(location)
        pairs.append((Pair(row.get("caption"), sides[0][0], sides[1][0], preference), location))

    return _finish(records, locations, bad_rows, lambda by_id: pairs, root=root, dimensions=dimensions,
                   levels=levels, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
                   allow_outside_root=allow_outside_root, description="Pick-a-Pic")


def from_hpdv2(
    source,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """HPDv2-style rows (one prompt, several images each) to records grouped by prompt and overall pairs.

    With `rank` (1 = best): every pair of the row's images, +1 when `record_a` ranks better, 0 for equal ranks.
    With `human_preference` (1 = chosen, 0 = not): one pair (chosen, other, +1) per unchosen image. The record id
    is the image path, or `"<row index>:<position>"` for in-memory images; a path seen in an earlier row is the
    same record. The rank or preference is kept in `meta` as `"rank"` / `"human_preference"`.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a.png", "b.png", "c.png"):
    ...     Image.new("RGB", (4, 4)).save(root / name)
    >>> rows = [{"prompt": "a dog", "image_path": ["a.png", "b.png", "c.png"], "rank": [2, 1, 2]}]
    >>> [(p.record_a, p.record_b, p.preference) for p in from_hpdv2(rows, root=root).pairs]
    [('a.png', 'b.png', -1), ('a.png', 'c.png', 0), ('b.png', 'c.png', 1)]
    """
    table = read_table(source)
    root = _default_root(source, root)
    image_column = "image" if "image" in table.columns else "image_path"
    records, locations, bad_rows = [], [], list(table.bad_rows)
    pairs: list[tuple[Pair, RowLocation]] = []
    seen: set[str] = set()
    nan = table.nan_is_missing
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            images = row.get(image_column)
            problem = _hpdv2_problem(row, image_column, images, nan)
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            prompt = row.get("prompt")
            kind = "rank" if not _missing(row.get("rank"), nan) else "human_preference"
            scores = row[kind]
            record_ids = [image if isinstance(image, str) and image else f"{location.index}:{position}"
                          for position, image in enumerate(images)]
            try:
                new_images = {record_id: image_value(image)
                              for record_id, image in zip(record_ids, images, strict=True) if record_id not in seen}
            except IMAGE_OPEN_ERRORS as error:
                bad_rows.append(BadRow.at(location, image_column, f"the bytes are not an image: "
                                                                  f"{shown(str(error))}"))
                continue
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        for record_id, score in zip(record_ids, scores, strict=True):
            if record_id in new_images and record_id not in seen:
                seen.add(record_id)
                records.append(Record(record_id, prompt, new_images[record_id], prompt, meta={kind: score}))
                locations.append(location)
        scored = list(zip(record_ids, scores, strict=True))
        if kind == "rank":
            pairs += _rank_pairs(prompt, [(record_id, rank, location) for record_id, rank in scored])
        else:
            pairs += [(Pair(prompt, a, b, 1), location)
                      for a, chosen in scored if chosen == 1 for b, other in scored if other == 0]

    return _finish(records, locations, bad_rows, lambda by_id: pairs, root=root, dimensions=dimensions,
                   levels=levels, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
                   allow_outside_root=allow_outside_root, description="HPDv2")


def _hpdv2_problem(row: dict, image_column: str, images, nan: bool = True) -> tuple[str, str] | None:
    if not isinstance(images, (list, tuple)) or len(images) < 2:
        return image_column, f"must be a list of at least 2 images, got {shown(images)}"
    kind = "rank" if not _missing(row.get("rank"), nan) else "human_preference"
    scores = row.get(kind)
    if not isinstance(scores, (list, tuple)):
        return kind, f"a row needs a list 'rank' (1 = best) or 'human_preference' (1 = chosen), got {shown(scores)}"
    if len(scores) != len(images):
        return kind, f"has {len(scores)} entries for {len(images)} images"
    if kind == "rank" and not all(_is_number(rank) for rank in scores):
        return kind, f"must be numbers (1 = best), got {shown(list(scores))}"
    if kind == "human_preference" and (any(isinstance(value, bool) or value not in (0, 1) for value in scores)
                                       or 1 not in scores):
        return kind, f"must be 0/1 flags with at least one 1 (chosen), got {shown(list(scores))}"
    return None
