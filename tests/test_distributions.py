"""Tests for `zreward_diffusers.distributions`: hand-computed values, scipy parity, gradients, validation."""

import doctest
import math

import pytest
import scipy.stats
import torch

import zreward_diffusers.distributions as distributions
from zreward_diffusers.distributions import (
    brier_score,
    check_distribution,
    check_label_index,
    check_levels,
    earth_movers_distance,
    entropy,
    expected_score,
    gaussian_soft_target,
    histogram_soft_target,
    kl_divergence,
    negative_log_likelihood,
    normalized_reward,
    preference_probability,
    score_std,
)

# Toy grid where the arithmetic can be done by hand, the paper's half-point grid, and a non-uniform grid.
TOY_LEVELS = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
HALF_POINT_LEVELS = torch.linspace(1.0, 5.0, 9, dtype=torch.float64)
UNEVEN_LEVELS = torch.tensor([0.0, 1.0, 3.0, 6.0], dtype=torch.float64)
TOY_PROBS = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def random_probs(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).softmax(dim=-1)


# ---------------------------------------------------------------- summary statistics (METHOD eq. 2-3)


def test_expected_score_by_hand():
    # 0.2 * 1 + 0.3 * 2 + 0.5 * 3 = 0.2 + 0.6 + 1.5 = 2.3
    assert float(expected_score(TOY_PROBS, TOY_LEVELS)) == pytest.approx(2.3, abs=1e-12)
    # one-hot on the 7th half-point level: 1 + 0.5 * 6 = 4.0
    assert float(expected_score(torch.eye(9, dtype=torch.float64)[6], HALF_POINT_LEVELS)) == pytest.approx(4.0)
    # uniform on 1.0 .. 5.0: the midpoint 3.0
    assert float(expected_score(torch.full((9,), 1 / 9), HALF_POINT_LEVELS)) == pytest.approx(3.0)


def test_score_std_by_hand():
    # mu = 2.3; var = 0.2 * 1.3^2 + 0.3 * 0.3^2 + 0.5 * 0.7^2 = 0.338 + 0.027 + 0.245 = 0.61
    assert float(score_std(TOY_PROBS, TOY_LEVELS)) == pytest.approx(math.sqrt(0.61), abs=1e-12)
    # uniform on {1, 2, 3}: var = (1 + 0 + 1) / 3 = 2/3
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert float(score_std(uniform, TOY_LEVELS)) == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    # half at 1, half at 3: every draw is 1 away from the mean 2
    assert float(score_std(torch.tensor([0.5, 0.0, 0.5]), TOY_LEVELS)) == pytest.approx(1.0)


def test_score_std_one_hot_is_zero_with_finite_gradient():
    probs = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    std = score_std(probs, TOY_LEVELS)
    assert float(std.detach()) == 0.0
    std.backward()
    assert torch.isfinite(probs.grad).all()


def test_entropy_by_hand():
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert float(entropy(uniform)) == pytest.approx(math.log(3), abs=1e-12)
    assert float(entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2), abs=1e-6)
    assert float(entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    # -(0.2 ln 0.2 + 0.3 ln 0.3 + 0.5 ln 0.5)
    expected = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))
    assert float(entropy(TOY_PROBS)) == pytest.approx(expected, abs=1e-12)


def test_entropy_gradient_finite_with_zeros():
    probs = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64, requires_grad=True)
    entropy(probs).backward()
    assert torch.isfinite(probs.grad).all()
    # d/dp_k of -p log p is -(log p_k + 1)
    assert float(probs.grad[1]) == pytest.approx(-(math.log(0.25) + 1))


def test_normalized_reward_by_hand():
    # (mu - v_1) / (v_K - v_1): 1 -> 0, 3 -> 0.5, 5 -> 1, 4.0 -> 0.75 on the half-point grid
    rewards = normalized_reward(torch.tensor([1.0, 3.0, 5.0, 4.0], dtype=torch.float64), HALF_POINT_LEVELS)
    torch.testing.assert_close(rewards, torch.tensor([0.0, 0.5, 1.0, 0.75], dtype=torch.float64))
    # toy grid: (2.3 - 1) / (3 - 1) = 0.65
    assert float(normalized_reward(expected_score(TOY_PROBS, TOY_LEVELS), TOY_LEVELS)) == pytest.approx(0.65)


