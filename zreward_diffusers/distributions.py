"""Differentiable statistics, soft targets and calibration metrics for score distributions.

A score distribution is a probability vector ``probs`` of shape ``(..., K)`` over ``K`` ordered score levels
``levels`` (a 1-D tensor ``v_1 < ... < v_K``, by default ``1.0, 1.5, ..., 5.0``). Every function accepts any
leading batch shape, keeps autograd, and computes in float32 or float64: float16/bfloat16 (and integer) inputs
are upcast to float32, float64 anywhere in the inputs gives float64.

The equation numbers refer to ``docs/method.md``: statistics (2)-(3) and the pairwise preference (4) of its section
'Score distributions', the soft targets (5) of 'Soft targets' (after DeQA-Score, arXiv 2501.11561), the calibration
metric (18) of 'Evaluation'. The expected-score readout follows Q-Align (arXiv 2312.17090).

Validation is kept apart from computation: the functions only check shapes (metadata, free on any device), while
:func:`check_levels`, :func:`check_distribution` and :func:`check_label_index` check values (they synchronise
with the device, so hot paths may skip them). The soft-target builders always validate their inputs, because
they run on labels, not inside the reward's forward pass.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "brier_score",
    "check_distribution",
    "conditional_value_at_risk",
    "check_label_index",
    "check_levels",
    "earth_movers_distance",
    "entropy",
    "expected_score",
    "gaussian_soft_target",
    "histogram_soft_target",
    "kl_divergence",
    "lower_quantile",
    "negative_log_likelihood",
    "normalized_reward",
    "preference_probability",
    "score_std",
    "soft_minimum",
    "tail_probability",
]

Reduction = Literal["none", "mean", "sum"]

# DeQA-Score switches to two-bin labels when the label std is below 0.2 on its unit-spaced 1-5 grid
# (`thre_std` in `build_soft_labels/config.json`); we keep that ratio to the grid spacing.
_TINY_SIGMA_RATIO = 0.2


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted dtype of ``tensors``, raised to float32 when it is not float32/float64."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _check_last_dim(probs: torch.Tensor, levels: torch.Tensor, name: str) -> None:
    if levels.ndim != 1:
        raise ValueError(f"`levels` must be a 1-D tensor of score levels, got shape {tuple(levels.shape)}.")
    if probs.ndim == 0 or probs.shape[-1] != levels.shape[0]:
        raise ValueError(
            f"`{name}` must have its last dimension equal to len(levels)={levels.shape[0]}, "
            f"got shape {tuple(probs.shape)}."
        )


def _check_same_num_levels(probs_a: torch.Tensor, probs_b: torch.Tensor, name_b: str) -> None:
    if probs_a.ndim == 0 or probs_b.ndim == 0 or probs_a.shape[-1] != probs_b.shape[-1]:
        raise ValueError(
            f"`{name_b}` must have the same number of levels (last dimension) as the first distribution, "
            f"got shapes {tuple(probs_a.shape)} and {tuple(probs_b.shape)}."
        )


def check_levels(levels: torch.Tensor, name: str = "levels") -> None:
    """Raise ``ValueError`` unless ``levels`` is a finite, 1-D, strictly increasing tensor of at least 2 values.

    >>> check_levels(torch.tensor([1.0, 1.5, 2.0]))
    >>> check_levels(torch.tensor([1.0, 1.0]))
    Traceback (most recent call last):
    ...
    ValueError: `levels` must be strictly increasing, got [1.0, 1.0].
    """
    if not isinstance(levels, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(levels).__name__}.")
    if levels.ndim != 1 or levels.shape[0] < 2:
        raise ValueError(f"`{name}` must be a 1-D tensor of at least 2 values, got shape {tuple(levels.shape)}.")
    if not bool(torch.isfinite(levels).all()):
        raise ValueError(f"`{name}` must be finite, got {levels.tolist()}.")
    if not bool((levels[1:] > levels[:-1]).all()):
        raise ValueError(f"`{name}` must be strictly increasing, got {levels.tolist()}.")


def check_distribution(
    probs: torch.Tensor,
    levels: torch.Tensor | None = None,
    name: str = "probs",
    *,
    sum_atol: float | None = None,
) -> None:
    """Raise ``ValueError`` (naming ``name``) unless ``probs`` is a valid batch of score distributions.

    Checks: ``probs`` is a tensor with at least one dimension; if ``levels`` is given, ``levels`` passes
    :func:`check_levels` and ``probs.shape[-1] == len(levels)``; all entries are finite and non-negative; if
    ``sum_atol`` is given, every row sums to 1 within ``sum_atol``.

    Args:
        probs: ``(..., K)`` probabilities.
        levels: ``(K,)`` score levels, optional.
        name: argument name used in the error message.
        sum_atol: tolerance on ``|sum(probs, -1) - 1|``; ``None`` skips the check.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> check_distribution(torch.tensor([0.2, 0.3, 0.5]), levels, sum_atol=1e-6)
    >>> check_distribution(torch.tensor([0.5, 0.5]), levels, name="target")
    Traceback (most recent call last):
    ...
    ValueError: `target` must have its last dimension equal to len(levels)=3, got shape (2,).
    """
    if not isinstance(probs, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(probs).__name__}.")
    if probs.ndim == 0:
        raise ValueError(f"`{name}` must have a last dimension of score levels, got a 0-d tensor.")
    if levels is not None:
        check_levels(levels)
        _check_last_dim(probs, levels, name)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"`{name}` must be finite.")
    if bool((probs < 0).any()):
        raise ValueError(f"`{name}` must be non-negative, got a minimum of {float(probs.min())}.")
    if sum_atol is not None:
        deviation = float((probs.sum(dim=-1, dtype=torch.float64) - 1.0).abs().max())
        if deviation > sum_atol:
            raise ValueError(f"`{name}` rows must sum to 1 within {sum_atol}, got a deviation of {deviation}.")


def check_label_index(label_index: torch.Tensor, num_levels: int, name: str = "label_index") -> None:
    """Raise ``ValueError`` unless ``label_index`` is an integer tensor with values in ``[0, num_levels)``.

    >>> check_label_index(torch.tensor([0, 2]), num_levels=3)
    >>> check_label_index(torch.tensor([3]), num_levels=3)
    Traceback (most recent call last):
    ...
    ValueError: `label_index` values must lie in [0, 3), got min 3 and max 3.
    """
    if not isinstance(label_index, torch.Tensor) or label_index.is_floating_point() or label_index.is_complex():
        raise ValueError(f"`{name}` must be an integer torch.Tensor.")
    if label_index.numel() > 0:
        low, high = int(label_index.min()), int(label_index.max())
        if low < 0 or high >= num_levels:
            raise ValueError(f"`{name}` values must lie in [0, {num_levels}), got min {low} and max {high}.")


def expected_score(probs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Expected score ``mu = sum_k p_k v_k`` (docs/method.md eq. 2; the Q-Align readout, arXiv 2312.17090).

    Args:
        probs: ``(..., K)`` probabilities.
        levels: ``(K,)`` score levels.

    Returns:
        ``(...)`` expected scores, in the units of ``levels``.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> round(float(expected_score(torch.tensor([0.2, 0.3, 0.5]), levels)), 6)
    2.3
    """
    _check_last_dim(probs, levels, "probs")
    dtype = _compute_dtype(probs, levels)
    return (probs.to(dtype) * levels.to(device=probs.device, dtype=dtype)).sum(dim=-1)


