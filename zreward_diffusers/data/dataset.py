"""`RewardDataset`: validated records and pairs, the rubric scale they are labelled on, and our on-disk format.

On-disk format (a directory, written atomically by `RewardDataset.save`, read by `RewardDataset.load`)::

    dataset.json    {"format": "zreward-dataset", "format_version": 1, "description": str,
                     "dimensions": [str, ...], "levels": [float, ...],
                     "num_records": int, "num_pairs": int, "num_groups": int}
    records.jsonl   one Record per line: {"record_id", "prompt", "image", "group_id",
                     "labels": {dim: float}, "histograms": {dim: [K counts]}, "rationales": {dim: str}, "meta": {}}
                     where "image" is a path relative to the directory (POSIX separators)
    pairs.jsonl     one Pair per line: {"group_id", "record_a", "record_b", "preference": -1 | 0 | 1,
                     "dimension": str | null}
    images/         PNG files of the images that were in memory when saved

Images already on disk are referenced, not copied, except those inside a directory being overwritten, which are
carried over. A referenced image outside the directory is written as a relative path climbing out of it with
`..`: `load` refuses such paths (image paths never leave the dataset root) unless given `allow_outside_root=True`,
and `save` warns when it writes one.

>>> from PIL import Image
>>> records = [Record(f"r{i}", "a red circle", Image.new("RGB", (8, 8)), "p0", labels={"alignment": 1.0 + i})
...            for i in range(2)]
>>> dataset = RewardDataset.from_records(records, [Pair("p0", "r1", "r0", 1)])
>>> len(dataset), list(dataset.groups()), dataset.by_id("r1").labels
(2, ['p0'], {'alignment': 2.0})
>>> dataset.load_image(records[0]).size
(8, 8)
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..rubric import Rubric
from ..saving import atomic_directory
from .jsonl import parse_jsonl, read_json_object, write_jsonl
from .records import Pair, Record, resolve_image_path
from .validation import BadRow, RowLocation, check_schema, shown, validate_rows

__all__ = ["DEFAULT_DIMENSIONS", "DEFAULT_LEVELS", "RewardDataset"]

logger = logging.getLogger(__name__)

DEFAULT_DIMENSIONS: tuple[str, ...] = Rubric().dimension_names
DEFAULT_LEVELS: tuple[float, ...] = Rubric().levels

FORMAT_NAME = "zreward-dataset"
FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
RECORDS_FILE = "records.jsonl"
PAIRS_FILE = "pairs.jsonl"
IMAGES_DIR = "images"

# Modes PIL writes to PNG as they are; any other mode (e.g. CMYK) is saved as RGB.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


@dataclass
class RewardDataset:
    """Records and pairs on one rubric scale.

    The constructor only checks the scale and that record ids are unique; `from_records`, the readers and the
    format mappers validate every row (see `validation`).

    Args:
        records: the scored images.
        pairs: human preferences between records of the same group.
        root: the directory relative image paths are resolved against (None: the working directory).
        dimensions: the rubric dimension names labels may use.
        levels: the K level values `v_1 < ... < v_K`; labels lie in `[v_1, v_K]`, histograms have K counts.
        skipped: the bad rows left out when the dataset was read with `skip_bad_rows=True`.
        description: free text, saved in `dataset.json`.
    """

    records: list[Record]
    pairs: list[Pair] = field(default_factory=list)
    root: Path | None = None
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    levels: tuple[float, ...] = DEFAULT_LEVELS
    skipped: list[BadRow] = field(default_factory=list)
    description: str = ""
    _index: dict[str, Record] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.dimensions, self.levels = check_schema(self.dimensions, self.levels)
        self.records = list(self.records)
        self.pairs = list(self.pairs)
        self.root = None if self.root is None else Path(self.root)
        self._index = {record.record_id: record for record in self.records}
        if len(self._index) != len(self.records):
            raise ValueError("record ids must be unique; build the dataset with `RewardDataset.from_records` to "
                             "find the duplicates")

    @classmethod
    def from_records(
        cls,
        records: Sequence[Record],
        pairs: Sequence[Pair] = (),
        *,
        root: str | Path | None = None,
        dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
        levels: Sequence[float] = DEFAULT_LEVELS,
        description: str = "",
        verify_images: bool = True,
        skip_bad_rows: bool = False,
        allow_outside_root: bool = False,
    ) -> RewardDataset:
        """Validate `records` and `pairs` (raising `DataValidationError`, or skipping bad rows) into a dataset.

        `root` is the dataset root (None: the working directory); see `validation.validate_rows` for the options.
        """
        valid_records, valid_pairs, skipped = validate_rows(
            records, pairs, dimensions=dimensions, levels=levels, root=root, verify_images=verify_images,
            skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
        )
        return cls(valid_records, valid_pairs, root, tuple(dimensions), tuple(levels), skipped, description)

    def __len__(self) -> int:
        return len(self.records)

    def by_id(self, record_id: str) -> Record:
        """The record with id `record_id` (KeyError if none)."""
        try:
            return self._index[record_id]
        except KeyError:
            raise KeyError(f"no record with id {record_id!r} in this dataset") from None

    def groups(self) -> dict[str, list[Record]]:
        """Records by `group_id`, groups in order of first appearance, records in dataset order."""
        groups: dict[str, list[Record]] = {}
        for record in self.records:
            groups.setdefault(record.group_id, []).append(record)
        return groups

    def image_path(self, record: Record) -> Path | None:
        """The file of a path image (resolved against `root`), or None for an in-memory image."""
        return None if isinstance(record.image, Image.Image) else resolve_image_path(record.image, self.root)

    def load_image(self, record: Record) -> Image.Image:
        """The record's image, decoded, as an RGB `PIL.Image.Image`."""
        if isinstance(record.image, Image.Image):
            return record.image.convert("RGB")
        with Image.open(self.image_path(record)) as image:
            return image.convert("RGB")

    def split(self, fraction: float, seed: int = 0) -> tuple[RewardDataset, RewardDataset]:
        """Split by group: the first part gets `round(fraction * num_groups)` shuffled groups, the second the rest.

        No group crosses the split, so no prompt is seen in both parts; pairs follow their group. Each part gets at
        least one group; the same seed gives the same split. `skipped` is not carried into the parts.

        >>> records = [Record(f"r{i}", f"prompt {i % 5}", f"{i}.png", f"g{i % 5}") for i in range(10)]
        >>> first, second = RewardDataset(records).split(0.8, seed=0)
        >>> len(first.groups()), len(second.groups())
        (4, 1)
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"`fraction` must lie strictly between 0 and 1, got {fraction}")
        group_ids = list(self.groups())
        if len(group_ids) < 2:
            raise ValueError(f"splitting by group needs at least 2 groups, this dataset has {len(group_ids)}")
        random.Random(seed).shuffle(group_ids)
        count = min(max(round(fraction * len(group_ids)), 1), len(group_ids) - 1)
        first_groups = set(group_ids[:count])

        def part(in_first: bool) -> RewardDataset:
            return RewardDataset(
                [record for record in self.records if (record.group_id in first_groups) == in_first],
                [pair for pair in self.pairs if (pair.group_id in first_groups) == in_first],
                self.root, self.dimensions, self.levels, [], self.description,
            )

        return part(True), part(False)

    def save(self, directory: str | Path, *, overwrite: bool = False, copy_images: bool = False) -> Path:
        """Write the dataset in our format (see the module docstring), atomically; return the directory.

        Everything is written to a staging folder first, then renamed into place (`zreward_diffusers.saving`: a
        reader never sees a half-written dataset, and a kill leaves the old or the new one). An existing non-empty
        `directory` needs `overwrite=True`. Image files outside `directory` are referenced by relative path (reading
        them back needs `allow_outside_root=True`) unless `copy_images=True` copies them in (a self-contained
        dataset, such as the splits of one dataset saved side by side).
        """
        directory = Path(os.path.abspath(directory))  # absolute, with `..` folded, for the containment test below
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        if directory.exists() and any(directory.iterdir()) and not overwrite:
            raise FileExistsError(f"{directory} is not empty; pass overwrite=True to replace it")
        with atomic_directory(directory, overwrite=True) as temporary:  # the check above decided
            rows = [replace(record, image=self._stored_image(record, directory, temporary, copy_images)).to_dict()
                    for record in self.records]
            outside = [row["image"] for row in rows if row["image"].startswith("../")]
            if outside:
                logger.warning("%s references %d image(s) outside it (e.g. %s); reading it back needs "
                               "RewardDataset.load(..., allow_outside_root=True) (or save with copy_images=True)",
                               directory, len(outside), outside[0])
            write_jsonl(temporary / RECORDS_FILE, rows)
            write_jsonl(temporary / PAIRS_FILE, (pair.to_dict() for pair in self.pairs))
            info = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "description": self.description,
                "dimensions": list(self.dimensions),
                "levels": list(self.levels),
                "num_records": len(self.records),
                "num_pairs": len(self.pairs),
                "num_groups": len(self.groups()),
            }
            (temporary / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return directory

    def _stored_image(self, record: Record, directory: Path, temporary: Path, copy_images: bool) -> str:
        """The image path to write for `record`, relative to `directory`; writes or copies files into `temporary`
        (image files from outside `directory` too with `copy_images`)."""
        if isinstance(record.image, Image.Image):
            relative = f"{IMAGES_DIR}/{self._file_stem(record)}.png"
            (temporary / IMAGES_DIR).mkdir(exist_ok=True)
            image = record.image if record.image.mode in _PNG_MODES else record.image.convert("RGB")
            image.save(temporary / relative, format="PNG")
            return relative
        path = Path(os.path.abspath(self.image_path(record)))
        if path.is_relative_to(directory):
            # The directory is about to be replaced: carry the file over under the same relative path.
            relative = path.relative_to(directory)
            (temporary / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, temporary / relative)
            return relative.as_posix()
        if copy_images:
            relative = f"{IMAGES_DIR}/{self._file_stem(record)}{path.suffix.lower()}"
            (temporary / IMAGES_DIR).mkdir(exist_ok=True)
            shutil.copy2(path, temporary / relative)
            return relative
        return Path(os.path.relpath(path, directory)).as_posix()

    @staticmethod
    def _file_stem(record: Record) -> str:
        """A readable, collision-free file name for `record`'s image: the id made path-safe, plus a hash of it."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.record_id)[:80]
        return f"{safe}-{uuid.uuid5(uuid.NAMESPACE_URL, record.record_id).hex[:8]}"

    @classmethod
    def load(cls, directory: str | Path, *, verify_images: bool = True, skip_bad_rows: bool = False,
             allow_outside_root: bool = False) -> RewardDataset:
        """Read a directory written by `save`, validating every row (see `validation`); the directory is the
        dataset root, which image paths may leave only with `allow_outside_root=True`."""
        directory = Path(directory)
        info_path = directory / INFO_FILE
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: {directory} is not a dataset saved by RewardDataset")
        info = _read_info(info_path)
        if not (directory / RECORDS_FILE).is_file():
            raise FileNotFoundError(f"{directory / RECORDS_FILE} not found")
        records, record_locations, bad_rows = _read_rows(directory / RECORDS_FILE, Record)
        pairs, pair_locations, bad_pairs = ([], [], [])
        if (directory / PAIRS_FILE).is_file():
            pairs, pair_locations, bad_pairs = _read_rows(directory / PAIRS_FILE, Pair)
        valid_records, valid_pairs, skipped = validate_rows(
            records, pairs, dimensions=info["dimensions"], levels=info["levels"], root=directory,
            verify_images=verify_images, skip_bad_rows=skip_bad_rows, allow_outside_root=allow_outside_root,
            record_locations=record_locations, pair_locations=pair_locations, bad_rows=bad_rows + bad_pairs,
        )
        return cls(valid_records, valid_pairs, directory, tuple(info["dimensions"]), tuple(info["levels"]), skipped,
                   info.get("description", ""))