# ---------------------------------------------------------------- pairwise preference (METHOD eq. 4)


def brute_force_preference(probs_a: torch.Tensor, probs_b: torch.Tensor) -> float:
    total = 0.0
    for k in range(len(probs_a)):
        for l in range(len(probs_b)):  # noqa: E741
            if k > l:
                total += float(probs_a[k] * probs_b[l])
            elif k == l:
                total += 0.5 * float(probs_a[k] * probs_b[l])
    return total


def test_preference_probability_by_hand():
    probs_a = TOY_PROBS
    probs_b = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    # wins: a_2 b_1 + a_3 (b_1 + b_2) = 0.3 * 0.5 + 0.5 * 0.8 = 0.15 + 0.40 = 0.55
    # ties: 0.2 * 0.5 + 0.3 * 0.3 + 0.5 * 0.2 = 0.29, half of it 0.145  ->  0.695
    assert float(preference_probability(probs_a, probs_b)) == pytest.approx(0.695, abs=1e-12)
    # b wins: b_2 a_1 + b_3 (a_1 + a_2) = 0.06 + 0.10 = 0.16, plus 0.145 -> 0.305 = 1 - 0.695
    assert float(preference_probability(probs_b, probs_a)) == pytest.approx(0.305, abs=1e-12)
    top, bottom = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    assert float(preference_probability(top, bottom)) == 1.0
    assert float(preference_probability(bottom, top)) == 0.0