def score_std(probs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Standard deviation ``sigma = sqrt(sum_k p_k (v_k - mu)^2)`` of the score (docs/method.md eq. 2).

    The variance is computed in the centred form (non-negative by construction) and clamped at 0. The square
    root is made backward-safe without changing any value: where the variance is 0 (a one-hot distribution) the
    output is exactly 0 and the gradient is set to 0 (a subgradient; the true derivative is unbounded there),
    elsewhere it is exactly ``sqrt(var)`` with its usual gradient. No epsilon is added.

    Args:
        probs: ``(..., K)`` probabilities.
        levels: ``(K,)`` score levels.

    Returns:
        ``(...)`` standard deviations, in the units of ``levels``.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> round(float(score_std(torch.tensor([0.5, 0.0, 0.5]), levels)), 6)
    1.0
    """
    _check_last_dim(probs, levels, "probs")
    dtype = _compute_dtype(probs, levels)
    probs = probs.to(dtype)
    levels = levels.to(device=probs.device, dtype=dtype)
    mean = (probs * levels).sum(dim=-1, keepdim=True)
    variance = (probs * (levels - mean).square()).sum(dim=-1)
    positive = variance > 0
    # Double `where`: sqrt only ever sees positive inputs, so its backward never produces inf/nan at 0.
    safe_variance = torch.where(positive, variance, torch.ones_like(variance))
    return torch.where(positive, safe_variance.sqrt(), torch.zeros_like(variance))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H = -sum_k p_k log p_k`` in nats, with ``0 log 0 = 0`` (docs/method.md eq. 2).

    Entries with ``p_k = 0`` contribute 0 to the value and 0 to the gradient (the true derivative is
    ``+inf`` there), so the gradient is finite everywhere.

    Args:
        probs: ``(..., K)`` probabilities.

    Returns:
        ``(...)`` entropies.

    >>> round(float(entropy(torch.tensor([0.5, 0.5, 0.0]))), 6)  # log 2
    0.693147
    """
    dtype = _compute_dtype(probs)
    probs = probs.to(dtype)
    positive = probs > 0
    safe_probs = torch.where(positive, probs, torch.ones_like(probs))
    return -torch.where(positive, probs * safe_probs.log(), torch.zeros_like(probs)).sum(dim=-1)


def normalized_reward(expected: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Expected score rescaled to ``[0, 1]``: ``(mu - v_1) / (v_K - v_1)`` (docs/method.md eq. 3).

    Args:
        expected: ``(...)`` expected scores, e.g. from :func:`expected_score`.
        levels: ``(K,)`` score levels.

    Returns:
        ``(...)`` normalised rewards.

    >>> levels = torch.linspace(1.0, 5.0, 9)
    >>> float(normalized_reward(torch.tensor(4.0), levels))
    0.75
    """
    if levels.ndim != 1:
        raise ValueError(f"`levels` must be a 1-D tensor of score levels, got shape {tuple(levels.shape)}.")
    dtype = _compute_dtype(expected, levels)
    levels = levels.to(device=expected.device, dtype=dtype)
    return (expected.to(dtype) - levels[0]) / (levels[-1] - levels[0])


def preference_probability(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """Probability that a draw from ``a`` beats an independent draw from ``b`` (ties count 1/2; docs/method.md eq. 4).

    ``P(a > b) = sum_{k>l} p_a,k p_b,l + 1/2 sum_k p_a,k p_b,k = sum_k p_a,k (F_b(k) - p_b,k / 2)``, with ``F_b``
    the cumulative distribution of ``b``; this is O(K). Only the order of the levels matters, not their values.
    For normalised inputs ``P(a > b) + P(b > a) = 1`` and ``P(a > a) = 1/2``.

    Args:
        probs_a: ``(..., K)`` probabilities.
        probs_b: ``(..., K)`` probabilities, broadcastable against ``probs_a``.

    Returns:
        ``(...)`` probabilities in ``[0, 1]``.

    >>> a = torch.tensor([0.0, 0.5, 0.5])
    >>> b = torch.tensor([0.5, 0.5, 0.0])
    >>> round(float(preference_probability(a, b)), 6)  # 0.5*0.5 + 0.5*1.0 + 0.5*(0.5*0.5)
    0.875
    """
    _check_same_num_levels(probs_a, probs_b, "probs_b")
    dtype = _compute_dtype(probs_a, probs_b)
    probs_a = probs_a.to(dtype)
    probs_b = probs_b.to(device=probs_a.device, dtype=dtype)
    below_or_tied = probs_b.cumsum(dim=-1) - 0.5 * probs_b
    return (probs_a * below_or_tied).sum(dim=-1)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"`alpha` must be a number in (0, 1], got {alpha!r}.")
    return float(alpha)


def lower_quantile(probs: torch.Tensor, levels: torch.Tensor, alpha: float) -> torch.Tensor:
    """The ``alpha``-quantile of the score, differentiable in ``probs`` (a lower quantile for a small ``alpha``).

    The discrete quantile ``min{v_k : F_k >= alpha}`` is piecewise constant in ``probs`` (no gradient), so the CDF
    is read as linear between levels: level 1's mass sits at ``v_1`` and level ``k``'s mass is spread evenly over
    ``(v_{k-1}, v_k]``. Then ``Q(alpha) = v_1`` when ``alpha <= F_1``, else
    ``v_{k-1} + (alpha - F_{k-1}) / p_k * (v_k - v_{k-1})`` for the first ``k`` with ``F_k >= alpha``: the
    inverse of the piecewise-linear CDF through ``(v_k, F_k)``. It lies within one level of the discrete quantile.

    Args:
        probs: ``(..., K)`` probabilities.
        levels: ``(K,)`` score levels.
        alpha: the quantile level, in ``(0, 1]``.

    Returns:
        ``(...)`` quantiles, in the units of ``levels``.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> float(lower_quantile(torch.tensor([0.2, 0.4, 0.4]), levels, 0.4))  # halfway through level 2's mass
    1.5
    >>> float(lower_quantile(torch.tensor([0.2, 0.4, 0.4]), levels, 0.1))
    1.0
    """
    alpha = _check_alpha(alpha)
    _check_last_dim(probs, levels, "probs")
    dtype = _compute_dtype(probs, levels)
    probs = probs.to(dtype)
    levels = levels.to(device=probs.device, dtype=dtype)
    cdf = probs.cumsum(dim=-1)
    target = torch.full((*cdf.shape[:-1], 1), alpha, dtype=dtype, device=cdf.device)
    # the first level whose CDF reaches alpha (the last one when rounding leaves the total just below alpha)
    index = torch.searchsorted(cdf.detach().contiguous(), target).clamp_max(levels.shape[0] - 1)
    below = index.clamp_min(1) - 1
    cdf_below = torch.where(index > 0, cdf.gather(-1, below), torch.zeros_like(target))
    mass = probs.gather(-1, index).clamp_min(torch.finfo(dtype).tiny)
    fraction = ((alpha - cdf_below) / mass).clamp(0.0, 1.0)
    low, high = levels[below], levels[index]
    quantile = torch.where(index > 0, low + fraction * (high - low), levels[0].expand_as(low))
    return quantile.squeeze(-1)


def conditional_value_at_risk(probs: torch.Tensor, levels: torch.Tensor, alpha: float) -> torch.Tensor:
    """``CVaR_alpha``: the mean score of the lowest ``alpha`` of the probability mass (Rockafellar and Uryasev,
    2000), differentiable in ``probs``.

    ``CVaR_alpha = (1 / alpha) sum_k v_k min(p_k, max(0, alpha - F_{k-1}))``: the levels are taken from the bottom
    until ``alpha`` of the mass is used, the last one partly. ``alpha = 1`` gives the expected score; a small
    ``alpha`` the mean of the worst outcomes the model believes possible, which a generator cannot raise by moving
    mass the reward is unsure about upwards only.

    Args:
        probs: ``(..., K)`` probabilities.
        levels: ``(K,)`` score levels.
        alpha: the share of the mass, in ``(0, 1]``.

    Returns:
        ``(...)`` values, in the units of ``levels``.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> round(float(conditional_value_at_risk(torch.tensor([0.2, 0.4, 0.4]), levels, 0.5)), 6)  # (0.2*1 + 0.3*2) / 0.5
    1.6
    """
    alpha = _check_alpha(alpha)
    _check_last_dim(probs, levels, "probs")
    dtype = _compute_dtype(probs, levels)
    probs = probs.to(dtype)
    levels = levels.to(device=probs.device, dtype=dtype)
    cdf_below = probs.cumsum(dim=-1) - probs
    used = torch.minimum(probs, (alpha - cdf_below).clamp_min(0.0))
    return (used * levels).sum(dim=-1) / alpha


def tail_probability(probs: torch.Tensor, levels: torch.Tensor, threshold: float) -> torch.Tensor:
    """``P(score >= threshold)``: the mass on the levels at or above ``threshold``, differentiable in ``probs``.

    Args:
        probs: ``(..., K)`` probabilities.
        levels: ``(K,)`` score levels.
        threshold: a score strictly above ``v_1`` and at most ``v_K`` (otherwise the probability is 1 or 0 for
            every distribution).

    >>> round(float(tail_probability(torch.tensor([0.2, 0.4, 0.4]), torch.tensor([1.0, 2.0, 3.0]), 2.0)), 6)
    0.8
    """
    _check_last_dim(probs, levels, "probs")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            float(levels[0]) < threshold <= float(levels[-1])):
        raise ValueError(f"`threshold` must be a score in ({float(levels[0])}, {float(levels[-1])}], got "
                         f"{threshold!r}.")
    dtype = _compute_dtype(probs, levels)
    at_or_above = (levels >= threshold).to(device=probs.device, dtype=dtype)
    return (probs.to(dtype) * at_or_above).sum(dim=-1)


def soft_minimum(values: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """The weighted soft minimum over the last dimension: ``-tau log sum_d w_d exp(-x_d / tau)``.

    ``weights`` (non-negative, normalised here to sum 1) keep it between the minimum (``tau -> 0``) and the weighted
    mean (``tau -> inf``) of the values with positive weight; it is a smooth lower bound of that weighted mean.

    >>> values, weights = torch.tensor([0.2, 0.8]), torch.tensor([0.5, 0.5])
    >>> round(float(soft_minimum(values, weights, 0.01)), 3), round(float(soft_minimum(values, weights, 100.0)), 3)
    (0.207, 0.5)
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a positive number, got {temperature!r}.")
    if values.shape[-1] != weights.shape[-1]:
        raise ValueError(f"`weights` must have one entry per value, got {tuple(weights.shape)} for "
                         f"{tuple(values.shape)}.")
    dtype = _compute_dtype(values, weights)
    weights = weights.to(device=values.device, dtype=dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    log_weights = torch.where(weights > 0, weights.log(), torch.full_like(weights, -torch.inf))
    return -temperature * torch.logsumexp(log_weights - values.to(dtype) / temperature, dim=-1)


def _standard_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``Phi(upper) - Phi(lower)`` computed on the tail side to avoid cancellation when both are large."""
    ndtr = torch.special.ndtr
    return torch.where(lower > 0, ndtr(-lower) - ndtr(-upper), ndtr(upper) - ndtr(lower))


def _discretised_gaussian(y: torch.Tensor, levels: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Unnormalised docs/method.md eq. 5: Gaussian mass in ``[e_k^-, e_k^+]``, midpoint edges, open outer bins."""
    midpoints = 0.5 * (levels[1:] + levels[:-1])
    infinity = levels.new_full((1,), float("inf"))
    lower_edges = torch.cat([-infinity, midpoints])
    upper_edges = torch.cat([midpoints, infinity])
    y, sigma = y.unsqueeze(-1), sigma.unsqueeze(-1)
    return _standard_normal_mass((lower_edges - y) / sigma, (upper_edges - y) / sigma)


def _two_bin_interpolation(y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Split the mass between the two levels around ``y`` so the mean is ``y`` (DeQA's ``get_binary_probs``).

    A ``y`` on a level gives a one-hot distribution (also at the ends of the grid).
    """
    num_levels = levels.shape[0]
    lower_index = (torch.searchsorted(levels, y.contiguous(), right=True) - 1).clamp(0, num_levels - 2)
    lower, upper = levels[lower_index], levels[lower_index + 1]
    upper_weight = ((y - lower) / (upper - lower)).unsqueeze(-1)
    lower_one_hot = torch.nn.functional.one_hot(lower_index, num_levels).to(levels.dtype)
    upper_one_hot = torch.nn.functional.one_hot(lower_index + 1, num_levels).to(levels.dtype)
    return (1 - upper_weight) * lower_one_hot + upper_weight * upper_one_hot


def _mean_preserving_affine_correction(
    gaussian: torch.Tensor, y: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeQA-Score's ``adjust_gaussian_bar`` made exact under clipping; returns ``(q, valid)``.

    On a support ``S`` (initially all levels) solve ``alpha G_S + m beta = 1`` and ``alpha M_S + beta V_S = y``
    with ``G_S = sum_S g``, ``M_S = sum_S g v``, ``m = |S|``, ``V_S = sum_S v``, set ``q = alpha g + beta`` on
    ``S`` and 0 elsewhere, drop the levels where ``q < 0`` from ``S`` and solve again. The support only shrinks,
    so ``K`` rounds reach a fixed point (or an empty support); one more round confirms it. At the fixed point
    ``q >= 0``, ``sum q = 1`` and ``sum q v = y`` hold exactly up to rounding, with ``q`` affine in ``g`` on its
    support. When the 2x2 system is singular (``g`` restricted to ``S`` has the uniform mean of ``S``, e.g. ``y`` at
    the centre of a symmetric grid) ``alpha = 1 / G_S``, ``beta = 0``. ``valid`` is False where the result is not
    a distribution with mean ``y`` (no affine solution with ``alpha > 0``); the caller falls back to two bins.
    """
    num_levels = levels.shape[0]
    scale = levels.abs().max().clamp(min=1)
    support = torch.ones_like(gaussian, dtype=torch.bool)
    for _ in range(num_levels + 1):
        weights = support.to(gaussian.dtype)
        gaussian_mass = (weights * gaussian).sum(dim=-1)
        gaussian_moment = (weights * gaussian * levels).sum(dim=-1)
        support_size = weights.sum(dim=-1)
        support_level_sum = (weights * levels).sum(dim=-1)
        determinant = gaussian_mass * support_level_sum - support_size * gaussian_moment
        singular = determinant.abs() <= 1e-12 * scale * support_size.clamp(min=1)
        safe_determinant = torch.where(singular, torch.ones_like(determinant), determinant)
        safe_mass = torch.where(gaussian_mass > 0, gaussian_mass, torch.ones_like(gaussian_mass))
        alpha = torch.where(singular, 1 / safe_mass, (support_level_sum - support_size * y) / safe_determinant)
        # beta from the sum equation keeps sum(q) = 1 exact however ill-conditioned the system is.
        beta = (1 - alpha * gaussian_mass) / support_size.clamp(min=1)
        corrected = torch.where(support, alpha.unsqueeze(-1) * gaussian + beta.unsqueeze(-1), 0.0)
        support = support & (corrected >= 0)

    rounding = 1e-12
    valid = (
        (alpha > 0)
        & torch.isfinite(corrected).all(dim=-1)
        & (corrected >= -rounding).all(dim=-1)
        & (support.sum(dim=-1) > 0)
    )
    corrected = corrected.clamp(min=0)
    total = corrected.sum(dim=-1, keepdim=True)
    corrected = corrected / torch.where(total > 0, total, torch.ones_like(total))
    mean_error = ((corrected * levels).sum(dim=-1) - y).abs()
    valid = valid & (mean_error <= 1e-9 * scale)
    return corrected, valid


def gaussian_soft_target(
    y: torch.Tensor | float,
    levels: torch.Tensor,
    sigma: torch.Tensor | float = 0.5,
    *,
    min_sigma: float | None = None,
) -> torch.Tensor:
    """Soft target for a scalar label: discretised Gaussian + DeQA-Score's mean-preserving correction (eq. 5).

    1. ``g_k = Phi((e_k^+ - y)/sigma) - Phi((e_k^- - y)/sigma)`` with bin edges at the midpoints between levels
       and the outer bins open to ``-inf`` / ``+inf`` (works for non-uniform grids).
    2. DeQA-Score's affine correction (arXiv 2501.11561, ``adjust_gaussian_bar`` in
       ``build_soft_labels/gen_soft_label.py``): ``q_k = max(alpha g_k + beta, 0)`` with ``alpha, beta`` solving
       ``sum q = 1`` and ``sum q v = y``. DeQA clips once and tolerates the drift of the mean; here, when clipping
       happens, the two equations are solved again on the remaining support until no level is clipped, so the
       mean is ``y`` to rounding (about 1e-15 in float64).
    3. Fall back to the two-bin linear interpolation between the levels around ``y`` (DeQA's ``get_binary_probs``)
       when ``sigma < min_sigma``, when ``y`` is at an end of the grid (a one-hot target there), or where step 2
       has no solution with ``alpha > 0``. On a level, the two-bin target is one-hot.

    The target is computed in float64 and returned in float64 if ``levels`` or a tensor ``y`` or ``sigma`` is
    float64, else float32 (Python floats do not decide the dtype). It is built from torch operations, so gradients
    flow to ``y``, but it is meant as a label.

    Args:
        y: ``(...)`` labels in ``[v_1, v_K]`` (values outside by at most ``1e-6 * max(1, |v|)`` are clamped).
        levels: ``(K,)`` strictly increasing score levels.
        sigma: Gaussian std in the units of ``levels``, a positive float or a tensor broadcastable to ``y``.
        min_sigma: below this ``sigma`` use the two-bin interpolation; default ``0.2 *`` the smallest level
            spacing, DeQA-Score's threshold (0.2 on its unit-spaced grid).

    Returns:
        ``(..., K)`` non-negative rows summing to 1 with mean ``y``.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> [round(q, 4) for q in gaussian_soft_target(2.0, levels).tolist()]  # Phi(-1), Phi(1) - Phi(-1), Phi(-1)
    [0.1587, 0.6827, 0.1587]
    >>> two_bin = gaussian_soft_target(torch.tensor(3.3), torch.linspace(1.0, 5.0, 9), sigma=1e-3)
    >>> [round(q, 4) for q in two_bin.tolist()]  # 3.3 = 0.4 * 3.0 + 0.6 * 3.5
    [0.0, 0.0, 0.0, 0.0, 0.4, 0.6, 0.0, 0.0, 0.0]
    """
    check_levels(levels)
    result_dtype = _compute_dtype(levels, *(value for value in (y, sigma) if isinstance(value, torch.Tensor)))
    device = y.device if isinstance(y, torch.Tensor) else levels.device
    # Python floats are doubles: convert them straight to float64 so that no float32 rounding creeps in.
    y = torch.as_tensor(y, dtype=torch.float64, device=device)
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    levels = levels.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("`y` must be finite.")
    tolerance = 1e-6 * float(levels.abs().max().clamp(min=1))
    if bool((y < levels[0] - tolerance).any()) or bool((y > levels[-1] + tolerance).any()):
        raise ValueError(
            f"`y` must lie in [v_1, v_K] = [{float(levels[0])}, {float(levels[-1])}], "
            f"got min {float(y.min())} and max {float(y.max())}."
        )
    if not bool((sigma > 0).all()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError("`sigma` must be positive and finite.")
    y = y.clamp(float(levels[0]), float(levels[-1]))
    sigma = torch.broadcast_to(sigma, torch.broadcast_shapes(sigma.shape, y.shape))
    y = torch.broadcast_to(y, sigma.shape)
    if min_sigma is None:
        min_sigma = _TINY_SIGMA_RATIO * float((levels[1:] - levels[:-1]).min())

    gaussian = _discretised_gaussian(y, levels, sigma)
    gaussian = gaussian / gaussian.sum(dim=-1, keepdim=True)
    corrected, valid = _mean_preserving_affine_correction(gaussian, y, levels)
    two_bin = _two_bin_interpolation(y, levels)
    use_two_bin = (sigma < min_sigma) | (y <= levels[0]) | (y >= levels[-1]) | ~valid
    return torch.where(use_two_bin.unsqueeze(-1), two_bin, corrected).to(result_dtype)


def histogram_soft_target(
    histogram: torch.Tensor,
    levels: torch.Tensor,
    epsilon: float = 0.1,
    sigma: torch.Tensor | float = 0.5,
) -> torch.Tensor:
    """Annotator-vote soft target ``q = (1 - epsilon) h + epsilon g_sigma(y_bar)`` (docs/method.md, 'Soft targets').

    ``h`` is the histogram normalised per row, ``y_bar = sum_k h_k v_k`` its mean and ``g_sigma`` the corrected
    Gaussian of :func:`gaussian_soft_target`; since ``g_sigma(y_bar)`` has mean ``y_bar``, so has ``q``.

    Args:
        histogram: ``(..., K)`` non-negative vote counts or frequencies; every row must have a positive sum.
        levels: ``(K,)`` strictly increasing score levels.
        epsilon: smoothing weight in ``[0, 1]``.
        sigma: Gaussian std, see :func:`gaussian_soft_target`.

    Returns:
        ``(..., K)`` non-negative rows summing to 1, float64 if ``histogram``, ``levels`` or a tensor ``sigma`` is
        float64, else float32.

    >>> levels = torch.tensor([1.0, 2.0, 3.0])
    >>> [round(q, 4) for q in histogram_soft_target(torch.tensor([1, 2, 1]), levels, epsilon=0.0).tolist()]
    [0.25, 0.5, 0.25]
    """
    check_distribution(histogram, levels, name="histogram")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"`epsilon` must lie in [0, 1], got {epsilon}.")
    totals = histogram.sum(dim=-1, keepdim=True, dtype=torch.float64)
    if not bool((totals > 0).all()):
        raise ValueError("`histogram` rows must have a positive sum.")
    result_dtype = _compute_dtype(histogram, levels, *((sigma,) if isinstance(sigma, torch.Tensor) else ()))
    normalised = histogram.double() / totals
    mean = expected_score(normalised, levels.double())
    target = (1 - epsilon) * normalised + epsilon * gaussian_soft_target(mean, levels.double(), sigma)
    return target.to(result_dtype)


def kl_divergence(
    target: torch.Tensor,
    probs: torch.Tensor | None = None,
    *,
    log_probs: torch.Tensor | None = None,
    reduction: Reduction = "none",
) -> torch.Tensor:
    """Kullback-Leibler divergence ``KL(target || probs) = sum_k t_k (log t_k - log p_k)``, ``0 log 0 = 0``.

    The pointwise and distillation loss of DeQA-Score (arXiv 2501.11561) and of docs/method.md (eqs. 9 and 13), and the
    teacher-student agreement metric of its section 'Evaluation'. Pass exactly one of ``probs`` or ``log_probs`` (e.g.
    ``log_softmax`` of the score logits, more stable).
    Levels with ``t_k = 0`` contribute 0 to the value and to the gradients, whatever ``p_k``; a level with
    ``t_k > 0`` and ``p_k = 0`` gives ``+inf``.

    Args:
        target: ``(..., K)`` target probabilities.
        probs: ``(..., K)`` model probabilities.
        log_probs: ``(..., K)`` model log-probabilities, instead of ``probs``.
        reduction: ``"none"`` returns ``(...)``; ``"mean"`` averages over all leading (batch) positions, like
            PyTorch's ``"batchmean"``; ``"sum"`` sums them.

    >>> target = torch.tensor([0.5, 0.5, 0.0])
    >>> round(float(kl_divergence(target, torch.tensor([0.25, 0.25, 0.5]))), 6)  # log 2
    0.693147
    """
    if (probs is None) == (log_probs is None):
        raise ValueError("Pass exactly one of `probs` or `log_probs`.")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"`reduction` must be 'none', 'mean' or 'sum', got {reduction!r}.")
    model, model_name = (probs, "probs") if probs is not None else (log_probs, "log_probs")
    _check_same_num_levels(target, model, model_name)
    dtype = _compute_dtype(target, model)
    target = target.to(dtype)
    model = model.to(device=target.device, dtype=dtype)
    in_support = target > 0
    # Each `where` replaces the operand before the log so that no 0 * inf appears in the backward pass.
    safe_target = torch.where(in_support, target, torch.ones_like(target))
    if probs is not None:
        model_log_probs = torch.where(in_support, model, torch.ones_like(model)).log()
    else:
        model_log_probs = torch.where(in_support, model, torch.zeros_like(model))
    pointwise = torch.where(in_support, target * (safe_target.log() - model_log_probs), torch.zeros_like(target))
    divergence = pointwise.sum(dim=-1)
    if reduction == "mean":
        return divergence.mean()
    if reduction == "sum":
        return divergence.sum()
    return divergence


def earth_movers_distance(probs_a: torch.Tensor, probs_b: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Wasserstein-1 distance between two distributions on the levels (docs/method.md eq. 18).

    ``W1 = sum_{k<K} |F_a(k) - F_b(k)| (v_{k+1} - v_k)`` with cumulative distributions ``F``; on the uniform
    half-point grid this is ``0.5 * sum_k |F_a(k) - F_b(k)|``, and it handles non-uniform grids. The gradient of
    ``|.|`` at 0 is taken as 0.

    Args:
        probs_a: ``(..., K)`` probabilities.
        probs_b: ``(..., K)`` probabilities, broadcastable against ``probs_a``.
        levels: ``(K,)`` strictly increasing score levels.

    Returns:
        ``(...)`` distances, in the units of ``levels``.

    >>> levels = torch.tensor([1.0, 2.0, 4.0])
    >>> float(earth_movers_distance(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), levels))
    3.0
    """
    _check_last_dim(probs_a, levels, "probs_a")
    _check_last_dim(probs_b, levels, "probs_b")
    dtype = _compute_dtype(probs_a, probs_b, levels)
    probs_a = probs_a.to(dtype)
    probs_b = probs_b.to(device=probs_a.device, dtype=dtype)
    levels = levels.to(device=probs_a.device, dtype=dtype)
    cdf_gap = (probs_a.cumsum(dim=-1) - probs_b.cumsum(dim=-1))[..., :-1]
    return (cdf_gap.abs() * (levels[1:] - levels[:-1])).sum(dim=-1)


def _label_probability_terms(probs: torch.Tensor, label_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upcast ``probs`` and gather ``p_y``; checks dtype and shape of ``label_index`` (metadata only)."""
    if not isinstance(label_index, torch.Tensor) or label_index.is_floating_point() or label_index.is_complex():
        raise ValueError("`label_index` must be an integer torch.Tensor.")
    if probs.ndim == 0 or label_index.shape != probs.shape[:-1]:
        raise ValueError(
            f"`label_index` must have shape probs.shape[:-1]={tuple(probs.shape[:-1])}, "
            f"got {tuple(label_index.shape)}."
        )
    probs = probs.to(_compute_dtype(probs))
    label_probs = probs.gather(-1, label_index.to(device=probs.device, dtype=torch.long).unsqueeze(-1))
    return probs, label_probs.squeeze(-1)


def brier_score(probs: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score ``sum_k (p_k - 1[k = y])^2`` (docs/method.md, 'Evaluation').

    Computed as ``sum_k p_k^2 - 2 p_y + 1``. Use :func:`check_label_index` to validate the label values.

    Args:
        probs: ``(..., K)`` probabilities.
        label_index: ``(...)`` integer index of the human label's level.

    Returns:
        ``(...)`` Brier scores in ``[0, 2]``.

    >>> round(float(brier_score(torch.tensor([0.2, 0.3, 0.5]), torch.tensor(2))), 6)  # 0.04 + 0.09 + 0.25
    0.38
    """
    probs, label_probs = _label_probability_terms(probs, label_index)
    return probs.square().sum(dim=-1) - 2 * label_probs + 1


def negative_log_likelihood(probs: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood ``-log p_y`` of the human label's level (docs/method.md, 'Evaluation'), in nats.

    Use :func:`check_label_index` to validate the label values. ``p_y = 0`` gives ``+inf``.

    Args:
        probs: ``(..., K)`` probabilities.
        label_index: ``(...)`` integer index of the human label's level.

    Returns:
        ``(...)`` negative log-likelihoods.

    >>> round(float(negative_log_likelihood(torch.tensor([0.2, 0.3, 0.5]), torch.tensor(2))), 6)  # log 2
    0.693147
    """
    _, label_probs = _label_probability_terms(probs, label_index)
    return -label_probs.log()
