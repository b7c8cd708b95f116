"""A panel of simulated annotators: individual bias and noise, half-point rounding, within-group adjustment.

Each annotator a has a fixed bias b_{a,d} per dimension and a noise level s_a; their rating of an image is
round_to_half(oracle_d + b_{a,d} + N(0, s_a²)), clipped to 1.0–5.0. The panel's ratings give a histogram per image
and dimension. The consensus label is the rounded panel mean, then adjusted within each prompt group: when one
image's panel mean exceeds another's by at least `adjust_margin` but their rounded labels tie or invert, the better
one is raised half a point above the other (our reading of the paper's "score adjustment so the supervision better
reflects relative image quality"). Pair preferences are majority votes of the annotators' own comparisons; ties
happen (equal ratings, or a split vote).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVELS = np.arange(1.0, 5.01, 0.5)


@dataclass(frozen=True)
class PanelConfig:
    num_annotators: int = 5
    bias_std: float = 0.25
    noise_low: float = 0.3
    noise_high: float = 0.6
    adjust_margin: float = 0.4


def round_to_half(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(values) * 2) / 2, LEVELS[0], LEVELS[-1])


class AnnotatorPanel:
    """`num_annotators` annotators with fixed personal bias (per dimension) and noise, drawn from `seed`."""

    def __init__(self, num_dimensions: int, config: PanelConfig = PanelConfig(), seed: int = 0):
        rng = np.random.default_rng([seed, 7])
        self.config = config
        self.bias = rng.normal(0.0, config.bias_std, size=(config.num_annotators, num_dimensions))
        self.noise = rng.uniform(config.noise_low, config.noise_high, size=config.num_annotators)

    def rate(self, oracle: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Ratings `(N, A, D)` on the half-point grid of images with true scores `oracle` `(N, D)`."""
        oracle = np.asarray(oracle, dtype=np.float64)
        noise = rng.normal(size=(oracle.shape[0], *self.bias.shape)) * self.noise[None, :, None]
        return round_to_half(oracle[:, None, :] + self.bias[None] + noise)


def histograms(ratings: np.ndarray) -> np.ndarray:
    """Counts per level `(N, D, K)` of ratings `(N, A, D)`."""
    index = np.rint((ratings - LEVELS[0]) * 2).astype(int)  # (N, A, D)
    counts = np.zeros((ratings.shape[0], ratings.shape[2], len(LEVELS)), dtype=np.int64)
    for a in range(ratings.shape[1]):
        np.add.at(counts, (np.arange(ratings.shape[0])[:, None], np.arange(ratings.shape[2])[None], index[:, a]), 1)
    return counts


def consensus_labels(ratings: np.ndarray, adjust_margin: float) -> np.ndarray:
    """Labels `(N, D)` of one prompt group: rounded panel means, adjusted so clear differences are not tied."""
    means = ratings.mean(axis=1)  # (N, D)
    labels = round_to_half(means)
    for d in range(means.shape[1]):
        order = np.argsort(means[:, d], kind="stable")
        for previous, current in zip(order[:-1], order[1:], strict=True):
            clearly_better = means[current, d] - means[previous, d] >= adjust_margin
            if clearly_better and labels[current, d] <= labels[previous, d]:
                labels[current, d] = min(labels[previous, d] + 0.5, LEVELS[-1])
    return labels


def panel_preferences(ratings: np.ndarray) -> np.ndarray:
    """Majority preference `(N, N, D + 1)` of a group (last channel: overall = mean over dimensions).

    Entry [i, j] is +1 if the panel prefers image i to j, −1 for j, 0 for a tie (equal ratings or a split vote).
    """
    per_annotator = np.concatenate([ratings, ratings.mean(axis=2, keepdims=True)], axis=2)  # (N, A, D + 1)
    votes = np.sign(per_annotator[:, None] - per_annotator[None, :])  # (N, N, A, D + 1)
    return np.sign(votes.sum(axis=2)).astype(np.int64)