def test_preference_probability_matches_brute_force_and_identities():
    probs_a, probs_b = random_probs(6, 9, seed=1), random_probs(6, 9, seed=2)
    forward = preference_probability(probs_a, probs_b)
    backward = preference_probability(probs_b, probs_a)
    for row in range(6):
        assert float(forward[row]) == pytest.approx(brute_force_preference(probs_a[row], probs_b[row]), abs=1e-12)
    torch.testing.assert_close(forward + backward, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(preference_probability(probs_a, probs_a), torch.full((6,), 0.5, dtype=torch.float64))


def test_preference_probability_broadcasts():
    probs_a, probs_b = random_probs(2, 4, 9, seed=3), random_probs(9, seed=4)
    result = preference_probability(probs_a, probs_b)
    assert result.shape == (2, 4)
    assert float(result[1, 2]) == pytest.approx(brute_force_preference(probs_a[1, 2], probs_b), abs=1e-12)


# ---------------------------------------------------------------- soft targets (METHOD eq. 5)


def assert_valid_target(target: torch.Tensor, y: torch.Tensor, levels: torch.Tensor, atol: float) -> None:
    assert (target >= 0).all()
    torch.testing.assert_close(target.double().sum(dim=-1), torch.ones_like(y, dtype=torch.float64), atol=atol, rtol=0)
    torch.testing.assert_close((target.double() * levels.double()).sum(dim=-1), y.double(), atol=atol, rtol=0)


def test_gaussian_soft_target_centre_of_toy_grid_by_hand():
    # y = 2, sigma = 0.5, edges at 1.5 and 2.5: g = [Phi(-1), Phi(1) - Phi(-1), 1 - Phi(1)] = [0.1587, 0.6827, 0.1587]
    # The mean of g is already 2 (symmetric), so the affine correction is the identity.
    phi_1 = normal_cdf(1.0)
    expected = torch.tensor([1 - phi_1, 2 * phi_1 - 1, 1 - phi_1], dtype=torch.float64)
    torch.testing.assert_close(gaussian_soft_target(2.0, TOY_LEVELS), expected, atol=1e-12, rtol=0)
    assert abs(phi_1 - 0.8413447460685429) < 1e-15


def test_gaussian_soft_target_affine_correction_by_hand():
    # y = 2.2, sigma = 0.5: g_1 = Phi((1.5 - 2.2) / 0.5) = Phi(-1.4), g_3 = 1 - Phi((2.5 - 2.2) / 0.5) = 1 - Phi(0.6)
    y = 2.2
    g1, g3 = normal_cdf(-1.4), 1 - normal_cdf(0.6)
    g2 = 1 - g1 - g3
    mean_g = g1 * 1 + g2 * 2 + g3 * 3  # = 2 + g3 - g1, about 2.1935: the open outer bins pull the mean inwards
    # alpha + 3 beta = 1 and alpha * mean_g + 6 beta = y  =>  alpha = (2 - y) / (2 - mean_g), beta = (1 - alpha) / 3
    alpha = (2 - y) / (2 - mean_g)
    beta = (1 - alpha) / 3
    assert alpha == pytest.approx(1.0336, abs=1e-4)  # > 1: sharpen to move the mean out to 2.2
    expected = torch.tensor([alpha * g1 + beta, alpha * g2 + beta, alpha * g3 + beta], dtype=torch.float64)
    assert (expected > 0).all()  # no clipping for this label
    torch.testing.assert_close(gaussian_soft_target(y, TOY_LEVELS), expected, atol=1e-12, rtol=0)


def test_gaussian_soft_target_clipping_resolves_on_support():
    # y = 4.5 on the half-point grid: the full-grid correction has beta < 0 and clips the low levels; the solve is
    # repeated on the remaining support {3.5, 4.0, 4.5, 5.0} and the result is affine in g there.
    y = 4.5
    target = gaussian_soft_target(y, HALF_POINT_LEVELS)
    assert_valid_target(target, torch.tensor(y, dtype=torch.float64), HALF_POINT_LEVELS, atol=1e-12)
    assert (target[:5] == 0).all() and (target[5:] > 0).all()
    # Independent solve on S = {3.5, 4, 4.5, 5} with g from the erf: alpha G + 4 beta = 1, alpha M + 17 beta = 4.5
    edges = [3.25, 3.75, 4.25, 4.75, math.inf]
    g = [normal_cdf((edges[i + 1] - y) / 0.5) - normal_cdf((edges[i] - y) / 0.5) for i in range(4)]
    support_levels = [3.5, 4.0, 4.5, 5.0]
    mass, moment = sum(g), sum(gk * v for gk, v in zip(g, support_levels, strict=True))
    determinant = mass * 17.0 - 4 * moment
    alpha = (17.0 - 4 * y) / determinant
    beta = (1 - alpha * mass) / 4
    expected = torch.tensor([alpha * gk + beta for gk in g], dtype=torch.float64)
    torch.testing.assert_close(target[5:], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sigma", [0.15, 0.3, 0.5, 1.0, 2.0])
def test_gaussian_soft_target_is_a_distribution_with_mean_y(sigma):
    y = torch.cat([torch.linspace(1.0, 5.0, 801, dtype=torch.float64), torch.tensor([3.3, 1.01, 4.99, 2.71828])])
    target = gaussian_soft_target(y, HALF_POINT_LEVELS, sigma=sigma)
    assert target.shape == (805, 9)
    assert_valid_target(target, y, HALF_POINT_LEVELS, atol=1e-9)


def test_gaussian_soft_target_float32_mean_within_1e_6():
    y = torch.tensor([1.0, 1.3, 2.75, 3.3, 4.9, 5.0])
    target = gaussian_soft_target(y, HALF_POINT_LEVELS.float())
    assert target.dtype == torch.float32
    assert_valid_target(target, y, HALF_POINT_LEVELS, atol=1e-6)


def test_gaussian_soft_target_off_grid_label_is_smooth():
    # 3.3 lies between the levels 3.0 and 3.5; with sigma = 0.5 every level gets mass, the largest on 3.5.
    target = gaussian_soft_target(3.3, HALF_POINT_LEVELS)
    assert (target > 0).all()
    assert int(target.argmax()) == 5


def test_gaussian_soft_target_grid_ends_are_one_hot():
    target = gaussian_soft_target(torch.tensor([1.0, 5.0], dtype=torch.float64), HALF_POINT_LEVELS)
    torch.testing.assert_close(target[0], torch.eye(9, dtype=torch.float64)[0])
    torch.testing.assert_close(target[1], torch.eye(9, dtype=torch.float64)[8])


def test_gaussian_soft_target_tiny_sigma_is_two_bin_interpolation():
    # 3.3 = 0.4 * 3.0 + 0.6 * 3.5  (weights (3.5 - 3.3) / 0.5 and (3.3 - 3.0) / 0.5)
    target = gaussian_soft_target(3.3, HALF_POINT_LEVELS, sigma=1e-4)
    expected = torch.zeros(9, dtype=torch.float64)
    expected[4], expected[5] = 0.4, 0.6
    torch.testing.assert_close(target, expected, atol=1e-12, rtol=0)
    # 1.25 on the toy grid = 0.75 * 1 + 0.25 * 2; a label on a level is one-hot
    torch.testing.assert_close(
        gaussian_soft_target(torch.tensor([1.25, 2.0]), TOY_LEVELS, sigma=1e-6),
        torch.tensor([[0.75, 0.25, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64),
    )
    # the threshold is a keyword: with min_sigma = 0 even a tiny sigma uses the Gaussian
    assert (gaussian_soft_target(2.0, TOY_LEVELS, sigma=0.3, min_sigma=0.0) > 0).all()


def test_gaussian_soft_target_non_uniform_grid():
    y = torch.tensor([0.0, 0.4, 1.0, 2.2, 4.5, 5.9, 6.0], dtype=torch.float64)
    target = gaussian_soft_target(y, UNEVEN_LEVELS, sigma=1.0)
    assert_valid_target(target, y, UNEVEN_LEVELS, atol=1e-9)


def test_gaussian_soft_target_batched_shape_and_tensor_sigma():
    y = torch.tensor([[1.2, 2.5, 3.3], [4.0, 4.75, 5.0]], dtype=torch.float64)
    target = gaussian_soft_target(y, HALF_POINT_LEVELS)
    assert target.shape == (2, 3, 9)
    assert_valid_target(target, y, HALF_POINT_LEVELS, atol=1e-9)
    # per-label sigma: a tiny sigma in the second column gives the two-bin target 0.5/0.5 between 2.0 and 3.0
    per_label = gaussian_soft_target(y, HALF_POINT_LEVELS, sigma=torch.tensor([0.5, 1e-3, 0.5]))
    torch.testing.assert_close(per_label[0, 1, 3], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(per_label[0, 0], target[0, 0])


def test_histogram_soft_target_by_hand():
    # counts [1, 2, 1] -> h = [0.25, 0.5, 0.25], mean 2; g_0.5(2) = [1 - Phi(1), 2 Phi(1) - 1, 1 - Phi(1)]
    phi_1 = normal_cdf(1.0)
    gaussian = torch.tensor([1 - phi_1, 2 * phi_1 - 1, 1 - phi_1], dtype=torch.float64)
    target = histogram_soft_target(torch.tensor([1, 2, 1]), TOY_LEVELS, epsilon=0.1)
    expected = 0.9 * torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64) + 0.1 * gaussian
    torch.testing.assert_close(target, expected, atol=1e-12, rtol=0)
    # epsilon = 0 gives the normalised histogram
    torch.testing.assert_close(
        histogram_soft_target(torch.tensor([3.0, 0.0, 1.0]), TOY_LEVELS.float(), epsilon=0.0),
        torch.tensor([0.75, 0.0, 0.25]),
    )
    # float64 levels give a float64 target
    assert histogram_soft_target(torch.tensor([3.0, 0.0, 1.0]), TOY_LEVELS).dtype == torch.float64


def test_histogram_soft_target_batched_keeps_mean():
    generator = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 5, (2, 4, 9), generator=generator)
    counts[..., 4] += 1  # every row has at least one vote
    target = histogram_soft_target(counts, HALF_POINT_LEVELS)
    assert target.shape == (2, 4, 9)
    mean = expected_score(counts.double() / counts.sum(dim=-1, keepdim=True), HALF_POINT_LEVELS)
    assert_valid_target(target, mean, HALF_POINT_LEVELS, atol=1e-9)


# ---------------------------------------------------------------- calibration metrics (METHOD section 5.2)


def test_kl_divergence_by_hand_and_scipy():
    # KL([0.5, 0.5, 0] || [0.25, 0.25, 0.5]) = 2 * 0.5 * log(0.5 / 0.25) = log 2; the zero target entry adds 0
    target = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    assert float(kl_divergence(target, torch.tensor([0.25, 0.25, 0.5]))) == pytest.approx(math.log(2), abs=1e-7)
    targets, probs = random_probs(5, 9, seed=6), random_probs(5, 9, seed=7)
    targets[0, :3] = 0
    targets[0] /= targets[0].sum()
    result = kl_divergence(targets, probs)
    reference = [scipy.stats.entropy(targets[i].numpy(), probs[i].numpy()) for i in range(5)]
    torch.testing.assert_close(result, torch.tensor(reference, dtype=torch.float64))
    torch.testing.assert_close(kl_divergence(targets, log_probs=probs.log()), result)
    assert float(kl_divergence(targets, probs, reduction="sum")) == pytest.approx(sum(reference))
    assert float(kl_divergence(targets, probs, reduction="mean")) == pytest.approx(sum(reference) / 5)
    # self-divergence is zero, a missing support point is infinite
    assert float(kl_divergence(TOY_PROBS, TOY_PROBS)) == pytest.approx(0.0, abs=1e-15)
    assert math.isinf(float(kl_divergence(TOY_PROBS, torch.tensor([0.5, 0.5, 0.0]))))


def test_kl_divergence_gradient_finite_where_target_and_probs_are_zero():
    target = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    probs = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64, requires_grad=True)
    kl_divergence(target, probs).backward()
    assert torch.isfinite(target.grad).all() and torch.isfinite(probs.grad).all()
    # d KL / d p_k = -t_k / p_k: [0, -2, -2/3]
    torch.testing.assert_close(probs.grad, torch.tensor([0.0, -2.0, -2 / 3], dtype=torch.float64))
    log_probs = torch.tensor([-math.inf, math.log(0.25), math.log(0.75)], dtype=torch.float64, requires_grad=True)
    kl_divergence(target.detach(), log_probs=log_probs).backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([0.0, -0.5, -0.5], dtype=torch.float64))


def test_earth_movers_distance_by_hand_and_scipy():
    # all mass moved from 1 to 3 on the toy grid travels 2
    bottom, top = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    assert float(earth_movers_distance(bottom, top, TOY_LEVELS)) == pytest.approx(2.0)
    # [0.2, 0.3, 0.5] vs [0.5, 0.3, 0.2]: CDF gaps |0.2 - 0.5| = 0.3 and |0.5 - 0.8| = 0.3, times spacing 1 -> 0.6
    reversed_probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    assert float(earth_movers_distance(TOY_PROBS, reversed_probs, TOY_LEVELS)) == pytest.approx(0.6, abs=1e-12)
    # non-uniform grid {0, 1, 3, 6}: half the mass moved from 0 to 6 travels 3
    at_zero, half = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.5, 0.0, 0.0, 0.5])
    assert float(earth_movers_distance(at_zero, half, UNEVEN_LEVELS)) == pytest.approx(3.0)
    for levels in (HALF_POINT_LEVELS, torch.tensor([1.0, 1.5, 3.0, 3.2, 5.0, 9.0, 9.5, 10.0, 20.0])):
        probs_a, probs_b = random_probs(4, 9, seed=8), random_probs(4, 9, seed=9)
        result = earth_movers_distance(probs_a, probs_b, levels)
        reference = [
            scipy.stats.wasserstein_distance(levels.numpy(), levels.numpy(), probs_a[i].numpy(), probs_b[i].numpy())
            for i in range(4)
        ]
        torch.testing.assert_close(result, torch.tensor(reference, dtype=torch.float64))


