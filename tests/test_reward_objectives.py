"""Objectives read from the whole score distribution (lower quantile, CVaR, tail probability, min / soft-min,
floors, groupwise P(a > b)), against brute-force values: expanded atoms, numpy interpolation, loops over levels."""

import itertools
import math

import numpy as np
import pytest
import torch

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.distributions import (
    conditional_value_at_risk,
    lower_quantile,
    soft_minimum,
    tail_probability,
)
from zreward_diffusers.testing import build_tiny_scorer

LEVELS = np.linspace(1.0, 5.0, 9)


def random_counts(rng, num=10, total=200, positive=False):
    """Distributions whose masses are multiples of 1 / total (so atoms can be expanded exactly)."""
    rows = []
    for _ in range(num):
        cuts = np.sort(rng.integers(0, total + 1, LEVELS.shape[0] - 1))
        counts = np.diff(np.concatenate([[0], cuts, [total]]))
        if positive:
            counts = counts + 1
        rows.append(counts)
    return np.array(rows)


def brute_cvar(counts, alpha):
    """The mean of the lowest alpha share of equally weighted atoms."""
    atoms = np.sort(np.repeat(LEVELS, counts))
    take = alpha * atoms.shape[0]
    assert float(take).is_integer()
    return atoms[: int(take)].mean()


@pytest.mark.parametrize("alpha", [0.05, 0.25, 0.5, 1.0])
def test_cvar_is_the_mean_of_the_lowest_atoms(alpha):
    counts = random_counts(np.random.default_rng(int(alpha * 100)), total=200)
    probs = torch.tensor(counts / counts.sum(1, keepdims=True), dtype=torch.float64)
    got = conditional_value_at_risk(probs, torch.tensor(LEVELS), alpha)
    expected = [brute_cvar(row, alpha) for row in counts]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    if alpha == 1.0:  # CVaR_1 is the expected score
        np.testing.assert_allclose(got.numpy(), probs.numpy() @ LEVELS, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.03, 0.2, 0.5, 0.9, 1.0])
def test_lower_quantile_inverts_the_piecewise_linear_cdf(alpha):
    counts = random_counts(np.random.default_rng(7), positive=True)  # every level has mass: the CDF is invertible
    probs = counts / counts.sum(1, keepdims=True)
    got = lower_quantile(torch.tensor(probs), torch.tensor(LEVELS), alpha).numpy()
    expected = [np.interp(alpha, np.cumsum(row), LEVELS) for row in probs]  # v_1 below F_1, linear between levels
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # within one level of the discrete quantile min{v_k : F_k >= alpha}
    discrete = [LEVELS[np.searchsorted(np.cumsum(row), alpha - 1e-12)] for row in probs]
    assert np.all(np.asarray(discrete) - got < 0.5 + 1e-12) and np.all(got <= np.asarray(discrete) + 1e-12)


def test_lower_quantile_skips_empty_levels():
    probs = torch.tensor([[0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # F = 0.5 at v_1 = 1.0, then the mass of level 4 (2.5) spread over (2.0, 2.5]
    assert float(lower_quantile(probs, torch.tensor(LEVELS), 0.75)) == pytest.approx(2.25)
    assert float(lower_quantile(probs, torch.tensor(LEVELS), 0.5)) == pytest.approx(1.0)


def test_tail_probability_is_the_mass_at_or_above():
    counts = random_counts(np.random.default_rng(3))
    probs = counts / counts.sum(1, keepdims=True)
    for threshold in (1.5, 3.0, 3.2, 5.0):
        expected = [sum(p for p, v in zip(row, LEVELS, strict=True) if v >= threshold) for row in probs]
        got = tail_probability(torch.tensor(probs), torch.tensor(LEVELS), threshold).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_soft_minimum_limits_and_value():
    values = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    expected = -0.1 * math.log(sum(w * math.exp(-v / 0.1) for v, w in zip([0.2, 0.9, 0.5], [0.5, 0.3, 0.2],
                                                                             strict=True)))
    assert float(soft_minimum(values, weights, 0.1)) == pytest.approx(expected, abs=1e-12)
    assert float(soft_minimum(values, weights, 1e-4)) == pytest.approx(0.2, abs=1e-3)  # -> the minimum
    assert float(soft_minimum(values, weights, 1e4)) == pytest.approx(0.2 * 0.5 + 0.9 * 0.3 + 0.5 * 0.2, abs=1e-4)
    zero_weight = torch.tensor([0.0, 0.6, 0.4], dtype=torch.float64)  # an unweighted dimension is not the minimum
    assert float(soft_minimum(values, zero_weight, 1e-4)) == pytest.approx(0.5, abs=1e-3)
    # weights are normalised: scaling them changes nothing
    assert float(soft_minimum(values, weights * 7, 0.1)) == pytest.approx(expected, abs=1e-12)


def test_statistics_have_gradients_matching_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    levels = torch.tensor(LEVELS)
    for function in (lambda p: lower_quantile(p, levels, 0.3), lambda p: conditional_value_at_risk(p, levels, 0.3),
                     lambda p: tail_probability(p, levels, 3.5)):
        assert torch.autograd.gradcheck(lambda x, f=function: f(x.softmax(-1)), (logits,))
    values = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: soft_minimum(x, torch.tensor([0.2, 0.3, 0.5]), 0.3), (values,))


def test_statistics_refuse_bad_arguments():
    probs, levels = torch.full((9,), 1 / 9), torch.tensor(LEVELS)
    for alpha in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="`alpha`"):
            conditional_value_at_risk(probs, levels, alpha)
        with pytest.raises(ValueError, match="`alpha`"):
            lower_quantile(probs, levels, alpha)
    for threshold in (1.0, 5.5, 0.0):
        with pytest.raises(ValueError, match="`threshold`"):
            tail_probability(probs, levels, threshold)
    with pytest.raises(ValueError, match="`temperature`"):
        soft_minimum(probs[None], probs, 0.0)


# ---------------------------------------------------------------- through ZRewardLoss


@pytest.fixture(scope="module")
def scorer():
    return build_tiny_scorer("qwen2_vl", seed=0)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 56, 56, generator=generator) * 2 - 1
    return images, ["a red circle", "two blue squares", "a red circle", "two blue squares"]


