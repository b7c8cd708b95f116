"""The hidden oracle: a true score per rubric dimension, computed from what a scene really shows.

Scores are continuous on the rubric's 1.0–5.0 range; annotators (`annotators.py`) see them through bias and noise.
The penalties are the world's definition of quality, one line per rule:

- alignment: count off by one −1.0 (by more −2.0); wrong colour −1.5; wrong shape −1.5; wrong background −0.75;
  objects cut by the frame −0.5;
- aesthetics: overlapping objects −1.0; colour cast −1.2 × strength; objects that barely stand out from the
  background (RGB distance < 130) −0.8; a cropped frame −0.6; compression −0.5 × strength;
- realism: blur −0.9 × σ (px at 56 px); noise −0.045 × σ (8-bit levels); compression −1.2 × strength; colour cast
  −0.4 × strength;
- physical plausibility: shadows towards the sun −1.75; no shadows at all −1.25; floating objects −1.0 for the
  first and −0.5 for each further one.
"""

from __future__ import annotations

import numpy as np

from .grammar import PALETTE, PromptSpec
from .scene import Scene

DIMENSIONS = ("alignment", "aesthetics", "realism", "physical_plausibility")
MIN_SCORE, MAX_SCORE = 1.0, 5.0
LOW_CONTRAST = 130.0  # RGB distance below which objects barely stand out (orange on yellow, pink on white)


def _colour_distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(PALETTE[a], PALETTE[b])))


def oracle_scores(scene: Scene, spec: PromptSpec) -> dict[str, float]:
    """True score of each dimension for a scene drawn for the prompt `spec`."""
    count_error = abs(scene.count - spec.count)
    alignment = (
        5.0
        - (1.0 if count_error == 1 else 2.0 if count_error > 1 else 0.0)
        - 1.5 * (scene.colour != spec.colour)
        - 1.5 * (scene.shape != spec.shape)
        - 0.75 * (scene.background != spec.background)
        - 0.5 * (scene.cut_objects > 0)
    )
    aesthetics = (
        4.9
        - 1.0 * scene.overlap
        - 1.2 * scene.cast_strength
        - 0.8 * (_colour_distance(scene.colour, scene.background) < LOW_CONTRAST)
        - 0.6 * (scene.crop > 0)
        - 0.5 * scene.compression
    )
    realism = 5.0 - 0.9 * scene.blur - 0.045 * scene.noise - 1.2 * scene.compression - 0.4 * scene.cast_strength
    floating = scene.floating
    physical = (
        5.0
        - 1.75 * (scene.shadows == "wrong")
        - 1.25 * (scene.shadows == "none")
        - (1.0 + 0.5 * (floating - 1) if floating else 0.0)
    )
    scores = dict(zip(DIMENSIONS, (alignment, aesthetics, realism, physical), strict=True))
    return {name: float(np.clip(value, MIN_SCORE, MAX_SCORE)) for name, value in scores.items()}
