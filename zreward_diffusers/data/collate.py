"""Batching: prompt groups for GDSO, pairs from labels, and collate functions for a torch `DataLoader`.

>>> import functools
>>> from PIL import Image
>>> from torch.utils.data import DataLoader
>>> from zreward_diffusers.data import Record, RewardDataset
>>> records = [Record(f"r{i}", "a red circle", Image.new("RGB", (8, 6)), "p0", labels={"alignment": 1.0 + i})
...            for i in range(4)]
>>> dataset = RewardDataset.from_records(records)
>>> loader = DataLoader(dataset.records, batch_size=4, collate_fn=functools.partial(collate_records, dataset=dataset))
>>> batch = next(iter(loader))
>>> batch["images"].shape, batch["images"].dtype, batch["labels"].shape, batch["histograms"].shape
(torch.Size([4, 3, 6, 8]), torch.uint8, torch.Size([4, 4]), torch.Size([4, 4, 9]))
>>> [pair.preference for pair in label_pairs(records[:3], "alignment")]  # r0-r1, r0-r2, r1-r2
[-1, -1, -1]
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .dataset import RewardDataset
from .records import Pair, Record

__all__ = ["PromptGroups", "collate_pairs", "collate_records", "label_pairs", "prompt_groups"]

logger = logging.getLogger(__name__)


class PromptGroups(list):
    """A list of prompt groups (each a list of `group_size` records) that also counts what was left out.

    Attributes:
        num_leftover_records: records left over when a group's size is not a multiple of `group_size` (a group
            smaller than `group_size` is all leftover).
        num_without_spread: groups dropped because their labels have no spread (all equal, or fewer than two).
    """

    def __init__(self, groups: Iterable[list[Record]] = (), num_leftover_records: int = 0,
                 num_without_spread: int = 0):
        super().__init__(groups)
        self.num_leftover_records = num_leftover_records
        self.num_without_spread = num_without_spread


def _check_dimension(dataset: RewardDataset, dimension: str | None) -> None:
    if dimension is not None and dimension not in dataset.dimensions:
        raise ValueError(f"unknown dimension {dimension!r}; the dataset's dimensions are {list(dataset.dimensions)} "
                         f"(or None for all)")


def _has_spread(records: Sequence[Record], dimensions: Sequence[str]) -> bool:
    """Whether some dimension has at least two different labels among `records` (GDSO needs unequal targets)."""
    return any(len({record.labels[name] for record in records if name in record.labels}) > 1 for name in dimensions)


def prompt_groups(
    dataset: RewardDataset,
    group_size: int,
    dimension: str | None = None,
    require_spread: bool = True,
    seed: int = 0,
) -> PromptGroups:
    """Groups of `group_size` images of one prompt, for GDSO (docs/method.md, 'GDSO'; N = 4 in the synthetic world).

    Each prompt group's records are shuffled (with `random.Random(seed)`, so the same seed gives the same groups)
    and cut into consecutive groups of `group_size`; what is left over is dropped. With `require_spread`, a
    group whose labels on `dimension` (None: on every dimension) are all equal, or which has fewer than two
    labels, is dropped, since its advantages would all be zero. The counts are on the returned `PromptGroups`
    and logged.

    >>> records = [Record(f"r{i}", "p", f"{i}.png", "g", labels={"realism": float(1 + i // 2)}) for i in range(5)]
    >>> groups = prompt_groups(RewardDataset(records), group_size=2, dimension="realism", seed=0)
    >>> len(groups), groups.num_leftover_records, groups.num_without_spread
    (2, 1, 0)
    """
    if group_size < 1:
        raise ValueError(f"`group_size` must be a positive integer, got {group_size}")
    _check_dimension(dataset, dimension)
    dimensions = dataset.dimensions if dimension is None else (dimension,)
    generator = random.Random(seed)
    result = PromptGroups()
    for records in dataset.groups().values():
        records = list(records)
        generator.shuffle(records)
        usable = len(records) - len(records) % group_size
        result.num_leftover_records += len(records) - usable
        for start in range(0, usable, group_size):
            group = records[start:start + group_size]
            if require_spread and not _has_spread(group, dimensions):
                result.num_without_spread += 1
            else:
                result.append(group)
    logger.info("%d prompt groups of %d; dropped %d without label spread and %d leftover records", len(result),
                group_size, result.num_without_spread, result.num_leftover_records)
    return result


def label_pairs(records: Iterable[Record], dimension: str | None) -> list[Pair]:
    """Every pair of records of the same group that both have a label, preferred by label; equal labels tie (0).

    For `dimension=None` (overall) a record's label is the mean of all its labels. Records without a label take
    part in no pair. Pairs come in record order within each group, `record_a` before `record_b`.
    """
    by_group: dict[str, list[tuple[Record, float]]] = {}
    for record in records:
        value = record.label(dimension)
        if value is not None:
            by_group.setdefault(record.group_id, []).append((record, value))
    pairs = []
    for group_id, labelled in by_group.items():
        for i, (a, value_a) in enumerate(labelled):
            for b, value_b in labelled[i + 1:]:
                preference = 0 if math.isclose(value_a, value_b, abs_tol=1e-9) else (1 if value_a > value_b else -1)
                pairs.append(Pair(group_id, a.record_id, b.record_id, preference, dimension))
    return pairs


def _image_batch(
    records: Sequence[Record], dataset: RewardDataset, image_size: int | tuple[int, int] | None
) -> torch.Tensor:
    """The records' images as a uint8 tensor `(B, 3, H, W)`, resized (bicubic) to `image_size` when given."""
    images = [dataset.load_image(record) for record in records]
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        images = [image if image.size == (width, height) else
                  image.resize((width, height), Image.Resampling.BICUBIC) for image in images]
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        shown = ", ".join(f"{record.record_id!r}: {image.size[1]}x{image.size[0]}"
                          for record, image in list(zip(records, images, strict=True))[:4])
        raise ValueError(f"the images of a batch differ in size (height x width; {shown}, ...); pass "
                         f"`image_size` to resize them")
    pixels = np.stack([np.asarray(image) for image in images])  # (B, H, W, 3)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


def collate_records(
    records: Sequence[Record], dataset: RewardDataset, image_size: int | tuple[int, int] | None = None
) -> dict:
    """Batch records for a `DataLoader` (bind `dataset` with `functools.partial`).

    Args:
        records: B records of `dataset`.
        dataset: gives the image root and the rubric scale (D dimensions, K levels).
        image_size: resize every image to this `(height, width)` (an int: square); None requires equal sizes.

    Returns:
        `images` uint8 `(B, 3, H, W)`; `prompts`, `group_ids`, `record_ids` lists of B strings; `labels` float32
        `(B, D)`, NaN where a record has no label; `histograms` float32 `(B, D, K)` annotator counts, zero where
        missing, with `has_histogram` bool `(B, D)`.
    """
    if not records:
        raise ValueError("`records` is empty: a batch needs at least one record")
    dimension_index = {name: index for index, name in enumerate(dataset.dimensions)}
    labels = torch.full((len(records), len(dataset.dimensions)), math.nan)
    histograms = torch.zeros(len(records), len(dataset.dimensions), len(dataset.levels))
    has_histogram = torch.zeros(len(records), len(dataset.dimensions), dtype=torch.bool)
    for row, record in enumerate(records):
        unknown = (set(record.labels) | set(record.histograms)) - set(dimension_index)
        if unknown:
            raise ValueError(f"record {record.record_id!r} has unknown dimensions {sorted(unknown)}; the dataset's "
                             f"dimensions are {list(dataset.dimensions)}")
        for name, value in record.labels.items():
            labels[row, dimension_index[name]] = float(value)
        for name, counts in record.histograms.items():
            histograms[row, dimension_index[name]] = torch.tensor(counts, dtype=torch.float32)
            has_histogram[row, dimension_index[name]] = True
    return {
        "images": _image_batch(records, dataset, image_size),
        "prompts": [record.prompt for record in records],
        "labels": labels,
        "histograms": histograms,
        "has_histogram": has_histogram,
        "group_ids": [record.group_id for record in records],
        "record_ids": [record.record_id for record in records],
    }


def collate_pairs(
    pairs: Sequence[Pair], dataset: RewardDataset, image_size: int | tuple[int, int] | None = None
) -> dict:
    """Batch pairs for a pairwise loss (bind `dataset` with `functools.partial`).

    Both images of a pair are judged under one prompt, so the two records must have the same prompt.

    Returns:
        `images_a`, `images_b` uint8 `(B, 3, H, W)` (sizes as in `collate_records`); `prompts` list of B strings;
        `preference` int64 `(B,)` (+1: a preferred, -1: b preferred, 0: tie); `dimensions` (a name or None per
        pair), `group_ids`, `record_ids_a`, `record_ids_b` lists.
    """
    if not pairs:
        raise ValueError("`pairs` is empty: a batch needs at least one pair")
    records_a = [dataset.by_id(pair.record_a) for pair in pairs]
    records_b = [dataset.by_id(pair.record_b) for pair in pairs]
    for pair, a, b in zip(pairs, records_a, records_b, strict=True):
        if a.prompt != b.prompt:
            raise ValueError(f"pair ({pair.record_a!r}, {pair.record_b!r}) compares images of different prompts "
                             f"({a.prompt!r} and {b.prompt!r}); a pairwise loss scores both under one prompt")
    images = _image_batch(records_a + records_b, dataset, image_size)  # (2B, 3, H, W)
    return {
        "images_a": images[: len(pairs)],
        "images_b": images[len(pairs):],
        "prompts": [record.prompt for record in records_a],
        "preference": torch.tensor([pair.preference for pair in pairs], dtype=torch.int64),
        "dimensions": [pair.dimension for pair in pairs],
        "group_ids": [pair.group_id for pair in pairs],
        "record_ids_a": [pair.record_a for pair in pairs],
        "record_ids_b": [pair.record_b for pair in pairs],
    }
