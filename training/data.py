"""Training data for the reward models: a `RewardDataset` (the synthetic world's, or the user's) held as a bank of
images in memory, with the units each loop samples (rows, prompt groups, pairs) drawn as a function of (seed, step).

`source` is either `"synthetic"` — prompt groups `[start, start + num_groups)` of `SyntheticWorld(world_seed)`,
generated on the fly (a few seconds) — or the directory of a saved `RewardDataset` (`training.make_synthetic`
writes one; `zreward_diffusers.data` reads JSONL/CSV/parquet/`datasets` and the public formats into one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from zreward_diffusers.data import Record, RewardDataset
from zreward_diffusers.synthetic import SyntheticWorld, WorldConfig
from zreward_diffusers.synthetic.export import to_reward_dataset


@dataclass
class DataSpec:
    """Where a split comes from: `source` ("synthetic" or a dataset directory) and, for the world, which groups."""

    source: str = "synthetic"
    world_seed: int = 0
    start: int = 0
    num_groups: int = 512
    image_size: int = 56


def load_split(spec: DataSpec | dict) -> RewardDataset:
    """The `RewardDataset` a `DataSpec` names."""
    spec = DataSpec(**spec) if isinstance(spec, dict) else spec
    if spec.source == "synthetic":
        if spec.num_groups < 1:
            raise ValueError(f"`num_groups` must be at least 1, got {spec.num_groups}")
        world = SyntheticWorld(spec.world_seed, WorldConfig(image_size=spec.image_size))
        description = f"synthetic world {spec.world_seed}, groups {spec.start}+{spec.num_groups}"
        return to_reward_dataset(world.groups(spec.num_groups, start=spec.start), description=description)
    return RewardDataset.load(spec.source)


class ImageBank:
    """The dataset's images as one uint8 tensor `(N, H, W, 3)` in record order; all images must share one size."""

    def __init__(self, dataset: RewardDataset):
        arrays = [np.asarray(dataset.load_image(record).convert("RGB"), dtype=np.uint8) for record in dataset.records]
        sizes = sorted({array.shape[:2] for array in arrays})
        if len(sizes) != 1:
            raise ValueError(f"all training images must share one size (resize them first); found sizes {sizes[:5]}")
        self.images = torch.from_numpy(np.stack(arrays))
        self.index = {record.record_id: i for i, record in enumerate(dataset.records)}

    def pil(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index].numpy())


def labelled_groups(dataset: RewardDataset, dimensions) -> list[tuple[list[Record], str]]:
    """(records of a prompt group, dimension) for every group whose labels on `dimension` are not all equal."""
    units = []
    for records in dataset.groups().values():
        for dimension in dimensions:
            labels = [record.label(dimension) for record in records]
            if len(records) >= 2 and None not in labels and len(set(labels)) > 1:
                units.append((records, dimension))
    return units


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one training step (independent of processes and of earlier steps)."""
    return np.random.default_rng([seed, step, stream])
