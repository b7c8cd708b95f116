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
- HPDv3 (MizzenAI/HPDv3; `all.json`, `train.json`, `test.json`): one comparison per row, `prompt, path1, path2`
  (`path1` is always the preferred image) and, where present, `model1, model2, confidence, choice_dist`.
- RichHF-18K (google-research-datasets/richhf-18k, TFRecords converted to rows): one image per row, `filename`
  (a Pick-a-Pic v1 image) and `artifact_score, misalignment_score, aesthetics_score, overall_score` on [0, 1]; the
  prompt comes from a `prompt` / `caption` column joined from Pick-a-Pic or from `prompts`; heatmaps and token
  labels are not read.
- EvalMuse-40K (DY-Evalab/EvalMuse, `train_list.json`): one image per row, `prompt_id, prompt, img_path` and the
  per-annotator 1-5 alignment scores `total_score: list[int]`; `type, element_score, promt_meaningless,
  split_confidence, attribute_confidence, fidelity_label` are kept in `meta`.
- Rapidata (e.g. Rapidata/text-2-image-Rich-Human-Feedback): one image per row, `image, prompt` (or `sentence`)
  and the 1-5 means `alignment_score, coherence_score, style_score`; or one comparison per row of their
  preference sets, `prompt, image1, image2` (or `image1_path, image2_path`), `model1, model2` and the votes
  `votes_image1, votes_image2` or `weighted_results_image{1,2}_{preference,coherence,alignment}`.
- GenAI-Bench (TIGER-Lab/GenAI-Bench, `image_generation`): one vote per row, `prompt, left_image, right_image,
  left_model, right_model, vote_type` (`leftvote`, `rightvote`, `tievote`, `bothbad_vote`).

How each source scale lands on the rubric levels is tabulated, with worked numbers, in docs/datasets.md. The HPDv3,
RichHF-18K, EvalMuse-40K and Rapidata mappers read numbers stored as text (CSV cells, HPDv3-derived releases) as
numbers and parse lists stored as JSON text.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from .dataset import DEFAULT_DIMENSIONS, DEFAULT_LEVELS, RewardDataset
from .readers import IMAGE_OPEN_ERRORS, _number, image_value, read_table, unreadable_row
from .readers import _json_text as _parsed  # numeric text and JSON text in CSV cells, read as `readers` reads them
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
    "EVALMUSE_SCORE_RANGE",
    "GENAI_BENCH_PREFERENCES",
    "IMAGEREWARD_RATING_COLUMNS",
    "IMAGEREWARD_RATING_LABELS",
    "IMAGEREWARD_RATING_RANGE",
    "RAPIDATA_CRITERIA",
    "RAPIDATA_SCORE_LABELS",
    "RAPIDATA_SCORE_RANGE",
    "RICHHF_SCORE_COLUMNS",
    "RICHHF_SCORE_LABELS",
    "RICHHF_SCORE_RANGE",
    "from_evalmuse",
    "from_genai_bench",
    "from_hpdv2",
    "from_hpdv3",
    "from_imagereward_db",
    "from_pickapic",
    "from_rapidata",
    "from_richhf18k",
]

logger = logging.getLogger(__name__)

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
        row = {**row, **{column: _number(row[column]) for column in ("rank", *IMAGEREWARD_RATING_COLUMNS)
                         if column in row}}  # CSV cells are text
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
        row = {**row, **{column: _number(row[column]) for column in ("label_0", "label_1") if column in row}}
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
        # CSV cells are text: the lists arrive as JSON, their numbers possibly as numeric text
        row = {**row, **{column: _numbers(_parsed(row[column])) for column in ("rank", "human_preference")
                         if column in row}}
        if image_column in row:
            row[image_column] = _parsed(row[image_column])
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


# -- Helpers shared by the mappers below ----------------------------------------------------------------------------


def _numbers(value):
    """`_number` of each item of a list (a CSV cell parsed from JSON may hold numeric text); anything else as is."""
    return [_number(item) for item in value] if isinstance(value, list) else _number(value)


def _absent(value, nan: bool = True) -> bool:
    """Missing (`_missing`), or the text "null" some releases write for a missing value."""
    return _missing(value, nan) or (isinstance(value, str) and value.strip().lower() in ("null", "none"))


def _scaled(value: float, scale: tuple[float, float], first: float, last: float) -> float:
    """`value` on the source scale `[low, high]` mapped linearly onto the rubric's `[first, last]`."""
    low, high = scale
    return first + (value - low) / (high - low) * (last - first)


def _checked_scale(name: str, scale) -> tuple[float, float]:
    values = tuple(scale) if isinstance(scale, (list, tuple)) else ()
    if len(values) != 2 or not all(_is_number(value) for value in values) or not values[0] < values[1]:
        raise ValueError(f"{name} must be two finite numbers (low, high) with low < high, got {shown(scale)}")
    return float(values[0]), float(values[1])


