"""Evaluation metrics for score-distribution rewards: preference accuracy, calibration, correlation, GSB.

This is the evaluation suite of ``docs/method.md``, section 'Evaluation' (equations 4, 16-18 there), run on saved
predictions rather than inside a training step: inputs are NumPy arrays, torch tensors (detached and moved to the CPU
once) or nested lists; outputs are Python floats and ints in dicts, plus NumPy arrays for the reliability-diagram bins.
Computation is in float64. Rank statistics, divergences and the bootstrap are scipy's (``scipy.stats``,
``scipy.special``); expected scores, rewards, ``P(a > b)`` and the EMD come from
:mod:`zreward_diffusers.distributions`. What is computed here is what scipy has no vectorised form of: pairs and
ranks *within groups*, the tie-aware accuracy and equal-mass ECE bins.

Conventions shared by the functions below:

- ``predicted`` and ``human`` are per-item scores ``(N,)``, e.g. expected scores ``mu`` and mean human scores.
- ``groups`` ``(N,)`` holds one hashable label per item (a prompt id or the prompt itself); pairs are only formed
  within a group. Pair enumeration is vectorised and needs ``O(sum_g n_g^2)`` memory, fine for small groups
  (20,000 items in groups of 16 give 150,000 pairs) but not for one group of 20,000 items.
- A pair outcome is ``+1`` (a preferred), ``-1`` (b preferred) or ``0`` (tie).
- ``probs`` ``(N, K)`` are score distributions over ``K`` levels, rows summing to 1 within ``1e-3``;
  ``histograms`` ``(N, K)`` are annotator vote counts or frequencies, normalised per row.
- Invalid inputs (wrong rank, mismatched lengths, empty, non-finite) raise ``ValueError`` naming the argument,
  and so does a metric that is undefined on its input (no untied pair, a constant score vector), instead of
  returning NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.stats
import torch
from scipy.special import rel_entr, xlogy

from .distributions import (
    check_distribution,
    check_label_index,
    check_levels,
    earth_movers_distance,
    expected_score,
    normalized_reward,
    preference_probability,
)

__all__ = [
    "bootstrap_ci",
    "calibrate_tie_epsilon",
    "correlations",
    "evaluate_scores",
    "expected_calibration_error",
    "gsb",
    "gsb_with_ci",
    "kendall_tau_b",
    "mean_brier",
    "mean_emd",
    "mean_js_divergence",
    "mean_nll",
    "pairwise_accuracy",
    "pairwise_accuracy_from_pairs",
    "pairwise_expected_calibration_error",
    "pearson",
    "spearman",
    "teacher_student_agreement",
    "tie_aware_accuracy",
]

ArrayLike = npt.ArrayLike | torch.Tensor

# Probability rows may come from float32/bfloat16 softmaxes; this is loose enough for both.
_PROBS_SUM_ATOL = 1e-3
# A human score counts as "on the grid" (a label index) when it is this close to a level.
_ON_GRID_ATOL = 1e-6


# ---------------------------------------------------------------- input conversion and validation


def _to_numpy(value: ArrayLike) -> np.ndarray:
    """``value`` as a NumPy array; tensors are detached, moved to the CPU, and half floats upcast."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.double()
        return value.numpy()
    return np.asarray(value)