def _read_info(info_path: Path) -> dict:
    """`dataset.json`, checked: a ValueError names the file and what is wrong."""
    info = read_json_object(info_path)
    if info.get("format") != FORMAT_NAME or info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{info_path}: expected format {FORMAT_NAME!r} version {FORMAT_VERSION}, "
            f"got {shown(info.get('format'))} version {shown(info.get('format_version'))}"
        )
    missing = [key for key in ("dimensions", "levels") if key not in info]
    if missing:
        raise ValueError(f"{info_path} lacks {missing}")
    for key in ("dimensions", "levels"):
        if not isinstance(info[key], list):
            raise ValueError(f"{info_path}: field {key!r} must be a list, got {shown(info[key])}")
    try:
        check_schema(info["dimensions"], info["levels"])
    except ValueError as error:
        raise ValueError(f"{info_path}: {error}") from error
    if not isinstance(info.get("description", ""), str):
        raise ValueError(f"{info_path}: field 'description' must be a string, got {shown(info['description'])}")
    return info


def _read_rows(path: Path, row_type: type[Record] | type[Pair]) -> tuple[list, list[RowLocation], list[BadRow]]:
    """Parse a JSONL file of `row_type` dicts; rows that are not valid JSON (or UTF-8), nest too deep or lack fields
    become `BadRow`s."""
    rows, locations, bad_rows = [], [], []
    with open(path, "rb") as lines:  # decoded line by line: one line that is not UTF-8 is one bad row
        for line_number, value, error in parse_jsonl(lines):
            location = RowLocation(path.name, "line", line_number)
            if error is None:
                try:
                    rows.append(row_type.from_dict(value))
                    locations.append(location)
                    continue
                except ValueError as from_dict_error:
                    error = str(from_dict_error)
            bad_rows.append(BadRow.at(location, "(row)", error))
    return rows, locations, bad_rows