def reference(scorer, images, prompts):
    """Per-image, per-dimension distributions from the unshaped scorer, as float64 numpy."""
    output = scorer((images + 1) / 2, prompts)
    return output.probs.double().detach().numpy(), list(output.dimensions)


def numpy_statistic(probs, statistic, alpha=None, threshold=None):
    if statistic == "cvar":
        rows = []
        for row in probs.reshape(-1, probs.shape[-1]):
            total, left = 0.0, alpha
            for p, v in zip(row, LEVELS, strict=True):  # take mass from the bottom
                used = min(p, max(left, 0.0))
                total += used * v
                left -= used
            rows.append(total / alpha)
        return (np.array(rows).reshape(probs.shape[:-1]) - 1.0) / 4.0
    if statistic == "quantile":
        flat = [np.interp(alpha, np.cumsum(row), LEVELS) for row in probs.reshape(-1, probs.shape[-1])]
        return (np.array(flat).reshape(probs.shape[:-1]) - 1.0) / 4.0
    if statistic == "tail":
        return probs[..., LEVELS >= threshold].sum(-1)
    return (probs @ LEVELS - 1.0) / 4.0


@pytest.mark.parametrize("statistic, options", [("mean", {}), ("cvar", {"alpha": 0.2}), ("quantile", {"alpha": 0.3}),
                                                ("tail", {"threshold": 3.0})])
@pytest.mark.parametrize("combine", ["weighted", "min", "softmin"])
def test_loss_objectives_match_brute_force(scorer, batch, statistic, options, combine):
    images, prompts = batch
    loss_fn = ZRewardLoss(scorer, statistic=statistic, combine=combine, reduction="none",
                          floors={"realism": 3.2 if statistic != "tail" else 0.6}, floor_weight=2.0, **options)
    reward = loss_fn.reward(images, prompts).double().detach().numpy()
    probs, dimensions = reference(scorer, images, prompts)
    r = numpy_statistic(probs, statistic, **options)  # (B, D)
    weights = np.full(len(dimensions), 1 / len(dimensions))
    if combine == "weighted":
        expected = r @ weights
    elif combine == "min":
        expected = r.min(1)
    else:
        expected = np.array([-0.05 * math.log(sum(w * math.exp(-x / 0.05) for x, w in zip(row, weights,
                                                                                            strict=True)))
                             for row in r])
    floor = 0.6 if statistic == "tail" else (3.2 - 1.0) / 4.0
    expected = expected - 2.0 * np.maximum(floor - r[:, dimensions.index("realism")], 0.0)
    np.testing.assert_allclose(reward, expected, atol=2e-5)


def test_floors_bind_in_this_batch(scorer, batch):
    """The floor test above is only meaningful when some image is below the floor and some above."""
    images, prompts = batch
    probs, dimensions = reference(scorer, images, prompts)
    realism = probs[:, dimensions.index("realism")] @ LEVELS
    floor = float(np.median(realism))
    loss_fn = ZRewardLoss(scorer, floors={"realism": floor}, reduction="none")
    plain = ZRewardLoss(scorer, reduction="none")
    gap = (plain.reward(images, prompts) - loss_fn.reward(images, prompts)).detach().numpy()
    np.testing.assert_allclose(gap, np.maximum(floor - realism, 0) / 4.0, atol=2e-6)
    assert (gap > 0).any() and (gap == 0).any()