def test_brier_score_and_nll_by_hand():
    # label at index 2 (level 3): (0.2 - 0)^2 + (0.3 - 0)^2 + (0.5 - 1)^2 = 0.04 + 0.09 + 0.25 = 0.38; -log 0.5
    assert float(brier_score(TOY_PROBS, torch.tensor(2))) == pytest.approx(0.38, abs=1e-12)
    assert float(negative_log_likelihood(TOY_PROBS, torch.tensor(2))) == pytest.approx(math.log(2), abs=1e-12)
    # label at index 0: 0.8^2 + 0.3^2 + 0.5^2 = 0.64 + 0.09 + 0.25 = 0.98; -log 0.2
    probs = torch.stack([TOY_PROBS, TOY_PROBS])
    labels = torch.tensor([2, 0])
    torch.testing.assert_close(brier_score(probs, labels), torch.tensor([0.38, 0.98], dtype=torch.float64))
    torch.testing.assert_close(
        negative_log_likelihood(probs, labels), torch.tensor([math.log(2), -math.log(0.2)], dtype=torch.float64)
    )
    # a perfect one-hot prediction has Brier 0 and NLL 0; the worst has Brier 2
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    assert float(brier_score(one_hot, torch.tensor(1))) == 0.0
    assert float(negative_log_likelihood(one_hot, torch.tensor(1))) == 0.0
    assert float(brier_score(one_hot, torch.tensor(0))) == 2.0


