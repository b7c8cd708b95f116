"""The human-agreement ceiling: how well the oracle and a single annotator agree with the panel's preferences.

Any reward model is judged against the panel's pair preferences, which are noisy; no judge can be expected to agree
with them more often than a fresh annotator of the same panel does. We report, on held-out prompt groups and pairs
the panel does not tie:

- the oracle's accuracy (sign of its true-score difference; a zero difference counts ½);
- a single annotator's accuracy against the majority of the *other* annotators (leave-one-out, so the annotator's
  own vote is not part of the reference), averaged over annotators, with their own ties counting ½.
"""

from __future__ import annotations

import numpy as np

from .oracle import DIMENSIONS
from .world import SyntheticGroup


def _agreement(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """Accuracy of sign(predicted) vs reference ∈ {±1} over untied reference pairs; predicted 0 counts ½."""
    keep = reference != 0
    hits = np.where(predicted[keep] == 0, 0.5, (np.sign(predicted[keep]) == reference[keep]).astype(float))
    return float(hits.mean()) if hits.size else float("nan"), int(keep.sum())


def human_ceiling(groups: list[SyntheticGroup]) -> dict[str, dict[str, float]]:
    """Per dimension and overall: `{"oracle": acc, "single_annotator": acc, "num_pairs": n}`."""
    channels = [*DIMENSIONS, "overall"]
    oracle_deltas = {c: [] for c in channels}
    references = {c: [] for c in channels}
    annotator_hits = {c: [] for c in channels}
    for group in groups:
        n = len(group.items)
        upper = np.triu_indices(n, 1)
        oracle = np.array([[item.oracle[d] for d in DIMENSIONS] for item in group.items])
        oracle = np.concatenate([oracle, oracle.mean(axis=1, keepdims=True)], axis=1)  # (N, D + 1)
        ratings = np.stack([item.ratings for item in group.items])  # (N, A, D)
        ratings = np.concatenate([ratings, ratings.mean(axis=2, keepdims=True)], axis=2)  # (N, A, D + 1)
        votes = np.sign(ratings[:, None] - ratings[None, :])[upper]  # (pairs, A, D + 1)
        for c, channel in enumerate(channels):
            oracle_deltas[channel].append((oracle[:, None, c] - oracle[None, :, c])[upper])
            references[channel].append(group.preferences[..., c][upper])
            for a in range(votes.shape[1]):
                others = np.sign(np.delete(votes[..., c], a, axis=1).sum(axis=1))
                keep = others != 0
                own = votes[keep, a, c]
                annotator_hits[channel].append(np.where(own == 0, 0.5, (own == others[keep]).astype(float)))
    report = {}
    for channel in channels:
        accuracy, num_pairs = _agreement(np.concatenate(oracle_deltas[channel]), np.concatenate(references[channel]))
        single = np.concatenate(annotator_hits[channel])
        report[channel] = {"oracle": accuracy, "single_annotator": float(single.mean()), "num_pairs": num_pairs}
    return report
