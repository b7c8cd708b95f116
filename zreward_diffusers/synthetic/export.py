"""Synthetic prompt groups as a `RewardDataset`: records with labels, histograms, rationales and the ground truth in
`meta`, and the panel's pair preferences (overall and per dimension)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from PIL import Image

from ..data import Pair, Record, RewardDataset
from .annotators import LEVELS
from .oracle import DIMENSIONS
from .world import SyntheticGroup


def to_reward_dataset(groups: list[SyntheticGroup], description: str = "") -> RewardDataset:
    """Records (in-memory PNG-ready images) and panel pairs of `groups`, validated."""
    records, pairs = [], []
    for group in groups:
        for item in group.items:
            records.append(
                Record(
                    record_id=item.record_id,
                    prompt=item.prompt,
                    image=Image.fromarray(item.image),
                    group_id=item.group_id,
                    labels=dict(item.labels),
                    histograms={d: item.histograms[k].tolist() for k, d in enumerate(DIMENSIONS)},
                    rationales=dict(item.rationales),
                    meta={
                        "oracle": item.oracle,
                        "ratings": item.ratings.tolist(),
                        "spec": asdict(item.spec),
                        "scene": item.scene.to_dict(),
                        "description": item.description,
                    },
                )
            )
        upper = np.triu_indices(len(group.items), 1)
        for i, j in zip(*upper, strict=True):
            a, b = group.items[i].record_id, group.items[j].record_id
            for channel, dimension in enumerate([*DIMENSIONS, None]):
                pairs.append(Pair(group.items[i].group_id, a, b, int(group.preferences[i, j, channel]), dimension))
    return RewardDataset.from_records(records, pairs, dimensions=DIMENSIONS, levels=tuple(LEVELS.tolist()),
                                      description=description)
