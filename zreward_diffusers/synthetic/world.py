"""The synthetic oracle world: prompt groups of rendered images with oracle scores, panel labels and rationales.

`SyntheticWorld(seed).generate(n)` returns `n` labelled items in prompt groups of `group_size` images. Every group
is drawn from its own random stream (seed, group index), so the same seed gives byte-identical data whatever the
order or parallelism of generation, and a prefix of a larger run equals a smaller run.

>>> world = SyntheticWorld(seed=0)
>>> items = world.generate(8)
>>> len(items), items[0].prompt == items[3].prompt, items[0].image.shape
(8, True, (56, 56, 3))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .annotators import LEVELS, AnnotatorPanel, PanelConfig, consensus_labels, histograms, panel_preferences
from .grammar import PromptSpec, sample_prompt_spec
from .language import describe, rationale
from .oracle import DIMENSIONS, oracle_scores
from .render import render
from .scene import DeviationRates, Scene, perfect_scene, sample_scene


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. `perfect_probability`: chance that a group contains one flawless image."""

    image_size: int = 56
    group_size: int = 4
    rates: DeviationRates = field(default_factory=DeviationRates)
    panel: PanelConfig = field(default_factory=PanelConfig)
    style_probability: float = 0.3
    perfect_probability: float = 0.5


@dataclass
class SyntheticItem:
    record_id: str
    group_id: str
    spec: PromptSpec
    scene: Scene
    image: np.ndarray  # uint8 (H, W, 3)
    oracle: dict[str, float]
    ratings: np.ndarray  # (A, D) panel ratings on the half-point grid
    histograms: np.ndarray  # (D, K) counts
    labels: dict[str, float]  # consensus after within-group adjustment
    rationales: dict[str, str]

    @property
    def prompt(self) -> str:
        return self.spec.text()

    @property
    def description(self) -> str:
        return describe(self.scene)


@dataclass
class SyntheticGroup:
    items: list[SyntheticItem]
    preferences: np.ndarray  # (N, N, D + 1) panel majority: +1 row preferred, -1 column preferred, 0 tie


class SyntheticWorld:
    """Generates the world's labelled prompt groups; see the module docstring."""

    def __init__(self, seed: int = 0, config: WorldConfig = WorldConfig()):
        self.seed = seed
        self.config = config
        self.panel = AnnotatorPanel(len(DIMENSIONS), config.panel, seed=seed)

    def group(self, index: int) -> SyntheticGroup:
        """Prompt group number `index`: the same (seed, index) always gives the same group."""
        config = self.config
        rng = np.random.default_rng([self.seed, index])
        spec = sample_prompt_spec(rng, config.style_probability)
        perfect_slot = int(rng.integers(config.group_size)) if rng.random() < config.perfect_probability else -1
        scenes = [
            perfect_scene(spec, rng) if j == perfect_slot else sample_scene(spec, rng, config.rates)
            for j in range(config.group_size)
        ]
        oracle = np.array([[oracle_scores(s, spec)[d] for d in DIMENSIONS] for s in scenes])
        ratings = self.panel.rate(oracle, rng)  # (N, A, D)
        labels = consensus_labels(ratings, config.panel.adjust_margin)
        counts = histograms(ratings)
        group_id = f"g{index:06d}"
        items = [
            SyntheticItem(
                record_id=f"{group_id}-{j}",
                group_id=group_id,
                spec=spec,
                scene=scene,
                image=render(scene, config.image_size),
                oracle=dict(zip(DIMENSIONS, oracle[j].tolist(), strict=True)),
                ratings=ratings[j],
                histograms=counts[j],
                labels=dict(zip(DIMENSIONS, labels[j].tolist(), strict=True)),
                rationales={d: rationale(d, scene, spec, rng) for d in DIMENSIONS},
            )
            for j, scene in enumerate(scenes)
        ]
        return SyntheticGroup(items, panel_preferences(ratings))

    def groups(self, num_groups: int, start: int = 0) -> list[SyntheticGroup]:
        return [self.group(index) for index in range(start, start + num_groups)]

    def generate(self, n: int) -> list[SyntheticItem]:
        """`n` items: whole groups, the last one cut short if `n` is not a multiple of `group_size`."""
        if n < 1:
            raise ValueError(f"`n` must be at least 1, got {n}")
        num_groups = -(-n // self.config.group_size)
        return [item for group in self.groups(num_groups) for item in group.items][:n]


__all__ = ["DIMENSIONS", "LEVELS", "SyntheticGroup", "SyntheticItem", "SyntheticWorld", "WorldConfig"]