# ---------------------------------------------------------------- gradients, shapes and dtypes


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(10)

    def logits(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    levels = HALF_POINT_LEVELS
    logits_a, logits_b = logits(3, 9), logits(3, 9)
    target = random_probs(3, 9, seed=11)
    checks = {
        "expected_score": (lambda z: expected_score(z.softmax(-1), levels), (logits_a,)),
        "score_std": (lambda z: score_std(z.softmax(-1), levels), (logits_a,)),
        "entropy": (lambda z: entropy(z.softmax(-1)), (logits_a,)),
        "preference_probability": (
            lambda za, zb: preference_probability(za.softmax(-1), zb.softmax(-1)),
            (logits_a, logits_b),
        ),
        "kl_divergence": (lambda z: kl_divergence(target, z.softmax(-1)), (logits_a,)),
        "kl_divergence_target": (lambda z: kl_divergence(z.softmax(-1), target), (logits_a,)),
        "kl_divergence_log_probs": (lambda z: kl_divergence(target, log_probs=z.log_softmax(-1)), (logits_a,)),
        "earth_movers_distance": (
            lambda za, zb: earth_movers_distance(za.softmax(-1), zb.softmax(-1), levels),
            (logits_a, logits_b),
        ),
        "brier_score": (lambda z: brier_score(z.softmax(-1), torch.tensor([0, 4, 8])), (logits_a,)),
        "negative_log_likelihood": (
            lambda z: negative_log_likelihood(z.softmax(-1), torch.tensor([0, 4, 8])),
            (logits_a,),
        ),
    }
    for name, (function, inputs) in checks.items():
        assert torch.autograd.gradcheck(function, inputs), name


@pytest.mark.parametrize(
    "function",
    [
        lambda p, q, label: expected_score(p, HALF_POINT_LEVELS),
        lambda p, q, label: score_std(p, HALF_POINT_LEVELS),
        lambda p, q, label: entropy(p),
        lambda p, q, label: preference_probability(p, q),
        lambda p, q, label: kl_divergence(q, p),
        lambda p, q, label: earth_movers_distance(p, q, HALF_POINT_LEVELS),
        lambda p, q, label: brier_score(p, label),
        lambda p, q, label: negative_log_likelihood(p, label),
    ],
)
def test_batched_shapes_match_flattened_rows(function):
    probs_a, probs_b = random_probs(2, 4, 9, seed=12), random_probs(2, 4, 9, seed=13)
    labels = torch.arange(8).reshape(2, 4)
    batched = function(probs_a, probs_b, labels)
    assert batched.shape == (2, 4)
    flat = function(probs_a.reshape(8, 9), probs_b.reshape(8, 9), labels.reshape(8))
    torch.testing.assert_close(batched.reshape(8), flat)


def test_half_precision_is_upcast_to_float32():
    probs = TOY_PROBS.to(torch.float16)
    levels = TOY_LEVELS.float()
    assert expected_score(probs, levels).dtype == torch.float32
    assert score_std(probs.bfloat16(), levels).dtype == torch.float32
    assert entropy(probs).dtype == torch.float32
    assert preference_probability(probs, probs).dtype == torch.float32
    assert earth_movers_distance(probs, probs, levels).dtype == torch.float32
    assert kl_divergence(probs, probs).dtype == torch.float32
    assert brier_score(probs, torch.tensor(0)).dtype == torch.float32
    assert float(expected_score(probs, levels)) == pytest.approx(2.3, abs=1e-3)


# ---------------------------------------------------------------- validation


def test_check_distribution_and_levels_errors():
    check_distribution(TOY_PROBS, TOY_LEVELS, sum_atol=1e-9)
    with pytest.raises(ValueError, match="`probs` must have its last dimension"):
        check_distribution(torch.tensor([0.5, 0.5]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`target` must have its last dimension"):
        check_distribution(torch.tensor([0.5, 0.5]), TOY_LEVELS, name="target")
    with pytest.raises(ValueError, match="`probs` must be non-negative"):
        check_distribution(torch.tensor([1.1, -0.1, 0.0]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`probs` must be finite"):
        check_distribution(torch.tensor([math.nan, 0.5, 0.5]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`probs` rows must sum to 1"):
        check_distribution(torch.tensor([0.5, 0.5, 0.5]), TOY_LEVELS, sum_atol=1e-6)
    with pytest.raises(ValueError, match="`levels` must be strictly increasing"):
        check_distribution(TOY_PROBS, torch.tensor([1.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match="`levels` must be strictly increasing"):
        check_levels(torch.tensor([1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="`levels` must be a 1-D tensor"):
        check_levels(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="`levels` must be finite"):
        check_levels(torch.tensor([1.0, math.inf]))


def test_functions_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="`probs` must have its last dimension"):
        expected_score(torch.tensor([0.5, 0.5]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`levels` must be a 1-D tensor"):
        score_std(TOY_PROBS, TOY_LEVELS[None])
    with pytest.raises(ValueError, match="`levels` must be a 1-D tensor"):
        normalized_reward(torch.tensor(2.0), TOY_LEVELS[None])
    with pytest.raises(ValueError, match="`probs_b` must have the same number of levels"):
        preference_probability(TOY_PROBS, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="`probs_b` must have its last dimension"):
        earth_movers_distance(TOY_PROBS, torch.tensor([0.5, 0.5]), TOY_LEVELS)


def test_label_index_errors():
    with pytest.raises(ValueError, match="`label_index` must be an integer"):
        brier_score(TOY_PROBS, torch.tensor(2.0))
    with pytest.raises(ValueError, match="`label_index` must have shape"):
        negative_log_likelihood(TOY_PROBS, torch.tensor([2, 1]))
    with pytest.raises(ValueError, match=r"`label_index` values must lie in \[0, 3\)"):
        check_label_index(torch.tensor([0, 3]), num_levels=3)
    with pytest.raises(ValueError, match="`label_index` must be an integer"):
        check_label_index(torch.tensor([0.0]), num_levels=3)


def test_kl_divergence_argument_errors():
    with pytest.raises(ValueError, match="exactly one of `probs` or `log_probs`"):
        kl_divergence(TOY_PROBS)
    with pytest.raises(ValueError, match="exactly one of `probs` or `log_probs`"):
        kl_divergence(TOY_PROBS, TOY_PROBS, log_probs=TOY_PROBS.log())
    with pytest.raises(ValueError, match="`reduction`"):
        kl_divergence(TOY_PROBS, TOY_PROBS, reduction="batchmean")
    with pytest.raises(ValueError, match="`log_probs` must have the same number of levels"):
        kl_divergence(TOY_PROBS, log_probs=torch.zeros(2))


def test_soft_target_errors():
    with pytest.raises(ValueError, match="`y` must lie in"):
        gaussian_soft_target(0.99, HALF_POINT_LEVELS)
    with pytest.raises(ValueError, match="`y` must lie in"):
        gaussian_soft_target(torch.tensor([3.0, 5.2]), HALF_POINT_LEVELS)
    with pytest.raises(ValueError, match="`y` must be finite"):
        gaussian_soft_target(math.nan, HALF_POINT_LEVELS)
    with pytest.raises(ValueError, match="`sigma` must be positive"):
        gaussian_soft_target(3.0, HALF_POINT_LEVELS, sigma=0.0)
    with pytest.raises(ValueError, match="`levels` must be strictly increasing"):
        gaussian_soft_target(3.0, torch.tensor([1.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match="`histogram` rows must have a positive sum"):
        histogram_soft_target(torch.tensor([[1, 2, 1], [0, 0, 0]]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`histogram` must be non-negative"):
        histogram_soft_target(torch.tensor([1, -2, 1]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`histogram` must have its last dimension"):
        histogram_soft_target(torch.tensor([1, 2]), TOY_LEVELS)
    with pytest.raises(ValueError, match="`epsilon` must lie in"):
        histogram_soft_target(torch.tensor([1, 2, 1]), TOY_LEVELS, epsilon=1.5)


# ---------------------------------------------------------------- docstring examples


def test_module_doctests():
    results = doctest.testmod(distributions, verbose=False)
    assert results.attempted > 0
    assert results.failed == 0