def _checked_labels(name: str, mapping: Mapping[str, str], columns: Sequence[str],
                    dimensions: Sequence[str]) -> dict[str, str]:
    """`mapping` (score column -> rubric dimension) checked against the known columns and dimensions."""
    mapping = dict(mapping)
    for column, dimension in mapping.items():
        if column not in columns:
            raise ValueError(f"{name}: unknown score column {column!r}; the scores are {list(columns)}")
        if dimension not in dimensions:
            raise ValueError(f"{name}: {column!r} maps to unknown dimension {dimension!r}; the known dimensions are "
                             f"{list(dimensions)}")
    return mapping


def _level_histogram(values: Sequence[float], levels: Sequence[float]) -> list[float]:
    """Counts per level of `values` already on `[v_1, v_K]`: a value on a level counts 1 there; a value between two
    levels is split between them in proportion to its distance (so the histogram's mean is the values' mean).

    >>> _level_histogram([1.0, 3.0, 3.0, 3.25], (1.0, 2.0, 3.0, 4.0))
    [1, 0, 2.75, 0.25]
    """
    counts: list[float] = [0] * len(levels)
    for value in values:
        value = min(max(value, levels[0]), levels[-1])  # callers check the range; this absorbs rounding only
        index = min(bisect.bisect_left(levels, value), len(levels) - 1)
        if math.isclose(value, levels[index], rel_tol=0.0, abs_tol=1e-9):
            counts[index] += 1
        elif index > 0 and math.isclose(value, levels[index - 1], rel_tol=0.0, abs_tol=1e-9):
            counts[index - 1] += 1
        else:
            below, above = levels[index - 1], levels[index]
            weight = (value - below) / (above - below)
            counts[index - 1] += 1 - weight
            counts[index] += weight
    return counts


def _histogram_mean(counts: Sequence[float], levels: Sequence[float]) -> float:
    return sum(count * level for count, level in zip(counts, levels, strict=True)) / sum(counts)


def _likert_ratings(value, scale: tuple[float, float]) -> tuple[list[float] | None, str | None]:
    """Per-annotator ratings from a list (or JSON text of one) of integers on `scale`: `(ratings, None)`, or
    `(None, why not)`; an empty list is `([], None)`."""
    value = _parsed(value)
    if not isinstance(value, (list, tuple)):
        return None, f"must be a list of per-annotator integer ratings {scale[0]:g}-{scale[1]:g}, got {shown(value)}"
    ratings = [_number(rating) for rating in value]
    if not all(_is_number(rating) and float(rating).is_integer() and scale[0] <= rating <= scale[1]
               for rating in ratings):
        return None, (f"per-annotator ratings must be integers {scale[0]:g}-{scale[1]:g}, got "
                      f"{shown(list(value))}")
    return [float(rating) for rating in ratings], None


def _required_columns(name: str, columns: Sequence[str], required: Sequence[str]) -> None:
    missing = [column for column in required if column not in columns]
    if missing:
        raise ValueError(f"a {name} source needs the columns {missing}; its columns are {list(columns)}")


def _non_empty_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


# -- HPDv3 -----------------------------------------------------------------------------------------------------------