def brute_preference(a, b):
    return sum(a[k] * b[m] * (1.0 if k > m else 0.5 if k == m else 0.0)
               for k, m in itertools.product(range(a.shape[0]), repeat=2))


def test_groupwise_reward_is_the_mean_win_probability_within_the_prompt(scorer):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(5, 3, 56, 56, generator=generator) * 2 - 1
    prompts = ["a red circle", "a star", "a red circle", "a red circle", "a star"]  # not a palindrome
    loss_fn = ZRewardLoss(scorer, groupwise=True, reduction="none")
    reward = loss_fn.reward(images, prompts).double().detach().numpy()
    probs, dimensions = reference(scorer, images, prompts)
    expected = []
    for i in range(5):
        rivals = [j for j in range(5) if j != i and prompts[j] == prompts[i]]
        wins = [np.mean([brute_preference(probs[i, d], probs[j, d]) for j in rivals]) for d in range(len(dimensions))]
        expected.append(np.mean(wins) - 0.5)
    np.testing.assert_allclose(reward, expected, atol=2e-6)
    # within a prompt of two, the two rewards are opposite: P(a > b) + P(b > a) = 1
    assert reward[1] == pytest.approx(-reward[4], abs=1e-6)
    # differentiable to the images
    images.requires_grad_(True)
    loss_fn.reward(images, prompts).sum().backward()
    assert images.grad.abs().sum() > 0
    # score_batch shapes every chunk together: the same rewards with chunks that split the groups
    batch_scores = loss_fn.score_batch((images.detach() + 1) / 2, prompts, batch_size=2)
    np.testing.assert_allclose(batch_scores["reward"].numpy(), expected, atol=2e-6)


def test_objective_settings_are_refused_when_wrong(scorer):
    cases = [
        ({"statistic": "median"}, "`statistic`"),
        ({"combine": "max"}, "`combine`"),
        ({"alpha": 0.2}, "`alpha` applies"),
        ({"statistic": "cvar", "alpha": 0.0}, "`alpha` must be"),
        ({"statistic": "tail"}, "needs a `threshold`"),
        ({"statistic": "tail", "threshold": 1.0}, "`threshold` must be"),
        ({"threshold": 3.0}, "`threshold` applies"),
        ({"statistic": "tail", "threshold": 3.0, "kappa": 0.5}, "`kappa`"),
        ({"temperature": 0.1}, "`temperature` applies"),
        ({"combine": "softmin", "temperature": 0.0}, "`temperature` must be"),
        ({"floors": {"colour": 3.0}}, "`floors` names 'colour'"),
        ({"floors": {"realism": 6.0}}, "floors\\['realism'\\]"),
        ({"statistic": "tail", "threshold": 3.0, "floors": {"realism": 3.0}}, "floors\\['realism'\\]"),
        ({"floor_weight": 0.0}, "`floor_weight`"),
        ({"statistic": "cvar", "normalize": True}, "`normalize`"),
        ({"groupwise": True, "kappa": 0.1}, "`groupwise`"),
        ({"groupwise": True, "combine": "min"}, "`groupwise`"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            ZRewardLoss(scorer, **options)
    with pytest.raises(ValueError, match="single image, e.g. 'a star'"):
        ZRewardLoss(scorer, groupwise=True).reward(torch.zeros(3, 3, 56, 56), ["a", "a", "a star"])


def test_objective_settings_survive_save_and_load(scorer, tmp_path):
    settings = {"statistic": "cvar", "alpha": 0.1, "combine": "softmin", "temperature": 0.2,
                "floors": {"alignment": 2.5}, "floor_weight": 3.0}
    ZRewardLoss(scorer, **settings).save_pretrained(tmp_path / "checkpoint")
    loaded = ZRewardLoss.from_pretrained(tmp_path / "checkpoint")
    assert {key: getattr(loaded, key) for key in settings} == settings
    # overriding a choice drops the saved settings that belonged to it (alpha with the statistic, temperature
    # with the combination); floors are kept unless overridden too
    overridden = ZRewardLoss.from_pretrained(tmp_path / "checkpoint", statistic="mean", combine="weighted")
    assert (overridden.statistic, overridden.alpha, overridden.combine, overridden.temperature) == (
        "mean", None, "weighted", None)
    assert overridden.floors == {"alignment": 2.5}
    quantile = ZRewardLoss.from_pretrained(tmp_path / "checkpoint", statistic="quantile")
    assert (quantile.alpha, quantile.temperature) == (0.25, 0.2)  # the default alpha; softmin still saved