def _float_array(value: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """A finite, non-empty float64 array of rank ``ndim``."""
    array = _to_numpy(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if array.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` must be finite.")
    return array


def _check_length(array: np.ndarray, length: int, name: str, reference: str) -> None:
    if array.shape[0] != length:
        raise ValueError(f"`{name}` must have the same length as `{reference}` ({length}), got {array.shape[0]}.")


def _group_ids(groups: ArrayLike, length: int, reference: str) -> np.ndarray:
    """Dense integer ids ``0..G-1`` for the ``(N,)`` group labels (in sorted label order)."""
    labels = _to_numpy(groups)
    if labels.ndim != 1:
        raise ValueError(f"`groups` must be 1-D with one label per item, got shape {labels.shape}.")
    _check_length(labels, length, "groups", reference)
    try:
        _, ids = np.unique(labels, return_inverse=True)
    except TypeError as error:
        raise ValueError("`groups` labels must be mutually comparable (all numbers or all strings).") from error
    return ids.reshape(-1)


def _outcome_array(value: ArrayLike, name: str) -> np.ndarray:
    """A 1-D float array whose values are all in ``{-1, 0, +1}``."""
    outcome = _float_array(value, name, 1)
    if not np.isin(outcome, (-1.0, 0.0, 1.0)).all():
        raise ValueError(f"`{name}` values must be +1, 0 or -1, got {np.unique(outcome).tolist()}.")
    return outcome


def _levels_tensor(levels: ArrayLike) -> torch.Tensor:
    levels = torch.from_numpy(_float_array(levels, "levels", 1))
    check_levels(levels)
    return levels


def _probs_tensor(probs: ArrayLike, name: str, num_levels: int | None = None, ndim: int = 2) -> torch.Tensor:
    """Float64 ``(..., K)`` probabilities: non-negative, rows summing to 1 within ``_PROBS_SUM_ATOL``."""
    probs = torch.from_numpy(_float_array(probs, name, ndim))
    if num_levels is not None and probs.shape[-1] != num_levels:
        raise ValueError(f"`{name}` must have {num_levels} levels in its last dimension, got {tuple(probs.shape)}.")
    check_distribution(probs, name=name, sum_atol=_PROBS_SUM_ATOL)
    return probs


def _histogram_tensor(histograms: ArrayLike, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float64 histograms of ``shape``, normalised per row; every row needs a positive sum."""
    histograms = torch.from_numpy(_float_array(histograms, name, len(shape)))
    if tuple(histograms.shape) != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(histograms.shape)}.")
    check_distribution(histograms, name=name)
    totals = histograms.sum(dim=-1, keepdim=True)
    if not bool((totals > 0).all()):
        raise ValueError(f"`{name}` rows must have a positive sum.")
    return histograms / totals


def _level_index(labels: ArrayLike, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Checked ``(N,)`` integer indices into the ``K`` levels of probabilities of ``shape`` ``(N, K)``."""
    index = _to_numpy(labels)
    if index.ndim != 1 or index.dtype.kind not in "iu":
        raise ValueError(f"`{name}` must be 1-D integer level indices, got {index.dtype} of shape {index.shape}.")
    _check_length(index, shape[0], name, "probs")
    check_label_index(torch.from_numpy(index.astype(np.int64)), shape[-1], name=name)
    return index


def _label_shares(labels: ArrayLike, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``(N, K)`` vote shares: one-hot rows for level indices ``(N,)``, else histograms normalised per row."""
    if _to_numpy(labels).ndim == 1:
        return np.eye(shape[-1])[_level_index(labels, shape, name)]
    return _histogram_tensor(labels, name, shape).numpy()


# ---------------------------------------------------------------- pairs within groups


def _within_group_pairs(group_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item indices ``(first, second)`` of every unordered pair of distinct items sharing a group.

    Items are sorted by group; the item at sorted position ``p`` pairs with positions ``p+1 .. end-1`` of its
    group. The pairs are laid out with ``np.repeat`` and an offset ramp, with no Python loop over groups.
    """
    order = np.argsort(group_ids, kind="stable")
    counts = np.bincount(group_ids)
    group_end = np.cumsum(counts)[group_ids[order]]  # (N,) exclusive end of each sorted item's group
    position = np.arange(group_ids.shape[0])
    num_partners = group_end - position - 1
    first = np.repeat(position, num_partners)
    run_start = np.repeat(np.cumsum(num_partners) - num_partners, num_partners)
    second = first + 1 + (np.arange(first.shape[0]) - run_start)
    return order[first], order[second]


def _scores_and_groups(
    predicted: ArrayLike, human: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    predicted = _float_array(predicted, "predicted", 1)
    human = _float_array(human, "human", 1)
    _check_length(human, predicted.shape[0], "human", "predicted")
    return predicted, human, _group_ids(groups, predicted.shape[0], "predicted")


def _pair_accuracy(predicted_gap: np.ndarray, human_sign: np.ndarray, name: str) -> dict[str, float | int]:
    """docs/method.md eq. 17 over pairs: human ties dropped, exact predicted ties worth 1/2."""
    untied = human_sign != 0
    num_pairs = int(untied.sum())
    if num_pairs == 0:
        raise ValueError(f"`{name}` gives no pair with a strict human preference: the accuracy is undefined.")
    predicted_sign = np.sign(predicted_gap[untied])
    credit = np.where(predicted_sign == 0, 0.5, (predicted_sign == human_sign[untied]).astype(np.float64))
    return {"accuracy": float(credit.mean()), "num_pairs": num_pairs}


def pairwise_accuracy(predicted: ArrayLike, human: ArrayLike, groups: ArrayLike) -> dict[str, float | int]:
    """Pairwise preference accuracy over all pairs within each group (docs/method.md eq. 17).

    ``Acc = mean over pairs (a, b) with y_a != y_b of 1[sgn(mu_a - mu_b) = sgn(y_a - y_b)]``, where a pair the
    prediction ties exactly (``mu_a == mu_b``) counts 1/2. Human-tied pairs are left out.

    Args:
        predicted: ``(N,)`` predicted scores (e.g. expected scores ``mu``).
        human: ``(N,)`` human scores; only their order within a group matters.
        groups: ``(N,)`` group labels (prompts); items of different groups are never paired.

    Returns:
        ``{"accuracy": float in [0, 1], "num_pairs": int}``, the number of pairs with a strict human preference.

    Raises:
        ValueError: on invalid inputs, or if no within-group pair has a strict human preference.

    >>> # group "a": (0,1) right, (0,2) right, (1,2) predicted tie -> 1/2; group "b": (3,4) wrong
    >>> pairwise_accuracy([3.0, 2.0, 2.0, 1.0, 2.0], [5, 4, 3, 2, 1], ["a", "a", "a", "b", "b"])
    {'accuracy': 0.625, 'num_pairs': 4}
    """
    predicted, human, group_ids = _scores_and_groups(predicted, human, groups)
    first, second = _within_group_pairs(group_ids)
    return _pair_accuracy(predicted[first] - predicted[second], np.sign(human[first] - human[second]), "human")


def pairwise_accuracy_from_pairs(
    predicted_a: ArrayLike, predicted_b: ArrayLike, outcome: ArrayLike
) -> dict[str, float | int]:
    """Pairwise preference accuracy on a pair-format dataset (Pick-a-Pic style), docs/method.md eq. 17.

    Same convention as :func:`pairwise_accuracy`: pairs with ``outcome == 0`` (human tie) are left out, and a
    predicted exact tie ``predicted_a == predicted_b`` counts 1/2.

    Args:
        predicted_a: ``(P,)`` predicted scores of the first image of each pair.
        predicted_b: ``(P,)`` predicted scores of the second image.
        outcome: ``(P,)`` human outcome, ``+1`` (a preferred), ``-1`` (b preferred) or ``0`` (tie).

    Returns:
        ``{"accuracy": float, "num_pairs": int}``, the number of pairs with ``outcome != 0``.

    >>> # right, tie (dropped), predicted tie -> 1/2, wrong: (1 + 0.5 + 0) / 3
    >>> result = pairwise_accuracy_from_pairs([2.0, 1.0, 3.0, 1.0], [1.0, 0.0, 3.0, 2.0], [1, 0, -1, 1])
    >>> round(result["accuracy"], 6), result["num_pairs"]
    (0.5, 3)
    """
    predicted_a = _float_array(predicted_a, "predicted_a", 1)
    predicted_b = _float_array(predicted_b, "predicted_b", 1)
    outcome = _outcome_array(outcome, "outcome")
    _check_length(predicted_b, predicted_a.shape[0], "predicted_b", "predicted_a")
    _check_length(outcome, predicted_a.shape[0], "outcome", "predicted_a")
    return _pair_accuracy(predicted_a - predicted_b, outcome, "outcome")


# ---------------------------------------------------------------- tie-aware accuracy (Deutsch et al., 2023)


def _tie_aware_pairs(
    predicted: ArrayLike, human: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(|mu_a - mu_b|, sgn(mu_a - mu_b), sgn(y_a - y_b))`` over all within-group pairs."""
    predicted, human, group_ids = _scores_and_groups(predicted, human, groups)
    first, second = _within_group_pairs(group_ids)
    if first.shape[0] == 0:
        raise ValueError("`groups` gives no within-group pair: every group has a single item.")
    gap = predicted[first] - predicted[second]
    return np.abs(gap), np.sign(gap), np.sign(human[first] - human[second])


def tie_aware_accuracy(
    predicted: ArrayLike, human: ArrayLike, groups: ArrayLike, epsilon: float
) -> dict[str, float | int]:
    """Tie-aware pairwise accuracy ``acc_eq`` (Deutsch et al., "Ties Matter", arXiv 2305.14324).

    Over *all* within-group pairs, human ties included: the prediction is a tie when ``|mu_a - mu_b| < epsilon``
    (an exact tie ``mu_a == mu_b`` is always a tie), else ``sgn(mu_a - mu_b)``; a pair agrees when the predicted
    and the human outcome are equal, tie-tie included. ``acc_eq = (#agree) / (#all pairs)``. Note the strict
    ``<``: mt-metrics-eval ties ``|mu_a - mu_b| <= epsilon``. Tune ``epsilon`` on a dev split with
    :func:`calibrate_tie_epsilon` (docs/method.md, 'Evaluation').

    Args:
        predicted: ``(N,)`` predicted scores.
        human: ``(N,)`` human scores.
        groups: ``(N,)`` group labels.
        epsilon: non-negative tie threshold, in the units of ``predicted``.

    Returns:
        ``{"accuracy": float, "num_pairs": int}`` with ``num_pairs`` counting all within-group pairs.

    >>> # gaps 0.05 (human tie), 0.5 (human prefers the first), 0.55 (human prefers the first)
    >>> tie_aware_accuracy([1.0, 1.05, 0.5], [3, 3, 2], [0, 0, 0], epsilon=0.1)  # tie-tie, right, right
    {'accuracy': 1.0, 'num_pairs': 3}
    >>> round(tie_aware_accuracy([1.0, 1.05, 0.5], [3, 3, 2], [0, 0, 0], epsilon=0.0)["accuracy"], 6)
    0.666667
    """
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"`epsilon` must be finite and non-negative, got {epsilon}.")
    abs_gap, predicted_sign, human_sign = _tie_aware_pairs(predicted, human, groups)
    predicted_sign = np.where(abs_gap < epsilon, 0.0, predicted_sign)
    return {"accuracy": float((predicted_sign == human_sign).mean()), "num_pairs": int(abs_gap.shape[0])}


def calibrate_tie_epsilon(predicted: ArrayLike, human: ArrayLike, groups: ArrayLike) -> dict[str, float | int]:
    """Tie calibration: the ``epsilon`` that maximises :func:`tie_aware_accuracy` (Deutsch et al., 2023).

    The candidates are the distinct pair gaps ``|mu_a - mu_b|`` in increasing order (``epsilon = c`` ties the
    pairs with a gap strictly below ``c``) plus one value just above the largest gap (everything tied). Sorting
    the pairs by gap, the agreements of the first ``t`` pairs predicted tied are
    ``cumsum(human tie)[t] + (sum - cumsum)(sign agreement)[t]``, so all candidates are scored in
    ``O(M log M)`` for ``M`` pairs, with no loop. Among equally good candidates the smallest ``epsilon`` (fewest
    predicted ties) wins. Calibrate on a dev split: the accuracy it reaches on its own data is optimistic.

    Args:
        predicted: ``(N,)`` predicted scores.
        human: ``(N,)`` human scores.
        groups: ``(N,)`` group labels.

    Returns:
        ``{"epsilon": float, "accuracy": float, "num_pairs": int}``, the best threshold and its ``acc_eq``.

    >>> # gaps 0.05 (human tie), 0.5 and 0.55 (human prefers the first): tying only the 0.05 pair is best
    >>> calibrate_tie_epsilon([1.0, 1.05, 0.5], [3, 3, 2], [0, 0, 0])
    {'epsilon': 0.5, 'accuracy': 1.0, 'num_pairs': 3}
    """
    abs_gap, predicted_sign, human_sign = _tie_aware_pairs(predicted, human, groups)
    order = np.argsort(abs_gap, kind="stable")
    sorted_gap = abs_gap[order]
    num_pairs = sorted_gap.shape[0]
    # (M + 1,) agreements when the first t pairs (by gap) are predicted ties, t = 0..M.
    tie_agree = np.concatenate([[0], np.cumsum(human_sign[order] == 0)])
    sign_agree = np.concatenate([[0], np.cumsum(predicted_sign[order] == human_sign[order])])
    agreements = tie_agree + (sign_agree[-1] - sign_agree)
    # Only cuts between distinct gaps are reachable by a threshold.
    reachable = np.ones(num_pairs + 1, dtype=bool)
    reachable[1:-1] = sorted_gap[:-1] < sorted_gap[1:]
    best = int(np.flatnonzero(reachable)[np.argmax(agreements[reachable])])
    epsilon = sorted_gap[best] if best < num_pairs else np.nextafter(sorted_gap[-1], np.inf)
    return {"epsilon": float(epsilon), "accuracy": float(agreements[best] / num_pairs), "num_pairs": num_pairs}


# ---------------------------------------------------------------- distribution calibration


def mean_nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood of the human labels, in nats (docs/method.md, 'Evaluation').

    With integer labels this is ``mean_i -log p_i(y_i)``. With histograms it is the NLL averaged over each
    item's annotator votes, the cross-entropy ``-sum_k h_k log p_k`` with ``h`` normalised per row (levels with
    ``h_k = 0`` contribute 0 even where ``p_k = 0``). A label level with ``p = 0`` gives ``inf``.

    Args:
        probs: ``(N, K)`` predicted distributions.
        labels: ``(N,)`` integer level indices in ``[0, K)``, or ``(N, K)`` annotator histograms.

    Returns:
        The mean over the ``N`` items.

    >>> round(mean_nll([[0.5, 0.5], [0.25, 0.75]], [0, 1]), 6)  # (log 2 + log 4/3) / 2
    0.490415
    >>> round(mean_nll([[0.5, 0.5]], [[3, 1]]), 6)  # 3/4 log 2 + 1/4 log 2
    0.693147
    """
    probs = _probs_tensor(probs, "probs").numpy()
    shares = _label_shares(labels, probs.shape, "labels")
    # xlogy(0, p) = 0 and xlogy(h > 0, 0) = -inf; "0.0 -" rather than "-" so that a perfect fit gives 0.0, not -0.0
    return 0.0 - float(xlogy(shares, probs).sum(axis=1).mean())


def mean_brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean multi-class Brier score ``sum_k (p_k - 1[k = y])^2`` (docs/method.md, 'Evaluation').

    With histograms, the Brier score is averaged over each item's annotator votes,
    ``sum_k h_k Brier(p, k) = sum_k p_k^2 - 2 sum_k h_k p_k + 1`` (the same as with one label when ``h`` is
    one-hot; note it is not ``sum_k (p_k - h_k)^2``, which is smaller by the histogram's own spread
    ``1 - sum_k h_k^2``).

    Args:
        probs: ``(N, K)`` predicted distributions.
        labels: ``(N,)`` integer level indices in ``[0, K)``, or ``(N, K)`` annotator histograms.

    Returns:
        The mean over the ``N`` items, in ``[0, 2]``.

    >>> round(mean_brier([[0.2, 0.3, 0.5]], [2]), 6)  # 0.2^2 + 0.3^2 + 0.5^2
    0.38
    >>> round(mean_brier([[0.5, 0.5]], [[1, 1]]), 6)  # each vote: 0.5^2 + 0.5^2
    0.5
    """
    probs = _probs_tensor(probs, "probs").numpy()
    shares = _label_shares(labels, probs.shape, "labels")
    return float(((probs * probs).sum(axis=1) - 2 * (shares * probs).sum(axis=1) + 1).mean())


def mean_emd(probs: ArrayLike, histograms: ArrayLike, levels: ArrayLike) -> float:
    """Mean Wasserstein-1 (earth mover's) distance ``sum_k |F_p(k) - F_h(k)| (v_{k+1} - v_k)`` (docs/method.md eq. 18).

    Args:
        probs: ``(N, K)`` predicted distributions.
        histograms: ``(N, K)`` annotator histograms or soft targets (normalised per row).
        levels: ``(K,)`` strictly increasing score levels.

    Returns:
        The mean distance, in the units of ``levels``.

    >>> mean_emd([[1.0, 0.0, 0.0]], [[0, 1, 1]], [1.0, 1.5, 2.0])  # move half a unit by 0.5 and half by 1.0
    0.75
    """
    levels = _levels_tensor(levels)
    probs = _probs_tensor(probs, "probs", num_levels=levels.shape[0])
    histograms = _histogram_tensor(histograms, "histograms", tuple(probs.shape))
    return float(earth_movers_distance(probs, histograms, levels).mean())


def mean_js_divergence(probs: ArrayLike, histograms: ArrayLike) -> float:
    """Mean Jensen-Shannon divergence ``JS = KL(p || m) / 2 + KL(h || m) / 2``, ``m = (p + h) / 2``, in nats.

    docs/method.md, 'Evaluation'. It lies in ``[0, log 2]`` and is finite even where one side has zero mass. The
    KL terms are ``scipy.special.rel_entr``. ``scipy.spatial.distance.jensenshannon`` returns the square root of
    the same sum for rows summing to 1, but it renormalises the rows and is NaN where rounding makes the sum
    negative (``p`` within an ulp of ``h``), so the square is not taken from it.

    Args:
        probs: ``(N, K)`` predicted distributions.
        histograms: ``(N, K)`` annotator histograms or soft targets (normalised per row).

    Returns:
        The mean divergence over the ``N`` items.

    >>> round(mean_js_divergence([[1.0, 0.0]], [[0, 1]]), 6)  # disjoint supports: log 2
    0.693147
    """
    probs = _probs_tensor(probs, "probs").numpy()
    histograms = _histogram_tensor(histograms, "histograms", probs.shape).numpy()
    middle = 0.5 * (probs + histograms)
    return float(0.5 * (rel_entr(probs, middle) + rel_entr(histograms, middle)).sum(axis=1).mean())


def _equal_mass_reliability(confidence: np.ndarray, target: np.ndarray, num_bins: int) -> dict[str, Any]:
    """ECE with ``min(num_bins, N)`` equal-mass bins over sorted ``confidence`` (sizes differ by at most 1).

    Items with equal confidence may straddle a bin edge. So that the result does not depend on the input
    order, every item of a run of equal confidences carries the run's mean target: the bins then hold the
    expected accuracy under a uniformly random order of the tied items.
    """
    num_items = confidence.shape[0]
    order = np.argsort(confidence, kind="stable")
    confidence = confidence[order]
    _, run = np.unique(confidence, return_inverse=True)
    target = (np.bincount(run, weights=target[order]) / np.bincount(run))[run]
    num_bins = min(num_bins, num_items)
    bin_index = np.arange(num_items) * num_bins // num_items
    count = np.bincount(bin_index, minlength=num_bins)
    bin_confidence = np.bincount(bin_index, weights=confidence, minlength=num_bins) / count
    bin_accuracy = np.bincount(bin_index, weights=target, minlength=num_bins) / count
    ece = float((count / num_items * np.abs(bin_accuracy - bin_confidence)).sum())
    return {"ece": ece, "bin_confidence": bin_confidence, "bin_accuracy": bin_accuracy, "bin_count": count}


def _check_num_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"`num_bins` must be a positive integer, got {num_bins!r}.")


def expected_calibration_error(probs: ArrayLike, label_index: ArrayLike, num_bins: int = 15) -> dict[str, Any]:
    """Top-label expected calibration error with equal-mass bins (docs/method.md, 'Evaluation').

    Confidence ``c_i = max_k p_ik``, correctness ``1[argmax_k p_ik = y_i]`` (among equal maxima, the lowest
    level is the prediction). Items are sorted by confidence and cut into ``B = min(num_bins, N)`` bins of
    ``floor(N / B)`` or ``ceil(N / B)`` items; ``ECE = sum_b (n_b / N) |acc_b - conf_b|``. Ties in confidence:
    equal confidences may be split across a bin edge by position, and each tied item then counts the mean
    correctness of all items sharing its confidence, which makes the result independent of the input order.

    Args:
        probs: ``(N, K)`` predicted distributions.
        label_index: ``(N,)`` integer index of the human label's level.
        num_bins: number of equal-mass bins.

    Returns:
        ``{"ece": float, "bin_confidence": (B,), "bin_accuracy": (B,), "bin_count": (B,)}``; the bin arrays
        (NumPy, counts summing to ``N``) draw the reliability diagram.

    >>> probs = [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]]
    >>> result = expected_calibration_error(probs, [0, 1, 1, 0], num_bins=2)
    >>> # bins by confidence: {0.6, 0.7} conf 0.65 acc 0.5; {0.8, 0.9} conf 0.85 acc 0.5 -> 0.15/2 + 0.35/2
    >>> round(result["ece"], 6), result["bin_count"].tolist()
    (0.25, [2, 2])
    """
    _check_num_bins(num_bins)
    probs = _probs_tensor(probs, "probs")
    label_index = _level_index(label_index, tuple(probs.shape), "label_index")
    probs = probs.numpy()
    correct = (probs.argmax(axis=1) == label_index).astype(np.float64)
    return _equal_mass_reliability(probs.max(axis=1), correct, num_bins)


def pairwise_expected_calibration_error(
    p_a_beats_b: ArrayLike, outcome: ArrayLike, num_bins: int = 15
) -> dict[str, Any]:
    """Reliability of the preference probability ``P(a > b)`` (docs/method.md eq. 4) against human outcomes.

    Each pair's target is ``1`` if a is preferred, ``0`` if b is, ``1/2`` for a tie. Pairs are sorted by
    ``P(a > b)`` and cut into equal-mass bins as in :func:`expected_calibration_error` (same tie handling);
    ``ECE = sum_b (n_b / N) |mean target_b - mean P_b|``. The diagram spans ``[0, 1]``: swapping a and b maps
    ``(P, target)`` to ``(1 - P, 1 - target)``, which keeps each pair's gap but can move it to another bin.

    Args:
        p_a_beats_b: ``(P,)`` predicted probabilities, e.g. from
            :func:`zreward_diffusers.distributions.preference_probability`.
        outcome: ``(P,)`` human outcome, ``+1`` (a), ``-1`` (b) or ``0`` (tie).
        num_bins: number of equal-mass bins.

    Returns:
        ``{"ece": float, "bin_confidence": (B,), "bin_accuracy": (B,), "bin_count": (B,)}``, where
        ``bin_accuracy`` is the mean target (the empirical ``P(a > b)``).

    >>> result = pairwise_expected_calibration_error([0.2, 0.4, 0.7, 0.9], [-1, 0, 1, 1], num_bins=2)
    >>> # bins {0.2, 0.4}: conf 0.3, target (0 + 0.5)/2 = 0.25; {0.7, 0.9}: conf 0.8, target 1 -> (0.05 + 0.2)/2
    >>> round(result["ece"], 6)
    0.125
    """
    _check_num_bins(num_bins)
    p_a_beats_b = _float_array(p_a_beats_b, "p_a_beats_b", 1)
    if ((p_a_beats_b < 0) | (p_a_beats_b > 1)).any():
        raise ValueError("`p_a_beats_b` must lie in [0, 1].")
    outcome = _outcome_array(outcome, "outcome")
    _check_length(outcome, p_a_beats_b.shape[0], "outcome", "p_a_beats_b")
    return _equal_mass_reliability(p_a_beats_b, (outcome + 1) / 2, num_bins)


# ---------------------------------------------------------------- correlations


def _paired_vectors(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = _float_array(x, "x", 1)
    y = _float_array(y, "y", 1)
    _check_length(y, x.shape[0], "y", "x")
    for values, name in ((x, "x"), (y, "y")):
        if values.shape[0] < 2 or values.min() == values.max():
            raise ValueError(f"`{name}` must hold at least 2 distinct values: the correlation is undefined.")
    return x, y


def _group_ranks(values: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` within each group, tied values sharing their average rank.

    ``scipy.stats.rankdata`` of the key ``(group, dense rank of the value)`` ranks the groups one after the other;
    subtracting the number of items in the earlier groups gives the rank within the group.
    """
    key = group_ids * values.shape[0] + scipy.stats.rankdata(values, method="dense")
    counts = np.bincount(group_ids)
    return scipy.stats.rankdata(key) - (np.cumsum(counts) - counts)[group_ids]


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson linear correlation (PLCC) ``r = sum dx dy / sqrt(sum dx^2 sum dy^2)`` (docs/method.md, 'Evaluation').

    ``scipy.stats.pearsonr``.

    Args:
        x: ``(N,)`` values, at least 2 distinct.
        y: ``(N,)`` values, at least 2 distinct.

    >>> round(pearson([1.0, 2.0, 3.0], [1.0, 2.0, 6.0]), 6)  # dx = (-1, 0, 1), dy = (-2, -1, 3): 5 / sqrt(28)
    0.944911
    """
    return float(scipy.stats.pearsonr(*_paired_vectors(x, y)).statistic)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation: Pearson on average ranks, ties share their mean rank (docs/method.md, 'Evaluation').

    ``scipy.stats.spearmanr``.

    Args:
        x: ``(N,)`` values, at least 2 distinct.
        y: ``(N,)`` values, at least 2 distinct.

    >>> spearman([1.0, 2.0, 3.0], [1.0, 5.0, 4.0])  # ranks (1, 2, 3) vs (1, 3, 2): (1 + 0 + 0) / sqrt(2 * 2)
    0.5
    """
    return float(scipy.stats.spearmanr(*_paired_vectors(x, y)).statistic)


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b ``(n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` (docs/method.md, 'Evaluation').

    ``n_0 = N(N-1)/2``; ``n_1``, ``n_2`` are the pairs tied in ``x``, in ``y``; ``n_c``, ``n_d`` the concordant
    and discordant pairs. ``scipy.stats.kendalltau`` (variant ``"b"``, ``O(N log N)``).

    Args:
        x: ``(N,)`` values, at least 2 distinct.
        y: ``(N,)`` values, at least 2 distinct.

    >>> # pairs: (1,2) concordant, (1,3) concordant, (2,3) tied in x -> 2 / sqrt(2 * 3)
    >>> round(kendall_tau_b([1.0, 2.0, 2.0], [1.0, 2.0, 3.0]), 6)
    0.816497
    """
    return float(scipy.stats.kendalltau(*_paired_vectors(x, y), variant="b").statistic)


def _group_correlations(x: np.ndarray, y: np.ndarray, group_ids: np.ndarray) -> dict[str, Any]:
    """Spearman, Kendall tau-b and Pearson per group, averaged over groups with >= 3 items, non-constant.

    The same statistics as scipy's (``tests/test_metrics.py`` checks a per-group scipy loop), computed for all
    groups at once: tau-b from the within-group pair signs, Pearson from per-group sums (``np.bincount``) and
    Spearman as that Pearson on :func:`_group_ranks`. A Python loop of scipy calls takes about 200 times as long
    (1 s against 5 ms for 512 groups of 4).
    """
    num_groups = int(group_ids.max()) + 1
    size = np.bincount(group_ids, minlength=num_groups)
    first, second = _within_group_pairs(group_ids)
    pair_group = group_ids[first]
    sign_x, sign_y = np.sign(x[first] - x[second]), np.sign(y[first] - y[second])
    untied_x = np.bincount(pair_group, weights=sign_x != 0, minlength=num_groups)
    untied_y = np.bincount(pair_group, weights=sign_y != 0, minlength=num_groups)
    counted = (size >= 3) & (untied_x > 0) & (untied_y > 0)
    num_counted = int(counted.sum())
    if num_counted == 0:
        return {
            "group_spearman": None,
            "group_kendall_tau_b": None,
            "group_pearson": None,
            "num_groups": num_groups,
            "num_groups_counted": 0,
        }

    def group_pearson(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du = u - (np.bincount(group_ids, weights=u, minlength=num_groups) / size)[group_ids]
        dv = v - (np.bincount(group_ids, weights=v, minlength=num_groups) / size)[group_ids]
        covariance = np.bincount(group_ids, weights=du * dv, minlength=num_groups)[counted]
        variance_u = np.bincount(group_ids, weights=du * du, minlength=num_groups)[counted]
        variance_v = np.bincount(group_ids, weights=dv * dv, minlength=num_groups)[counted]
        return np.clip(covariance / np.sqrt(variance_u * variance_v), -1.0, 1.0)

    score_sum = np.bincount(pair_group, weights=sign_x * sign_y, minlength=num_groups)[counted]
    kendall = score_sum / np.sqrt(untied_x[counted] * untied_y[counted])
    spearman_values = group_pearson(_group_ranks(x, group_ids), _group_ranks(y, group_ids))
    return {
        "group_spearman": float(spearman_values.mean()),
        "group_kendall_tau_b": float(kendall.mean()),
        "group_pearson": float(group_pearson(x, y).mean()),
        "num_groups": num_groups,
        "num_groups_counted": num_counted,
    }


def correlations(predicted: ArrayLike, human: ArrayLike, groups: ArrayLike | None = None) -> dict[str, Any]:
    """Spearman, Kendall tau-b and Pearson between predicted and human scores, global and per group (sec. 5.3).

    The per-group values are computed within each group (prompt) and averaged with equal weight over the groups
    that have at least 3 items and non-constant ``predicted`` and ``human``, which matches how the reward is
    used (ranking images of one prompt). The global values are ``scipy.stats.spearmanr``, ``kendalltau`` (tau-b)
    and ``pearsonr``; the per-group ones are the same statistics, vectorised over groups.

    Args:
        predicted: ``(N,)`` predicted scores, at least 2 distinct values.
        human: ``(N,)`` human scores, at least 2 distinct values.
        groups: ``(N,)`` group labels, optional.

    Returns:
        ``{"spearman", "kendall_tau_b", "pearson", "num_items"}``; with ``groups`` also ``"group_spearman"``,
        ``"group_kendall_tau_b"``, ``"group_pearson"`` (``None`` when no group qualifies), ``"num_groups"`` and
        ``"num_groups_counted"``.

    >>> result = correlations([1.0, 2.0, 3.0, 1.0, 2.0, 3.0], [1, 2, 3, 3, 2, 1], groups=[0, 0, 0, 1, 1, 1])
    >>> result["group_kendall_tau_b"], result["num_groups_counted"]  # (1 + (-1)) / 2
    (0.0, 2)
    """
    predicted = _float_array(predicted, "predicted", 1)
    human = _float_array(human, "human", 1)
    _check_length(human, predicted.shape[0], "human", "predicted")
    for values, name in ((predicted, "predicted"), (human, "human")):
        if values.min() == values.max():
            raise ValueError(f"`{name}` is constant: the correlations are undefined.")
    result: dict[str, Any] = {
        "spearman": spearman(predicted, human),
        "kendall_tau_b": kendall_tau_b(predicted, human),
        "pearson": pearson(predicted, human),
        "num_items": int(predicted.shape[0]),
    }
    if groups is not None:
        result.update(_group_correlations(predicted, human, _group_ids(groups, predicted.shape[0], "predicted")))
    return result


# ---------------------------------------------------------------- teacher vs student


def teacher_student_agreement(
    student_probs: ArrayLike, teacher_probs: ArrayLike, levels: ArrayLike, groups: ArrayLike | None = None
) -> dict[str, Any]:
    """Agreement of the student with its teacher on held-out inputs (docs/method.md, 'Evaluation').

    ``mean |mu_S - mu_T|`` (expected scores, docs/method.md eq. 2), ``mean KL(q_T || p_S)`` (nats, summed
    ``scipy.special.rel_entr``; ``inf`` where the student puts zero mass on a level the teacher uses) and, with
    ``groups``, the student's :func:`pairwise_accuracy` with the teacher's expected scores as the labels.

    Args:
        student_probs: ``(N, K)`` student distributions ``p_S``.
        teacher_probs: ``(N, K)`` teacher (reasoning-marginal) distributions ``q_T``.
        levels: ``(K,)`` score levels.
        groups: ``(N,)`` group labels, optional.

    Returns:
        ``{"mean_abs_expected_score_gap", "mean_kl_teacher_student"}``, plus ``"pairwise_accuracy"`` and
        ``"num_pairs"`` with ``groups``.

    >>> student = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]  # mu_S = 1.5, 2.5
    >>> teacher = [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]  # mu_T = 1.5, 3.0; KL = 0, log 2
    >>> result = teacher_student_agreement(student, teacher, [1.0, 2.0, 3.0], groups=[0, 0])
    >>> result["mean_abs_expected_score_gap"], round(result["mean_kl_teacher_student"], 6), result["pairwise_accuracy"]
    (0.25, 0.346574, 1.0)
    """
    levels = _levels_tensor(levels)
    student = _probs_tensor(student_probs, "student_probs", num_levels=levels.shape[0])
    teacher = _probs_tensor(teacher_probs, "teacher_probs", num_levels=levels.shape[0])
    if teacher.shape != student.shape:
        raise ValueError(
            f"`teacher_probs` must have the shape of `student_probs` {tuple(student.shape)}, "
            f"got {tuple(teacher.shape)}."
        )
    student_mu = expected_score(student, levels).numpy()
    teacher_mu = expected_score(teacher, levels).numpy()
    result: dict[str, Any] = {
        "mean_abs_expected_score_gap": float(np.abs(student_mu - teacher_mu).mean()),
        "mean_kl_teacher_student": float(rel_entr(teacher.numpy(), student.numpy()).sum(axis=1).mean()),
    }
    if groups is not None:
        accuracy = pairwise_accuracy(student_mu, teacher_mu, groups)
        result.update({"pairwise_accuracy": accuracy["accuracy"], "num_pairs": accuracy["num_pairs"]})
    return result


# ---------------------------------------------------------------- GSB and bootstrap


def gsb(judgements: ArrayLike) -> dict[str, float | int]:
    """Good / Same / Bad rates and the net preference ``(G - B) / (G + S + B)`` (docs/method.md eq. 16).

    Args:
        judgements: ``(N,)`` side-by-side judgements of the tuned model against the baseline on the same
            prompt and seed: ``+1`` good (tuned better), ``0`` same, ``-1`` bad.

    Returns:
        ``{"good", "same", "bad", "net", "num_judgements"}``; the first four are fractions of ``N`` (multiply by
        100 for percentages), ``net`` lies in ``[-1, 1]``.

    >>> gsb([1, 1, 1, 0, -1])  # (3 - 1) / 5
    {'good': 0.6, 'same': 0.2, 'bad': 0.2, 'net': 0.4, 'num_judgements': 5}
    """
    judgements = _outcome_array(judgements, "judgements")
    num = judgements.shape[0]
    good, bad = int((judgements > 0).sum()), int((judgements < 0).sum())
    return {
        "good": good / num,
        "same": (num - good - bad) / num,
        "bad": bad / num,
        "net": (good - bad) / num,
        "num_judgements": num,
    }


def bootstrap_ci(
    statistic_fn: Callable[..., float],
    data: ArrayLike | tuple[ArrayLike, ...],
    groups: ArrayLike | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    pass_groups: bool = False,
) -> dict[str, float | int]:
    """Percentile bootstrap confidence interval of ``statistic_fn(data)`` (docs/method.md, 'Evaluation': over prompts).

    Each resample draws ``N`` items with replacement or, with ``groups``, as many groups as there are with
    replacement, keeping every drawn group whole (the prompt is the unit of sampling). The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled statistics (linear
    interpolation): ``scipy.stats.bootstrap(method="percentile")`` over the sampling units (items, or groups
    expanded to their items), its draws from ``numpy.random.default_rng(seed)``: same inputs and seed, same
    interval. With a single unit every resample is the data itself and the interval is the estimate.

    Args:
        statistic_fn: maps the (resampled) data to a float; called as ``statistic_fn(*arrays)`` when ``data`` is
            a tuple of arrays, else ``statistic_fn(array)``.
        data: ``(N, ...)`` array, or a tuple of arrays sharing their first dimension ``N`` (resampled together).
        groups: ``(N,)`` group labels, optional.
        num_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in ``(0, 1)``.
        seed: seed of the resampling.
        pass_groups: also call ``statistic_fn(..., groups=ids)`` with the group ids of the resample, each draw of
            a group given its own id (so a group drawn twice is not merged into one); needed by within-group
            statistics such as :func:`pairwise_accuracy`. Requires ``groups``.

    Returns:
        ``{"estimate", "lower", "upper", "confidence", "num_resamples"}``, the estimate on the full data.

    >>> result = bootstrap_ci(lambda x: float(x.mean()), [0.0, 1.0, 0.0, 1.0], num_resamples=200, seed=0)
    >>> result["estimate"], 0.0 <= result["lower"] <= 0.5 <= result["upper"] <= 1.0
    (0.5, True)
    """
    arrays = tuple(_to_numpy(array) for array in (data if isinstance(data, tuple) else (data,)))
    if not arrays or arrays[0].ndim == 0 or arrays[0].shape[0] == 0:
        raise ValueError("`data` must hold at least one item.")
    num_items = arrays[0].shape[0]
    for array in arrays[1:]:
        if array.ndim == 0 or array.shape[0] != num_items:
            raise ValueError(f"`data` arrays must share their first dimension ({num_items}), got {array.shape}.")
    if not isinstance(num_resamples, int | np.integer) or num_resamples < 1:
        raise ValueError(f"`num_resamples` must be a positive integer, got {num_resamples!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    if pass_groups and groups is None:
        raise ValueError("`pass_groups=True` needs `groups`.")

    group_ids = np.arange(num_items) if groups is None else _group_ids(groups, num_items, "data")
    estimate = statistic_fn(*arrays, **({"groups": group_ids} if pass_groups else {}))
    order = np.argsort(group_ids, kind="stable")
    counts = np.bincount(group_ids)
    starts = np.cumsum(counts) - counts

    def resampled_statistic(drawn: np.ndarray) -> float:
        """The statistic on the items of the drawn groups, each group whole, the i-th draw given group id i."""
        if groups is None:  # the units are the items
            return float(statistic_fn(*(array[drawn] for array in arrays)))
        sizes = counts[drawn]
        run_start = np.repeat(np.cumsum(sizes) - sizes, sizes)
        # (sum sizes,) positions in `order`: each drawn group's start plus a 0..size-1 ramp.
        index = order[np.repeat(starts[drawn], sizes) + np.arange(run_start.shape[0]) - run_start]
        extra = {"groups": np.repeat(np.arange(drawn.shape[0]), sizes)} if pass_groups else {}
        return float(statistic_fn(*(array[index] for array in arrays), **extra))

    if counts.shape[0] == 1:  # scipy needs two units; one unit resamples to itself
        lower = upper = estimate
    else:
        lower, upper = scipy.stats.bootstrap(
            (np.arange(counts.shape[0]),),
            resampled_statistic,
            n_resamples=num_resamples,
            vectorized=False,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),  # `rng` from scipy 1.15 on; pyproject allows 1.11
        ).confidence_interval
    return {
        "estimate": float(estimate),
        "lower": float(lower),
        "upper": float(upper),
        "confidence": float(confidence),
        "num_resamples": int(num_resamples),
    }


def gsb_with_ci(
    judgements: ArrayLike,
    groups: ArrayLike | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """:func:`gsb` plus a percentile bootstrap CI of its net preference, over prompts if ``groups`` (eq. 16).

    Args:
        judgements: ``(N,)`` judgements, ``+1`` good, ``0`` same, ``-1`` bad.
        groups: ``(N,)`` prompt labels, optional; whole prompts are resampled.
        num_resamples: number of bootstrap resamples.
        confidence: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        The :func:`gsb` dict plus ``"net_lower"``, ``"net_upper"`` and ``"confidence"``.

    >>> result = gsb_with_ci([1] * 11 + [0] * 6 + [-1] * 3, num_resamples=200)
    >>> round(result["net"], 6), result["net_lower"] < 0.4 < result["net_upper"]  # (11 - 3) / 20
    (0.4, True)
    """
    result: dict[str, float | int] = dict(gsb(judgements))
    interval = bootstrap_ci(lambda sample: gsb(sample)["net"], judgements, groups, num_resamples, confidence, seed)
    result.update({"net_lower": interval["lower"], "net_upper": interval["upper"], "confidence": confidence})
    return result


# ---------------------------------------------------------------- one-call evaluation


def _undefined_as_none(metric, *args) -> dict[str, Any]:
    """Correlations of a constant predictor are undefined: report them as None instead of failing the report."""
    try:
        return metric(*args)
    except ValueError as error:
        if "constant" not in str(error):
            raise
        return {"spearman": None, "kendall_tau_b": None, "pearson": None, "undefined": str(error)}


def _pair_arrays(
    pairs: tuple[ArrayLike, ArrayLike, ArrayLike], name: str, num_items: int, num_dimensions: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(index_a, index_b, outcome)``: ``(P,)`` item indices and an outcome ``(P,)``, or ``(P, D)`` when
    ``num_dimensions`` is given."""
    if not isinstance(pairs, tuple) or len(pairs) != 3:
        raise ValueError(f"`{name}` must be a tuple (index_a, index_b, outcome).")
    per_dimension = num_dimensions is not None and _to_numpy(pairs[2]).ndim == 2
    outcome = _float_array(pairs[2], name, 2 if per_dimension else 1)
    if per_dimension and outcome.shape[1] != num_dimensions:
        raise ValueError(f"`{name}` outcome must have shape (P,) or (P, {num_dimensions}), got {outcome.shape}.")
    indices = tuple(_to_numpy(index) for index in pairs[:2])
    for index, side in zip(indices, ("index_a", "index_b"), strict=True):
        if index.ndim != 1 or index.dtype.kind not in "iu" or index.shape[0] != outcome.shape[0]:
            raise ValueError(f"`{name} {side}` must be 1-D integer indices, one per outcome.")
        if index.min() < 0 or index.max() >= num_items:
            raise ValueError(f"`{name} {side}` must index the {num_items} items.")
    return indices[0], indices[1], outcome


def evaluate_scores(
    probs: ArrayLike,
    levels: ArrayLike,
    dimension_names: Sequence[str],
    groups: ArrayLike | None = None,
    *,
    human_scores: ArrayLike | None = None,
    histograms: ArrayLike | None = None,
    pairs: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    overall_pairs: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    weights: ArrayLike | None = None,
    num_bins: int = 15,
) -> dict[str, dict[str, Any]]:
    """Every metric of docs/method.md, 'Evaluation', that the given inputs allow, per rubric dimension and overall.

    Per dimension ``d`` (predicted score: the expected score ``mu_d``, eq. 2):

    - always: ``"mean_expected_score"``;
    - with ``human_scores``: ``"correlations"`` (:func:`correlations`, per group if ``groups``), ``"ece"``
      (:func:`expected_calibration_error`, the label being the level nearest the human score, the lower one at a
      midpoint) and, with ``groups``, ``"pairwise_accuracy"`` (:func:`pairwise_accuracy`);
    - with ``histograms``: ``"nll"``, ``"brier"`` (averaged over votes), ``"emd"``, ``"js_divergence"``;
      without them but with every human score of ``d`` on a level (within 1e-6): ``"nll"`` and ``"brier"``
      against that level;
    - with ``pairs`` whose outcome is ``(P, D)``: ``"pair_accuracy"`` (:func:`pairwise_accuracy_from_pairs`)
      and ``"pairwise_ece"`` on ``P(a > b)`` of eq. 4.

    ``"overall"`` uses ``R_overall = sum_d w_d r_d`` (eq. 3, normalised expected scores) against the
    ``w``-weighted mean human score (the plain mean for the default equal weights): ``"mean_reward"``, and
    ``"correlations"`` / ``"pairwise_accuracy"`` as above; with ``overall_pairs`` (or ``pairs`` whose outcome is
    ``(P,)``: one overall preference per pair), ``"pair_accuracy"``. ``tie_aware_accuracy`` is left out since its
    ``epsilon`` must come from a dev split. Correlations with a constant predictor are reported as None (with the
    reason); any other metric that is undefined on the inputs (e.g. no untied pair) raises ``ValueError``.

    Args:
        probs: ``(N, D, K)`` predicted distributions.
        levels: ``(K,)`` score levels.
        dimension_names: ``D`` names, e.g. ``("alignment", "realism", "aesthetics", "physics")``.
        groups: ``(N,)`` prompt labels, optional.
        human_scores: ``(N, D)`` human scores (e.g. the annotators' mean), optional.
        histograms: ``(N, D, K)`` annotator histograms, optional.
        pairs: ``(index_a, index_b, outcome)``: ``(P,)`` item indices into ``N`` and an outcome ``(P, D)`` per
            dimension or ``(P,)`` overall, ``+1`` a preferred, ``-1`` b, ``0`` tie; optional.
        overall_pairs: ``(index_a, index_b, outcome)`` with an overall outcome ``(P',)``, for a panel that has
            per-dimension ``pairs`` too; optional, not with a ``(P,)`` outcome in ``pairs``.
        weights: ``(D,)`` non-negative dimension weights, normalised to sum 1; default equal.
        num_bins: equal-mass bins of the ECEs.

    Returns:
        ``{name: {...} for each dimension, "overall": {...}}``.

    >>> probs = [[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]]  # N=3, D=1, K=3: mu = 2, 3, 1
    >>> report = evaluate_scores(probs, [1.0, 2.0, 3.0], ["aesthetics"], [0, 0, 0], human_scores=[[2], [3], [1]])
    >>> report["aesthetics"]["pairwise_accuracy"], report["aesthetics"]["nll"], report["overall"]["mean_reward"]
    ({'accuracy': 1.0, 'num_pairs': 3}, 0.0, 0.5)
    >>> report["aesthetics"]["ece"]["ece"]  # always right with full confidence
    0.0
    """
    levels_tensor = _levels_tensor(levels)
    probs_tensor = _probs_tensor(probs, "probs", num_levels=levels_tensor.shape[0], ndim=3)
    num_items, num_dimensions, num_levels = probs_tensor.shape
    names = list(dimension_names)
    if len(names) != num_dimensions or len(set(names)) != num_dimensions or "overall" in names:
        raise ValueError(
            f"`dimension_names` must be {num_dimensions} distinct names other than 'overall', got {names}."
        )
    if weights is None:
        weight = np.full(num_dimensions, 1.0 / num_dimensions)
    else:
        weight = _float_array(weights, "weights", 1)
        if weight.shape[0] != num_dimensions or (weight < 0).any() or weight.sum() <= 0:
            raise ValueError(f"`weights` must be {num_dimensions} non-negative values with a positive sum.")
        weight = weight / weight.sum()
    if groups is not None:
        _group_ids(groups, num_items, "probs")  # fail before any metric is computed
    human = None
    if human_scores is not None:
        human = _float_array(human_scores, "human_scores", 2)
        if human.shape != (num_items, num_dimensions):
            raise ValueError(f"`human_scores` must have shape {(num_items, num_dimensions)}, got {human.shape}.")
    histogram_tensor = None
    if histograms is not None:
        histogram_tensor = _histogram_tensor(histograms, "histograms", (num_items, num_dimensions, num_levels))
    if pairs is not None:
        pairs = _pair_arrays(pairs, "pairs", num_items, num_dimensions)
        if pairs[2].ndim == 1:  # one overall preference per pair
            if overall_pairs is not None:
                raise ValueError("`pairs` has an overall (P,) outcome: pass it as `overall_pairs` or drop those.")
            pairs, overall_pairs = None, pairs
    elif overall_pairs is not None:
        overall_pairs = _pair_arrays(overall_pairs, "overall_pairs", num_items, None)

    expected = expected_score(probs_tensor, levels_tensor).numpy()  # (N, D)
    report: dict[str, dict[str, Any]] = {}
    for dimension, name in enumerate(names):
        mu = expected[:, dimension]
        entry: dict[str, Any] = {"mean_expected_score": float(mu.mean())}
        dimension_probs = probs_tensor[:, dimension]
        if human is not None:
            entry["correlations"] = _undefined_as_none(correlations, mu, human[:, dimension], groups)
            if groups is not None:
                entry["pairwise_accuracy"] = pairwise_accuracy(mu, human[:, dimension], groups)
            distance = np.abs(human[:, dimension, None] - levels_tensor.numpy())  # (N, K)
            label_index = distance.argmin(axis=1)  # the nearest level
            entry["ece"] = expected_calibration_error(dimension_probs, label_index, num_bins)
            if histogram_tensor is None and (distance.min(axis=1) <= _ON_GRID_ATOL).all():
                entry["nll"] = mean_nll(dimension_probs, label_index)
                entry["brier"] = mean_brier(dimension_probs, label_index)
        if histogram_tensor is not None:
            votes = histogram_tensor[:, dimension]
            entry["nll"] = mean_nll(dimension_probs, votes)
            entry["brier"] = mean_brier(dimension_probs, votes)
            entry["emd"] = mean_emd(dimension_probs, votes, levels_tensor)
            entry["js_divergence"] = mean_js_divergence(dimension_probs, votes)
        if pairs is not None:
            index_a, index_b, outcome = pairs[0], pairs[1], pairs[2][:, dimension]
            entry["pair_accuracy"] = pairwise_accuracy_from_pairs(mu[index_a], mu[index_b], outcome)
            p_a_beats_b = preference_probability(dimension_probs[index_a], dimension_probs[index_b]).numpy()
            entry["pairwise_ece"] = pairwise_expected_calibration_error(p_a_beats_b, outcome, num_bins)
        report[name] = entry

    reward = normalized_reward(torch.from_numpy(expected), levels_tensor).numpy() @ weight  # (N,) eq. 3
    overall: dict[str, Any] = {"mean_reward": float(reward.mean())}
    if human is not None:
        human_overall = human @ weight
        overall["correlations"] = _undefined_as_none(correlations, reward, human_overall, groups)
        if groups is not None:
            overall["pairwise_accuracy"] = pairwise_accuracy(reward, human_overall, groups)
    if overall_pairs is not None:
        index_a, index_b, outcome = overall_pairs
        overall["pair_accuracy"] = pairwise_accuracy_from_pairs(reward[index_a], reward[index_b], outcome)
    report["overall"] = overall
    return report