def from_hpdv3(
    source,
    *,
    root: str | Path | None = None,
    min_confidence: float | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """HPDv3-style rows (one comparison each) to records grouped by prompt and one overall pair per row.

    Schema (confirmed from the HPSv3 README, https://github.com/MizzenAI/HPSv3, section 'Pairwise Training Data
    Format', which the card https://huggingface.co/datasets/MizzenAI/HPDv3 points to): `all.json`, `train.json` and
    `test.json` are JSON lists of `{prompt, path1, path2, model1, model2}`, where `path1` is always the preferred
    image, plus `choice_dist` (the annotators' votes for path1 and path2, e.g. `[12, 7]`) and `confidence` (a
    reliability score from the annotators' abilities, e.g. `0.9999907`) in `all.json` / `train.json`; both are null
    for the Midjourney and curated-HPDv2 pairs, and `test.json` has neither. `train.json` also draws on
    `pickapic.json` / `imagereward.json` pairs in the same form, whose images live in those datasets' repositories.
    Not confirmed: whether `confidence` always lies in [0, 1] (any finite number is accepted), and whether any file
    holds a ranked list: the card describes none, so only pairs are read (HPDv2-style ranked lists go through
    `from_hpdv2`). Releases derived from HPDv3 that store `choice_dist` as JSON text (`"[8, 1]"`) and `confidence`
    as a numeric string are read too; the text "null" counts as missing.

    Every row gives `Pair(prompt, path1, path2, +1)`; the record id is the image path (a path seen in an earlier row
    is the same record) and `model1` / `model2` go to that record's `meta["model"]`. A pair has no meta, so
    `choice_dist` and `confidence` are checked (two non-negative vote counts; a finite number) but not kept; with
    `min_confidence`, rows whose confidence is below it are left out (logged, not bad rows; rows without a confidence
    are kept), as HPSv3's `confidence_threshold` does.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a.jpg", "b.jpg"):
    ...     Image.new("RGB", (4, 4)).save(root / name)
    >>> rows = [{"prompt": "a fox", "path1": "a.jpg", "path2": "b.jpg", "model1": "flux", "model2": "sdxl",
    ...          "choice_dist": [12, 7], "confidence": 0.99}]
    >>> dataset = from_hpdv3(rows, root=root)
    >>> dataset.pairs, dataset.by_id("b.jpg").meta
    ([Pair(group_id='a fox', record_a='a.jpg', record_b='b.jpg', preference=1, dimension=None)], {'model': 'sdxl'})
    """
    table = read_table(source)
    root = _default_root(source, root)
    if min_confidence is not None and not _is_number(min_confidence):
        raise ValueError(f"min_confidence must be a finite number or None, got {shown(min_confidence)}")
    _required_columns("HPDv3", table.columns, ("prompt", "path1", "path2"))
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    pairs: list[tuple[Pair, RowLocation]] = []
    seen: set[str] = set()
    below_threshold = 0
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            problem = _hpdv3_problem(row, nan)
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            confidence = _number(row.get("confidence"))
            if min_confidence is not None and not _absent(confidence, nan) and confidence < min_confidence:
                below_threshold += 1
                continue
            prompt, paths = row["prompt"], (row["path1"], row["path2"])
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        for side, path in enumerate(paths, start=1):
            if path not in seen:
                seen.add(path)
                model = row.get(f"model{side}")
                records.append(Record(path, prompt, path, prompt,
                                      meta={"model": model} if not _absent(model, nan) else {}))
                locations.append(location)
        pairs.append((Pair(prompt, paths[0], paths[1], 1), location))
    if below_threshold:
        logger.info("HPDv3: left out %d pairs with a confidence below %g", below_threshold, min_confidence)
    return _finish(records, locations, bad_rows, lambda by_id: pairs, root=root, dimensions=dimensions,
                   levels=levels, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
                   allow_outside_root=allow_outside_root, description="HPDv3")


def _hpdv3_problem(row: dict, nan: bool = True) -> tuple[str, str] | None:
    if not _non_empty_text(row.get("prompt")):
        return "prompt", f"must be a non-empty string, got {shown(row.get('prompt'))}"
    for column in ("path1", "path2"):
        if not _non_empty_text(row.get(column)):
            return column, f"must be an image path, got {shown(row.get(column))}"
    votes = row.get("choice_dist")
    if not _absent(votes, nan):
        votes = _parsed(votes)
        if not (isinstance(votes, (list, tuple)) and len(votes) == 2
                and all(_is_number(_number(vote)) and _number(vote) >= 0 for vote in votes)):
            return "choice_dist", f"must be two non-negative vote counts [path1, path2] or null, got {shown(votes)}"
    confidence = row.get("confidence")
    if not _absent(confidence, nan) and not _is_number(_number(confidence)):
        return "confidence", f"must be a finite number or null, got {shown(confidence)}"
    return None


# -- RichHF-18K ------------------------------------------------------------------------------------------------------

RICHHF_SCORE_COLUMNS = ("artifact_score", "misalignment_score", "aesthetics_score", "overall_score")
# The release stores each score as the annotators' mean 5-point rating rescaled to [0, 1], higher = better.
RICHHF_SCORE_RANGE = (0.0, 1.0)
# Plausibility (the artifact score: higher = fewer artifacts) is our physical plausibility, the (mis)alignment score
# (higher = better aligned) our alignment, aesthetics our aesthetics. The overall score has no rubric dimension.
RICHHF_SCORE_LABELS = {"artifact_score": "physical_plausibility", "misalignment_score": "alignment",
                       "aesthetics_score": "aesthetics"}


def from_richhf18k(
    source,
    *,
    root: str | Path | None = None,
    prompts: Mapping[str, str] | None = None,
    score_labels: Mapping[str, str] = RICHHF_SCORE_LABELS,
    score_range: tuple[float, float] = RICHHF_SCORE_RANGE,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """RichHF-18K rows (one Pick-a-Pic image each) to records with alignment, aesthetics and plausibility labels.

    Schema (confirmed from https://github.com/google-research-datasets/richhf-18k and its parser
    https://github.com/google-research/google-research/tree/master/richhf_18k/parse_tfrecord_file.py): TFRecords of
    `filename` (the Pick-a-Pic v1 image), the float scores `aesthetics_score, artifact_score, misalignment_score,
    overall_score` ("all scores are the higher the better"), `artifact_map, misalignment_map` and
    `prompt_misalignment_label`. The release has one float per score and no per-annotator ratings, so records get
    labels only, no histograms. It holds neither the images nor the prompt text: convert the TFRecords to rows (e.g.
    JSONL) with those columns, and give each row its prompt in a `prompt` or `caption` column (joined from
    Pick-a-Pic) or through `prompts` (filename or image uid -> prompt); the image is an `image` column when present,
    else `filename` resolved against `root` (where the Pick-a-Pic images are extracted under their file names).
    Assumed, not confirmed by the release: the paper (arXiv 2312.10240) collects 5-point Likert ratings from several
    annotators and the stored score is their mean rescaled to [0, 1]; `score_range` states another range (e.g.
    `(1, 5)` for a converted copy on the raw scale), and a score outside it is a bad row, not clipped.

    A score `s` in `score_range = [a, b]` becomes the label `v_1 + (s - a) / (b - a) * (v_K - v_1)`: on the default
    levels 0 -> 1.0, 0.5 -> 3.0, 0.75 -> 4.0, 1 -> 5.0. `score_labels` (default `RICHHF_SCORE_LABELS`) picks the
    dimensions; the overall score is kept in `meta` only, as the rubric has no overall dimension (the overall of a
    record, `Record.label(None)`, is the mean of its labels). The record id is the image uid (the file name without
    folder and extension, as Pick-a-Pic's `image_0_uid`), the group the prompt; `filename` and every score present
    are kept in `meta`.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "train").mkdir()
    >>> Image.new("RGB", (4, 4)).save(root / "train" / "u1.png")
    >>> rows = [{"filename": "train/u1.png", "aesthetics_score": 0.75, "artifact_score": 0.5,
    ...          "misalignment_score": 1.0, "overall_score": 0.25}]
    >>> record = from_richhf18k(rows, root=root, prompts={"u1": "a red bus"}).records[0]
    >>> record.record_id, record.labels, record.meta["overall_score"]
    ('u1', {'physical_plausibility': 3.0, 'alignment': 5.0, 'aesthetics': 4.0}, 0.25)
    """
    table = read_table(source)
    root = _default_root(source, root)
    scale = _checked_scale("score_range", score_range)
    dimensions, levels = check_schema(dimensions, levels)
    score_labels = _checked_labels("score_labels", score_labels, RICHHF_SCORE_COLUMNS, dimensions)
    _required_columns("RichHF-18K", table.columns, ("filename",))
    prompts = dict(prompts or {})
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            filename = row.get("filename")
            if not _non_empty_text(filename):
                bad_rows.append(BadRow.at(location, "filename", f"must be the image's file name, got "
                                                                f"{shown(filename)}"))
                continue
            uid = PurePosixPath(filename.replace("\\", "/")).stem or filename
            prompt = next((row[column] for column in ("prompt", "caption") if not _absent(row.get(column), nan)),
                          None)
            prompt = prompts.get(filename, prompts.get(uid)) if prompt is None else prompt
            if prompt is None:
                bad_rows.append(BadRow.at(location, "prompt", f"no prompt for {filename!r}: give the rows a 'prompt' "
                                                              f"or 'caption' column, or pass prompts="))
                continue
            scores, problem = _scores_in_range(row, RICHHF_SCORE_COLUMNS, scale, nan, "the RichHF-18K scale")
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            try:
                image = image_value(row["image"]) if not _absent(row.get("image"), nan) else filename
            except IMAGE_OPEN_ERRORS as error:
                bad_rows.append(BadRow.at(location, "image", f"the bytes are not an image: {shown(str(error))}"))
                continue
            labels = {dimension: _scaled(scores[column], scale, levels[0], levels[-1])
                      for column, dimension in score_labels.items() if column in scores}
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        records.append(Record(uid, prompt, image, prompt, labels=labels, meta={"filename": filename, **scores}))
        locations.append(location)
    return _finish(records, locations, bad_rows, lambda by_id: [], root=root, dimensions=dimensions, levels=levels,
                   verify_images=verify_images, skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
                   description="RichHF-18K")


def _scores_in_range(row: dict, columns: Sequence[str], scale: tuple[float, float], nan: bool,
                     what: str) -> tuple[dict[str, float], tuple[str, str] | None]:
    """The scores of `columns` present in `row` (numeric text read as numbers), or the first one outside `scale`."""
    scores = {}
    for column in columns:
        value = row.get(column)
        if _absent(value, nan):
            continue
        number = _number(value)
        if not _is_number(number) or not scale[0] <= number <= scale[1]:
            return {}, (column, f"must be a score in [{scale[0]:g}, {scale[1]:g}] ({what}), got {shown(value)}")
        scores[column] = number
    return scores, None


# -- EvalMuse-40K ----------------------------------------------------------------------------------------------------

EVALMUSE_SCORE_RANGE = (1.0, 5.0)
_EVALMUSE_META = ("type", "promt_meaningless", "split_confidence", "attribute_confidence", "fidelity_label")


def from_evalmuse(
    source,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """EvalMuse-40K rows (one image each) to records grouped by `prompt_id`, with alignment labels and histograms.

    Schema (confirmed from the card https://huggingface.co/datasets/DY-Evalab/EvalMuse and readers of
    `train_list.json` in the EvalMuse challenge code): a JSON list of `prompt_id: str, prompt: str, type: str,
    img_path: str, total_score: list[int]` (one 1-5 image-text alignment score per annotator), `element_score` (per
    prompt element, one 0/1 per annotator; a dict, which the card's schema lists as a string), and the per-annotator
    flags `promt_meaningless` (sic; 1 = the prompt is too abstract to judge), `split_confidence`,
    `attribute_confidence` and `fidelity_label: list[str]`. `test.json` has no annotations: its rows become records
    without labels. A `total_score` that is one number (a mean, as in processed copies) gives a label and no
    histogram. Not confirmed: the values `fidelity_label` takes (it is kept as is).

    Each per-annotator score `r` lands on the level `v_1 + (r - 1) / 4 * (v_K - v_1)`, the identity on the default
    levels (1 -> 1.0, 3 -> 3.0, 5 -> 5.0; on other levels a score between two levels is split between them), giving
    the `alignment` histogram; the label is its mean: scores `[3, 4, 4]` give the histogram with 1 on level 3.0 and 2
    on level 4.0, and the label 11/3 = 3.667. A score that is not an integer 1-5 is a bad row. The record id is
    `img_path`, the group `prompt_id` (the prompt without one); `total_score`, `element_score` and the flags go to
    `meta` under their own names.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (4, 4)).save(root / "a.png")
    >>> rows = [{"prompt_id": "7", "prompt": "a cat", "img_path": "a.png", "total_score": [3, 4, 4]}]
    >>> record = from_evalmuse(rows, root=root).records[0]
    >>> record.group_id, round(record.labels["alignment"], 3), record.histograms["alignment"]
    ('7', 3.667, [0, 0, 0, 0, 1, 0, 2, 0, 0])
    """
    table = read_table(source)
    root = _default_root(source, root)
    dimensions, levels = check_schema(dimensions, levels)
    if "alignment" not in dimensions:
        raise ValueError(f"EvalMuse scores alignment, which is not among the dimensions {list(dimensions)}")
    _required_columns("EvalMuse", table.columns, ("prompt", "img_path"))
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            if not _non_empty_text(row.get("img_path")):
                bad_rows.append(BadRow.at(location, "img_path", f"must be an image path, got "
                                                                f"{shown(row.get('img_path'))}"))
                continue
            labels, histograms, problem = _evalmuse_alignment(row.get("total_score"), levels, nan)
            if problem is None:
                element_score = _parsed(row.get("element_score"))
                if not _absent(element_score, nan) and not isinstance(element_score, dict):
                    problem = ("element_score", f"must be a dict of prompt element -> per-annotator 0/1 scores, got "
                                                f"{shown(element_score)}")
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            group_id = row.get("prompt_id")
            group_id = row.get("prompt") if _absent(group_id, nan) else str(group_id)
            meta = {column: row[column] if column == "type" else _parsed(row[column])
                    for column in ("total_score", *_EVALMUSE_META) if not _absent(row.get(column), nan)}
            if not _absent(element_score, nan):
                meta["element_score"] = element_score
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        records.append(Record(row["img_path"], row.get("prompt"), row["img_path"], group_id, labels=labels,
                              histograms=histograms, meta=meta))
        locations.append(location)
    return _finish(records, locations, bad_rows, lambda by_id: [], root=root, dimensions=dimensions, levels=levels,
                   verify_images=verify_images, skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
                   description="EvalMuse-40K")


def _evalmuse_alignment(value, levels: tuple[float, ...], nan: bool):
    """`(labels, histograms, problem)` from a `total_score` cell: per-annotator list, one mean, or nothing."""
    first, last = levels[0], levels[-1]
    value = _parsed(value)
    if _absent(value, nan) or (isinstance(value, (list, tuple)) and not value):
        return {}, {}, None
    if not isinstance(value, (list, tuple)):
        number = _number(value)
        low, high = EVALMUSE_SCORE_RANGE
        if not _is_number(number) or not low <= number <= high:
            return {}, {}, ("total_score", f"must be per-annotator integer scores 1-5 (or their mean), got "
                                           f"{shown(value)}")
        return {"alignment": _scaled(number, EVALMUSE_SCORE_RANGE, first, last)}, {}, None
    ratings, problem = _likert_ratings(value, EVALMUSE_SCORE_RANGE)
    if problem is not None:
        return {}, {}, ("total_score", problem)
    counts = _level_histogram([_scaled(rating, EVALMUSE_SCORE_RANGE, first, last) for rating in ratings], levels)
    return {"alignment": _histogram_mean(counts, levels)}, {"alignment": counts}, None


# -- Rapidata --------------------------------------------------------------------------------------------------------

# The rich-feedback set's per-image means of 1-5 Likert ratings (5 = best).
RAPIDATA_SCORE_RANGE = (1.0, 5.0)
# Coherence ("does the image make sense; how prominent are AI artifacts such as implausible elements or distorted
# objects") follows RichHF's plausibility, so it maps where RICHHF_SCORE_LABELS puts plausibility; style ("how
# visually appealing") is aesthetics. Map coherence to "realism" instead with score_labels= if preferred.
RAPIDATA_SCORE_LABELS = {"alignment_score": "alignment", "coherence_score": "physical_plausibility",
                         "style_score": "aesthetics"}
_RAPIDATA_SCORE_COLUMNS = ("alignment_score", "coherence_score", "style_score")
# The criteria of the preference sets' `weighted_results_image{1,2}_<criterion>` columns and the dimension of their
# pairs: "preference" (which image is better overall) is an overall pair.
RAPIDATA_CRITERIA = {"preference": None, "alignment": "alignment", "coherence": "physical_plausibility"}


def from_rapidata(
    source,
    *,
    root: str | Path | None = None,
    score_labels: Mapping[str, str] = RAPIDATA_SCORE_LABELS,
    response_columns: Mapping[str, str] | None = None,
    pair_dimension: str | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """Rapidata rich-feedback rows (one image each) to labelled records, or their preference rows to pairs.

    Rich feedback (confirmed from the card https://huggingface.co/datasets/Rapidata/text-2-image-Rich-Human-Feedback
    and Rapidata's post https://rapidata.ai/blog/rich-human-feedback): `image` (an `Image` feature), `prompt`,
    `word_scores` (JSON text), `alignment_score, coherence_score, style_score` (float32, the weighted mean of many
    annotators' 1-5 Likert ratings, 5 = best), `*_score_norm` (the same rescaled to [0, 1] over the dataset: not
    read, it is relative to the dataset) and two heatmaps (not read). The `-32k` variant names the prompt `sentence`
    and adds `image_name` (used as the record id). The release holds the means only, not the per-annotator
    responses, so by default the records get labels and no histograms: a mean `m` becomes
    `v_1 + (m - 1) / 4 * (v_K - v_1)` (identity on the default levels: 3.4574 -> 3.4574). With `response_columns`
    (score column -> a column of per-annotator 1-5 ratings, a list or JSON text, e.g. from Rapidata's raw results
    or your own job), each rating lands on the level it maps to (1 -> 1.0, ..., 5 -> 5.0) and the label is the
    histogram mean. `score_labels` (default `RAPIDATA_SCORE_LABELS`) maps alignment -> alignment, coherence ->
    physical_plausibility (as RichHF's plausibility; pass `"realism"` for it if preferred) and style -> aesthetics.
    The record id is `image_name`, else the image path, else the row index; the group is the prompt; the means read
    are kept in `meta`.

    Preference sets (a source with `image1` or `image1_path`; confirmed from the cards of e.g.
    Rapidata/Flux_SD3_MJ_Dalle_Human_Coherence_Dataset and Rapidata/HunyuanImage-2.1_t2i_human_preference): `prompt,
    image1, image2` (or `image1_path, image2_path`), `model1, model2` and either `votes_image1, votes_image2` (one
    criterion per dataset, named in its title: pass it as `pair_dimension`, None for "preference" sets) or
    `weighted_results_image{1,2}_<criterion>` for the criteria of `RAPIDATA_CRITERIA` (preference -> overall,
    alignment -> alignment, coherence -> physical_plausibility). Each criterion present gives
    `Pair(prompt, image 1, image 2, sign(votes1 - votes2))` (equal votes tie); votes must be non-negative numbers.
    Record ids are the image path, or `"<row index>:1"` / `"<row index>:2"` for in-memory images; `model` (and
    `image1_path` / `image2_path` beside in-memory images, as `path`) go to `meta`. `detailed_results*`
    (per-annotator votes with annotator metadata) are not read.

    >>> from PIL import Image
    >>> rows = [{"prompt": "a dog", "image": Image.new("RGB", (4, 4)), "alignment_score": 3.5,
    ...          "coherence_score": 2.0, "style_score": 4.25, "alignment_score_norm": 0.62}]
    >>> from_rapidata(rows).records[0].labels
    {'alignment': 3.5, 'physical_plausibility': 2.0, 'aesthetics': 4.25}
    >>> rows = [{"prompt": "a dog", "image1": Image.new("RGB", (4, 4)), "image2": Image.new("RGB", (4, 4)),
    ...          "votes_image1": 3, "votes_image2": 9, "model1": "flux", "model2": "dalle3"}]
    >>> from_rapidata(rows, pair_dimension="alignment").pairs
    [Pair(group_id='a dog', record_a='0:1', record_b='0:2', preference=-1, dimension='alignment')]
    """
    table = read_table(source)
    root = _default_root(source, root)
    dimensions, levels = check_schema(dimensions, levels)
    if "image1" in table.columns or "image1_path" in table.columns:
        return _rapidata_pairs(table, root, pair_dimension, dimensions, levels, verify_images, skip_bad_rows,
                               allow_outside_root)
    score_labels = _checked_labels("score_labels", score_labels, _RAPIDATA_SCORE_COLUMNS, dimensions)
    response_columns = dict(response_columns or {})
    for score, column in response_columns.items():
        if score not in score_labels:
            raise ValueError(f"response_columns: {score!r} is not a score column of score_labels "
                             f"{list(score_labels)}")
        if column not in table.columns:
            raise ValueError(f"response_columns maps {score!r} to column {column!r}, which the source does not have; "
                             f"its columns are {list(table.columns)}")
    prompt_column = "prompt" if "prompt" in table.columns else "sentence"
    _required_columns("Rapidata rich-feedback", table.columns, (prompt_column, "image"))
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            scores, problem = _scores_in_range(row, _RAPIDATA_SCORE_COLUMNS, RAPIDATA_SCORE_RANGE, nan,
                                               "a mean 1-5 rating")
            labels, histograms = {}, {}
            for score, dimension in score_labels.items():
                if problem is not None:
                    break
                responses = row.get(response_columns[score]) if score in response_columns else None
                if not _absent(responses, nan):
                    ratings, why = _likert_ratings(responses, RAPIDATA_SCORE_RANGE)
                    if why is not None:
                        problem = response_columns[score], why
                    elif ratings:
                        histograms[dimension] = _level_histogram(
                            [_scaled(rating, RAPIDATA_SCORE_RANGE, levels[0], levels[-1]) for rating in ratings],
                            levels)
                        labels[dimension] = _histogram_mean(histograms[dimension], levels)
                        continue
                if score in scores:
                    labels[dimension] = _scaled(scores[score], RAPIDATA_SCORE_RANGE, levels[0], levels[-1])
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            cell = row.get("image")
            try:
                image = image_value(cell)
            except IMAGE_OPEN_ERRORS as error:
                bad_rows.append(BadRow.at(location, "image", f"the bytes are not an image: {shown(str(error))}"))
                continue
            name = row.get("image_name")
            record_id = str(name) if not _absent(name, nan) else image if isinstance(image, str) and image else \
                str(location.index)
            prompt = row.get(prompt_column)
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        records.append(Record(record_id, prompt, image, prompt, labels=labels, histograms=histograms, meta=scores))
        locations.append(location)
    return _finish(records, locations, bad_rows, lambda by_id: [], root=root, dimensions=dimensions, levels=levels,
                   verify_images=verify_images, skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
                   description="Rapidata rich feedback")


def _rapidata_pairs(table, root, pair_dimension, dimensions, levels, verify_images, skip_bad_rows,
                    allow_outside_root) -> RewardDataset:
    image_columns = ("image1", "image2") if "image1" in table.columns else ("image1_path", "image2_path")
    criteria = [(f"weighted_results_image1_{name}", f"weighted_results_image2_{name}", dimension)
                for name, dimension in RAPIDATA_CRITERIA.items() if f"weighted_results_image1_{name}" in table.columns]
    if not criteria and "votes_image1" in table.columns:
        if pair_dimension is not None and pair_dimension not in dimensions:
            raise ValueError(f"pair_dimension {pair_dimension!r} is not one of the dimensions {list(dimensions)} "
                             f"(or None for an overall preference)")
        criteria = [("votes_image1", "votes_image2", pair_dimension)]
    _required_columns("Rapidata preference", table.columns,
                      (*image_columns, "prompt", *(column for a, b, _ in criteria for column in (a, b))))
    if not criteria:
        raise ValueError(f"a Rapidata preference source needs vote columns 'votes_image1, votes_image2' or "
                         f"'weighted_results_image1_<criterion>, weighted_results_image2_<criterion>' for a criterion "
                         f"of {list(RAPIDATA_CRITERIA)}; its columns are {list(table.columns)}")
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    pairs: list[tuple[Pair, RowLocation]] = []
    seen: set[str] = set()
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            preferences, problem = [], None
            for first, second, dimension in criteria:
                votes = (row.get(first), row.get(second))
                if all(_absent(vote, nan) for vote in votes):
                    continue
                numbers = [_number(vote) for vote in votes]
                bad = next((column for column, number in zip((first, second), numbers, strict=True)
                            if not _is_number(number) or number < 0), None)
                if bad is not None:
                    problem = bad, (f"{first}, {second} must be non-negative vote counts, got "
                                    f"{shown(votes[0])}/{shown(votes[1])}")
                    break
                preferences.append((_sign(numbers[0] - numbers[1]), dimension))
            if problem is not None:
                bad_rows.append(BadRow.at(location, *problem))
                continue
            sides = []
            try:
                for side, column in enumerate(image_columns, start=1):
                    image = image_value(row.get(column))
                    sides.append((image if isinstance(image, str) and image else f"{location.index}:{side}", image))
            except IMAGE_OPEN_ERRORS as error:
                bad_rows.append(BadRow.at(location, "image", f"the bytes are not an image: {shown(str(error))}"))
                continue
            prompt = row.get("prompt")
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        for side, (record_id, image) in enumerate(sides, start=1):
            if record_id not in seen:
                seen.add(record_id)
                meta = {key: row[column] for key, column in (("model", f"model{side}"), ("path", f"image{side}_path"))
                        if column in row and not _absent(row[column], nan) and row[column] != record_id}
                records.append(Record(record_id, prompt, image, prompt, meta=meta))
                locations.append(location)
        pairs += [(Pair(prompt, sides[0][0], sides[1][0], preference, dimension), location)
                  for preference, dimension in preferences]
    return _finish(records, locations, bad_rows, lambda by_id: pairs, root=root, dimensions=dimensions,
                   levels=levels, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
                   allow_outside_root=allow_outside_root, description="Rapidata preferences")


# -- GenAI-Bench -----------------------------------------------------------------------------------------------------

# GenAI-Arena's votes: the left image preferred, the right one, a tie between two good images, both bad. Both ties
# are preference 0; the records keep the vote in meta["vote_type"] to tell them apart.
GENAI_BENCH_PREFERENCES = {"leftvote": 1, "rightvote": -1, "tievote": 0, "bothbad_vote": 0}


def from_genai_bench(
    source,
    *,
    root: str | Path | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    verify_images: bool = True,
    skip_bad_rows: bool = False,
    allow_outside_root: bool = False,
) -> RewardDataset:
    """GenAI-Bench image-generation votes (one per row) to two records and one overall pair per row.

    Schema (confirmed from the card https://huggingface.co/datasets/TIGER-Lab/GenAI-Bench, config
    `image_generation`, and the benchmark's evaluation code): `prompt, left_model, left_image` (an `Image`
    feature), `right_model, right_image, vote_type`, where `vote_type` is one of `leftvote`, `rightvote`, `tievote`
    and `bothbad_vote` (GenAI-Arena, arXiv 2406.04485); anything else is a bad row.

    `leftvote` gives preference +1 (the left image, `record_a`, preferred), `rightvote` -1, and both `tievote` and
    `bothbad_vote` 0. To tell the two ties apart (e.g. a benchmark that scores only `tievote` as a tie), both records
    of a row keep the raw vote in `meta["vote_type"]`, with `meta["model"]` and `meta["side"]`:
    `dataset.by_id(pair.record_a).meta["vote_type"]`. Record ids are `"<row index>:left"` and
    `"<row index>:right"` (each row has its own images); the group is the prompt.

    >>> from PIL import Image
    >>> rows = [{"prompt": "a kite", "left_model": "sdxl", "left_image": Image.new("RGB", (4, 4)),
    ...          "right_model": "pixart", "right_image": Image.new("RGB", (4, 4)), "vote_type": "bothbad_vote"}]
    >>> dataset = from_genai_bench(rows)
    >>> dataset.pairs[0].preference, dataset.by_id(dataset.pairs[0].record_a).meta
    (0, {'model': 'sdxl', 'side': 'left', 'vote_type': 'bothbad_vote'})
    """
    table = read_table(source)
    root = _default_root(source, root)
    _required_columns("GenAI-Bench", table.columns, ("prompt", "left_image", "right_image", "vote_type"))
    nan = table.nan_is_missing
    records, locations, bad_rows = [], [], list(table.bad_rows)
    pairs: list[tuple[Pair, RowLocation]] = []
    for location, row in table.rows:
        problem = unreadable_row(row)
        if problem is not None:
            bad_rows.append(BadRow.at(location, "(row)", problem))
            continue
        try:
            vote = row.get("vote_type")
            if not isinstance(vote, str) or vote not in GENAI_BENCH_PREFERENCES:
                bad_rows.append(BadRow.at(location, "vote_type", f"must be one of {list(GENAI_BENCH_PREFERENCES)}, "
                                                                 f"got {shown(vote)}"))
                continue
            sides = []
            for side in ("left", "right"):
                try:
                    image = image_value(row.get(f"{side}_image"))
                except IMAGE_OPEN_ERRORS as error:
                    bad_rows.append(BadRow.at(location, f"{side}_image", f"the bytes are not an image: "
                                                                         f"{shown(str(error))}"))
                    break
                model = row.get(f"{side}_model")
                meta = {"model": model} if not _absent(model, nan) else {}
                sides.append(Record(f"{location.index}:{side}", row.get("prompt"), image, row.get("prompt"),
                                    meta={**meta, "side": side, "vote_type": vote}))
            if len(sides) < 2:
                continue
        except Exception as error:
            bad_rows.append(_unforeseen(location, error))
            continue
        records += sides
        locations += [location, location]
        pairs.append((Pair(row.get("prompt"), sides[0].record_id, sides[1].record_id,
                           GENAI_BENCH_PREFERENCES[vote]), location))
    return _finish(records, locations, bad_rows, lambda by_id: pairs, root=root, dimensions=dimensions,
                   levels=levels, verify_images=verify_images, skip_bad_rows=skip_bad_rows,
                   allow_outside_root=allow_outside_root, description="GenAI-Bench")
