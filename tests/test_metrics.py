"""Tests for `zreward_diffusers.metrics`: hand-computed values, brute-force loops and scipy parity."""

import doctest
import itertools
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

import zreward_diffusers.metrics as metrics
from zreward_diffusers.distributions import preference_probability
from zreward_diffusers.metrics import (
    bootstrap_ci,
    calibrate_tie_epsilon,
    correlations,
    evaluate_scores,
    expected_calibration_error,
    gsb,
    gsb_with_ci,
    kendall_tau_b,
    mean_brier,
    mean_emd,
    mean_js_divergence,
    mean_nll,
    pairwise_accuracy,
    pairwise_accuracy_from_pairs,
    pairwise_expected_calibration_error,
    pearson,
    spearman,
    teacher_student_agreement,
    tie_aware_accuracy,
)

HALF_POINT_LEVELS = np.linspace(1.0, 5.0, 9)
UNEVEN_LEVELS = np.array([0.0, 1.0, 3.0, 6.0])


def random_probs(*shape: int, seed: int = 0, sharpness: float = 1.0) -> np.ndarray:
    logits = sharpness * np.random.default_rng(seed).normal(size=shape)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


def random_grouped_scores(num_items: int = 300, num_groups: int = 40, seed: int = 0):
    """Coarse predicted and human scores (many ties in both) and uneven random groups."""
    rng = np.random.default_rng(seed)
    human = rng.integers(1, 6, size=num_items).astype(np.float64)
    predicted = np.round(human + rng.normal(scale=1.0, size=num_items), 0)
    groups = rng.integers(0, num_groups, size=num_items)
    return predicted, human, groups


def brute_force_pairs(groups):
    return [(i, j) for i, j in itertools.combinations(range(len(groups)), 2) if groups[i] == groups[j]]


def brute_force_pairwise_accuracy(predicted, human, groups) -> tuple[float, int]:
    """Double loop over same-group pairs: human ties left out, predicted ties 1/2, else 1 if ordered as the human."""
    credit = []
    for i, j in brute_force_pairs(groups):
        if human[i] == human[j]:
            continue
        if predicted[i] == predicted[j]:
            credit.append(0.5)
        else:
            credit.append(float((predicted[i] > predicted[j]) == (human[i] > human[j])))
    return sum(credit) / len(credit), len(credit)


# ---------------------------------------------------------------- pairwise accuracy (METHOD eq. 17)


def test_pairwise_accuracy_by_hand():
    # group "p": items 0, 1, 2; group "q": items 3, 4, 5.
    predicted = [0.9, 0.5, 0.5, 0.1, 0.2, 0.3]
    human = [3, 2, 1, 2, 2, 1]
    groups = ["p", "p", "p", "q", "q", "q"]
    # p: (0,1) 0.4 vs +1 right; (0,2) right; (1,2) predicted tie vs +1 -> 1/2.
    # q: (3,4) human tie -> dropped; (3,5) -0.2 vs +1 wrong; (4,5) -0.1 vs +1 wrong.
    # (1 + 1 + 0.5 + 0 + 0) / 5 = 0.5
    assert pairwise_accuracy(predicted, human, groups) == {"accuracy": 0.5, "num_pairs": 5}


def test_pairwise_accuracy_matches_brute_force_double_loop():
    predicted, human, groups = random_grouped_scores()
    accuracy, num_pairs = brute_force_pairwise_accuracy(predicted, human, groups)
    result = pairwise_accuracy(predicted, human, groups)
    assert result["num_pairs"] == num_pairs
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    # torch tensors and string labels give the same result
    as_torch = pairwise_accuracy(torch.tensor(predicted), torch.tensor(human), [f"prompt {g}" for g in groups])
    assert as_torch == result


def test_pairwise_accuracy_is_invariant_to_item_order():
    predicted, human, groups = random_grouped_scores(seed=1)
    permutation = np.random.default_rng(1).permutation(len(groups))
    shuffled = pairwise_accuracy(predicted[permutation], human[permutation], groups[permutation])
    assert shuffled["num_pairs"] == pairwise_accuracy(predicted, human, groups)["num_pairs"]
    assert shuffled["accuracy"] == pytest.approx(pairwise_accuracy(predicted, human, groups)["accuracy"])


def test_pairwise_accuracy_from_pairs_by_hand():
    # right; human tie (dropped); predicted tie -> 1/2; b preferred and b higher -> right; wrong
    result = pairwise_accuracy_from_pairs([3.0, 1.0, 2.0, 1.0, 4.0], [1.0, 2.0, 2.0, 5.0, 0.0], [1, 0, 1, -1, -1])
    # (1 + 0.5 + 1 + 0) / 4 = 0.625
    assert result == {"accuracy": 0.625, "num_pairs": 4}


def test_pairwise_accuracy_from_pairs_agrees_with_grouped_version():
    predicted, human, _ = random_grouped_scores(num_items=200, seed=2)
    groups = np.arange(200) // 2  # consecutive items form a pair
    outcome = np.sign(human[0::2] - human[1::2])
    from_pairs = pairwise_accuracy_from_pairs(predicted[0::2], predicted[1::2], outcome)
    assert from_pairs == pairwise_accuracy(predicted, human, groups)


def test_pairwise_accuracy_errors():
    with pytest.raises(ValueError, match="`human`"):
        pairwise_accuracy([1.0, 2.0], [1.0, 1.0], [0, 0])  # only a human tie
    with pytest.raises(ValueError, match="`human`"):
        pairwise_accuracy([1.0, 2.0], [1.0, 2.0], [0, 1])  # no within-group pair
    with pytest.raises(ValueError, match="`human` must have the same length"):
        pairwise_accuracy([1.0, 2.0], [1.0], [0, 0])
    with pytest.raises(ValueError, match="`groups` must have the same length"):
        pairwise_accuracy([1.0, 2.0], [1.0, 2.0], [0])
    with pytest.raises(ValueError, match="`predicted` must have 1 dimension"):
        pairwise_accuracy([[1.0, 2.0]], [1.0, 2.0], [0, 0])
    with pytest.raises(ValueError, match="`predicted` must not be empty"):
        pairwise_accuracy([], [], [])
    with pytest.raises(ValueError, match="`predicted` must be finite"):
        pairwise_accuracy([1.0, float("nan")], [1.0, 2.0], [0, 0])
    with pytest.raises(ValueError, match="`outcome` values"):
        pairwise_accuracy_from_pairs([1.0], [2.0], [2])
    with pytest.raises(ValueError, match="`outcome`"):
        pairwise_accuracy_from_pairs([1.0], [2.0], [0])
    with pytest.raises(ValueError, match="`predicted_b` must have the same length"):
        pairwise_accuracy_from_pairs([1.0, 2.0], [2.0], [1, 1])


# ---------------------------------------------------------------- tie-aware accuracy (Deutsch et al.)


def test_tie_aware_accuracy_by_hand():
    predicted = [1.0, 1.1, 2.0, 5.0]
    human = [2, 2, 3, 1]
    groups = [0, 0, 0, 0]
    # pairs (gap, human): (0,1) -0.1 tie; (0,2) -1.0 -1; (0,3) -4.0 +1; (1,2) -0.9 -1; (1,3) -3.9 +1; (2,3) -3.0 +1
    # epsilon 0: (0,1) predicted -1 vs tie -> miss; (0,2) hit; (0,3) miss; (1,2) hit; (1,3) miss; (2,3) miss -> 2/6
    assert tie_aware_accuracy(predicted, human, groups, epsilon=0.0)["accuracy"] == pytest.approx(2 / 6)
    # epsilon 0.5: (0,1) becomes tie-tie -> 3/6
    assert tie_aware_accuracy(predicted, human, groups, epsilon=0.5) == {"accuracy": 0.5, "num_pairs": 6}
    # epsilon 0.95: (1,2) (gap 0.9) becomes a predicted tie against a preference -> 2/6
    assert tie_aware_accuracy(predicted, human, groups, epsilon=0.95)["accuracy"] == pytest.approx(2 / 6)
    # the threshold is strict: a gap equal to epsilon is not a tie, so epsilon = 0.9 keeps (1,2) a hit
    assert tie_aware_accuracy([0.0, 0.9], [1, 0], [0, 0], epsilon=0.9)["accuracy"] == 0.0  # -1 vs +1
    assert tie_aware_accuracy([0.9, 0.0], [1, 0], [0, 0], epsilon=0.9)["accuracy"] == 1.0


def brute_force_acc_eq(predicted, human, groups, epsilon):
    agree = total = 0
    for i, j in brute_force_pairs(groups):
        gap = predicted[i] - predicted[j]
        predicted_outcome = 0 if abs(gap) < epsilon else np.sign(gap)
        agree += predicted_outcome == np.sign(human[i] - human[j])
        total += 1
    return agree / total


def test_tie_aware_accuracy_matches_brute_force():
    rng = np.random.default_rng(3)
    _, human, groups = random_grouped_scores(num_items=120, num_groups=15, seed=3)
    predicted = np.round(human + rng.normal(scale=0.7, size=120), 1)
    for epsilon in (0.0, 0.05, 0.3, 1.0):
        expected = brute_force_acc_eq(predicted, human, groups, epsilon)
        assert tie_aware_accuracy(predicted, human, groups, epsilon)["accuracy"] == pytest.approx(expected)


def test_calibrate_tie_epsilon_is_the_best_candidate():
    rng = np.random.default_rng(4)
    _, human, groups = random_grouped_scores(num_items=120, num_groups=15, seed=4)
    predicted = np.round(human + rng.normal(scale=0.7, size=120), 1)
    result = calibrate_tie_epsilon(predicted, human, groups)
    gaps = sorted({abs(predicted[i] - predicted[j]) for i, j in brute_force_pairs(groups)})
    candidates = [*gaps, np.nextafter(gaps[-1], np.inf)]
    scores = [brute_force_acc_eq(predicted, human, groups, epsilon) for epsilon in candidates]
    best = int(np.argmax(scores))  # the first maximum: the smallest epsilon
    assert result["epsilon"] == candidates[best]
    assert result["accuracy"] == pytest.approx(scores[best])
    assert tie_aware_accuracy(predicted, human, groups, result["epsilon"])["accuracy"] == result["accuracy"]
    assert result["num_pairs"] == len(brute_force_pairs(groups))


def test_calibrate_tie_epsilon_edge_cases():
    # all human pairs tied: tying every pair is best, epsilon just above the largest gap (2.0)
    result = calibrate_tie_epsilon([0.0, 1.0, 2.0], [1, 1, 1], [0, 0, 0])
    assert result["accuracy"] == 1.0
    assert 2.0 < result["epsilon"] < 2.0 + 1e-12
    # no human tie and a perfect order: no predicted tie is best, epsilon = the smallest gap (1.0)
    assert calibrate_tie_epsilon([0.0, 1.0, 2.0], [1, 2, 3], [0, 0, 0]) == {
        "epsilon": 1.0,
        "accuracy": 1.0,
        "num_pairs": 3,
    }
    with pytest.raises(ValueError, match="`groups`"):
        calibrate_tie_epsilon([0.0, 1.0], [1, 2], [0, 1])
    with pytest.raises(ValueError, match="`epsilon`"):
        tie_aware_accuracy([0.0, 1.0], [1, 2], [0, 0], epsilon=-0.1)


# ---------------------------------------------------------------- distribution calibration (METHOD sec. 5.2)


def test_mean_nll_and_brier_by_hand():
    probs = [[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]]
    labels = [2, 0]
    # NLL: (-log 0.5 - log 0.6) / 2
    assert mean_nll(probs, labels) == pytest.approx((math.log(2) - math.log(0.6)) / 2)
    # Brier: (0.04 + 0.09 + 0.25) = 0.38; (0.16 + 0.16 + 0) = 0.32 -> 0.35
    assert mean_brier(probs, labels) == pytest.approx(0.35)
    # a zero-probability label gives inf
    assert mean_nll(probs, [2, 2]) == math.inf


def test_mean_nll_and_brier_with_histograms():
    probs = np.array([[0.2, 0.3, 0.5]])
    votes = np.array([[0, 3, 1]])  # shares 0, 3/4, 1/4
    # NLL averaged over the votes: 3/4 (-log 0.3) + 1/4 (-log 0.5)
    assert mean_nll(probs, votes) == pytest.approx(-0.75 * math.log(0.3) - 0.25 * math.log(0.5))
    # Brier per vote: label 1 -> 0.04 + 0.49 + 0.25 = 0.78; label 2 -> 0.38; 3/4 * 0.78 + 1/4 * 0.38 = 0.68
    assert mean_brier(probs, votes) == pytest.approx(0.68)
    # a level with p = 0 and no vote does not give inf
    assert math.isfinite(mean_nll([[0.0, 0.5, 0.5]], [[0, 1, 1]]))


def test_histogram_calibration_matches_scipy_and_one_hot_labels():
    probs = random_probs(50, 9, seed=5)
    votes = np.random.default_rng(5).integers(0, 4, size=(50, 9))
    votes[:, 0] += 1  # every row has a vote
    shares = votes / votes.sum(axis=1, keepdims=True)
    # cross-entropy = H(h) + KL(h || p)
    expected = np.mean(
        [scipy.stats.entropy(h) + scipy.stats.entropy(h, p) for h, p in zip(shares, probs, strict=True)]
    )
    assert mean_nll(probs, votes) == pytest.approx(expected, rel=1e-10)
    labels = np.random.default_rng(6).integers(0, 9, size=50)
    one_hot = np.eye(9)[labels]
    assert mean_nll(probs, one_hot) == pytest.approx(mean_nll(probs, labels), rel=1e-12)
    assert mean_brier(probs, one_hot) == pytest.approx(mean_brier(probs, labels), rel=1e-12)
    # torch inputs (float32 probs) are accepted
    assert mean_nll(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels)) == pytest.approx(
        mean_nll(probs, labels), rel=1e-5
    )


def test_mean_emd_matches_scipy_wasserstein():
    probs = random_probs(20, 4, seed=7)
    votes = np.random.default_rng(7).integers(1, 5, size=(20, 4))
    expected = np.mean(
        [
            scipy.stats.wasserstein_distance(UNEVEN_LEVELS, UNEVEN_LEVELS, p, h)
            for p, h in zip(probs, votes, strict=True)
        ]
    )
    assert mean_emd(probs, votes, UNEVEN_LEVELS) == pytest.approx(expected, rel=1e-10)
    # by hand on the half-point grid: all mass at 1.0 vs all mass at 2.0 -> 1.0
    assert mean_emd(np.eye(9)[[0]], np.eye(9)[[2]], HALF_POINT_LEVELS) == pytest.approx(1.0)


def test_mean_js_divergence_matches_scipy():
    probs = random_probs(20, 9, seed=8)
    votes = np.random.default_rng(8).integers(0, 3, size=(20, 9))
    votes[:, 4] += 1
    expected = np.mean([scipy.spatial.distance.jensenshannon(p, h) ** 2 for p, h in zip(probs, votes, strict=True)])
    assert mean_js_divergence(probs, votes) == pytest.approx(expected, rel=1e-9)
    # identical distributions: 0; disjoint supports: log 2
    assert mean_js_divergence([[0.5, 0.5]], [[1, 1]]) == pytest.approx(0.0, abs=1e-15)
    assert mean_js_divergence([[1.0, 0.0]], [[0, 2]]) == pytest.approx(math.log(2))


def test_calibration_errors():
    with pytest.raises(ValueError, match="`labels`"):
        mean_nll([[0.5, 0.5]], [2])  # index out of range
    with pytest.raises(ValueError, match="`labels`"):
        mean_nll([[0.5, 0.5]], [0.0])  # float indices
    with pytest.raises(ValueError, match="`labels` must have the same length"):
        mean_brier([[0.5, 0.5]], [0, 1])
    with pytest.raises(ValueError, match="`probs` rows must sum to 1"):
        mean_nll([[0.5, 0.6]], [0])
    with pytest.raises(ValueError, match="`histograms` rows must have a positive sum"):
        mean_js_divergence([[0.5, 0.5]], [[0, 0]])
    with pytest.raises(ValueError, match="`histograms` must have shape"):
        mean_emd([[0.5, 0.5]], [[1, 1, 1]], [1.0, 2.0])
    with pytest.raises(ValueError, match="`probs` must have 2 levels"):
        mean_emd([[0.5, 0.25, 0.25]], [[1, 1, 1]], [1.0, 2.0])
    with pytest.raises(ValueError, match="`levels` must be strictly increasing"):
        mean_emd([[0.5, 0.5]], [[1, 1]], [2.0, 1.0])


# ---------------------------------------------------------------- ECE


def brute_force_ece(confidence, target, num_bins):
    """Equal-mass bins by position after a sort, averaging over every order of tied confidences."""
    n = len(confidence)
    orders = []
    base = np.argsort(confidence, kind="stable")
    # permute within runs of equal confidence in every possible way (tiny inputs only)
    runs = [list(group) for _, group in itertools.groupby(base, key=lambda i: confidence[i])]
    bin_index = np.arange(n) * num_bins // n
    for choice in itertools.product(*(itertools.permutations(run) for run in runs)):
        orders.append(np.concatenate(choice))
    accuracy = np.zeros(num_bins)
    for order in orders:
        accuracy += np.bincount(bin_index, weights=target[order], minlength=num_bins)
    accuracy /= len(orders) * np.bincount(bin_index)
    conf = np.bincount(bin_index, weights=np.sort(confidence)) / np.bincount(bin_index)
    weight = np.bincount(bin_index) / n
    return float((weight * np.abs(accuracy - conf)).sum())


def test_expected_calibration_error_by_hand():
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5], [0.95, 0.05]]
    labels = [0, 0, 1, 0, 1, 0]
    # confidences 0.9, 0.8, 0.7, 0.6, 0.5 (argmax = level 0: wrong), 0.95; correct 1, 1, 1, 0, 0, 1
    # sorted: 0.5 (0), 0.6 (0), 0.7 (1) | 0.8 (1), 0.9 (1), 0.95 (1)
    # bin 1: conf 0.6, acc 1/3 -> gap 0.2667; bin 2: conf 0.8833, acc 1 -> gap 0.1167; ECE = (0.2667 + 0.1167) / 2
    result = expected_calibration_error(probs, labels, num_bins=2)
    assert result["ece"] == pytest.approx((0.6 - 1 / 3 + 1 - 2.65 / 3) / 2)
    assert result["bin_count"].tolist() == [3, 3]
    assert result["bin_confidence"] == pytest.approx([0.6, 2.65 / 3])
    assert result["bin_accuracy"] == pytest.approx([1 / 3, 1.0])


def test_expected_calibration_error_bins_and_ties():
    probs = random_probs(1000, 9, seed=9, sharpness=2.0)
    labels = np.random.default_rng(9).integers(0, 9, size=1000)
    result = expected_calibration_error(probs, labels)
    assert result["bin_count"].sum() == 1000
    assert len(result["bin_count"]) == 15
    assert result["bin_count"].max() - result["bin_count"].min() <= 1
    assert np.all(np.diff(result["bin_confidence"]) >= 0)
    # more bins than items: one item per bin, counts still sum to N
    small = expected_calibration_error(probs[:4], labels[:4], num_bins=15)
    assert small["bin_count"].tolist() == [1, 1, 1, 1]
    # tied confidences straddling a bin edge: the result does not depend on the input order and equals the
    # average over every order of the tied items
    tied_probs = np.array([[0.8, 0.2]] * 3 + [[0.6, 0.4]] * 3)
    tied_labels = np.array([0, 0, 1, 0, 1, 1])  # correct: 1 1 0 | 1 0 0
    confidence, correct = tied_probs.max(axis=1), (tied_probs.argmax(axis=1) == tied_labels).astype(float)
    for num_bins in (2, 4):
        expected = brute_force_ece(confidence, correct, num_bins)
        assert expected_calibration_error(tied_probs, tied_labels, num_bins)["ece"] == pytest.approx(expected)
        reversed_order = expected_calibration_error(tied_probs[::-1], tied_labels[::-1], num_bins)
        assert reversed_order["ece"] == pytest.approx(expected)


def test_expected_calibration_error_zero_when_calibrated():
    # 10 items at confidence 0.8 with 8 correct, 10 at 0.6 with 6 correct -> ECE 0 with 2 bins
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 10)
    labels = np.array([0] * 8 + [1] * 2 + [1] * 6 + [0] * 4)
    assert expected_calibration_error(probs, labels, num_bins=2)["ece"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="`num_bins`"):
        expected_calibration_error(probs, labels, num_bins=0)
    with pytest.raises(ValueError, match="`label_index`"):
        expected_calibration_error(probs, labels.astype(float))
    with pytest.raises(ValueError, match="`label_index`"):
        expected_calibration_error(probs, labels + 5)


def test_pairwise_expected_calibration_error():
    # P(a > b) = 0.2, 0.4 | 0.7, 0.9 with outcomes b, tie | a, b -> targets 0, 0.5 | 1, 0
    # bin 1: conf 0.3, target 0.25 -> 0.05; bin 2: conf 0.8, target 0.5 -> 0.3; ECE = (0.05 + 0.3) / 2 = 0.175
    result = pairwise_expected_calibration_error([0.9, 0.2, 0.7, 0.4], [-1, -1, 1, 0], num_bins=2)
    assert result["ece"] == pytest.approx(0.175)
    assert result["bin_accuracy"] == pytest.approx([0.25, 0.5])
    assert result["bin_count"].sum() == 4
    # a calibrated predictor: outcomes drawn with the predicted probability give a small ECE
    rng = np.random.default_rng(10)
    p = rng.uniform(size=20000)
    outcome = np.where(rng.uniform(size=20000) < p, 1, -1)
    assert pairwise_expected_calibration_error(p, outcome)["ece"] < 0.02
    # with eq. 4 on real distributions the function runs end to end
    probs_a, probs_b = random_probs(100, 9, seed=11), random_probs(100, 9, seed=12)
    p_a_beats_b = preference_probability(torch.tensor(probs_a), torch.tensor(probs_b))
    result = pairwise_expected_calibration_error(p_a_beats_b, np.ones(100))
    assert 0.0 <= result["ece"] <= 1.0
    with pytest.raises(ValueError, match="`p_a_beats_b`"):
        pairwise_expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="`outcome` must have the same length"):
        pairwise_expected_calibration_error([0.5, 0.5], [1])


# ---------------------------------------------------------------- correlations (METHOD sec. 5.3)


@pytest.mark.parametrize("num_items", [2, 3, 7, 64, 1001])
def test_correlations_match_scipy(num_items):
    rng = np.random.default_rng(num_items)
    x = rng.integers(0, 6, size=num_items).astype(float)  # many ties
    y = x + rng.integers(-2, 3, size=num_items)
    x[:2], y[:2] = [0.0, 1.0], [1.0, 0.0]  # never constant
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)


def test_kendall_tau_b_large_continuous_matches_scipy():
    rng = np.random.default_rng(13)
    x = rng.normal(size=20000)
    y = x + rng.normal(size=20000)
    assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_b_by_hand():
    # x = (1, 2, 3, 4), y = (1, 3, 2, 4): 6 pairs, (2,3) discordant -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # ties: x = (1, 1, 2), y = (1, 2, 2): n0 = 3, n1 = 1, n2 = 1, concordant (1,3) -> 1 / sqrt(2 * 2) = 0.5
    assert kendall_tau_b([1, 1, 2], [1, 2, 2]) == pytest.approx(0.5)


def test_correlations_per_group_matches_scipy_loop():
    predicted, human, groups = random_grouped_scores(num_items=400, num_groups=50, seed=14)
    groups[:2] = 1000  # a group of 2: never counted
    predicted[groups == 3] = 2.0  # a constant group: not counted
    result = correlations(predicted, human, groups)
    expected = correlations_by_scipy(predicted, human, groups)
    assert result["num_items"] == 400
    assert expected["num_groups_counted"] < expected["num_groups"]
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key


def test_correlations_no_group_counted_and_errors():
    result = correlations([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 3.0], groups=[0, 0, 1, 1])
    assert result["num_groups_counted"] == 0
    assert result["group_spearman"] is None
    assert "group_pearson" not in correlations([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="`human` is constant"):
        correlations([1.0, 2.0], [3.0, 3.0])
    with pytest.raises(ValueError, match="`x`"):
        pearson([1.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="`y`"):
        kendall_tau_b([1.0, 2.0], [2.0, 2.0])
    with pytest.raises(ValueError, match="`y` must have the same length"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])


# ---------------------------------------------------------------- teacher vs student (METHOD sec. 5.4)


def test_teacher_student_agreement():
    levels = HALF_POINT_LEVELS
    student = random_probs(60, 9, seed=15)
    teacher = random_probs(60, 9, seed=16)
    groups = np.arange(60) // 6
    result = teacher_student_agreement(student, teacher, levels, groups)
    student_mu, teacher_mu = student @ levels, teacher @ levels
    assert result["mean_abs_expected_score_gap"] == pytest.approx(np.abs(student_mu - teacher_mu).mean())
    expected_kl = np.mean([scipy.stats.entropy(q, p) for q, p in zip(teacher, student, strict=True)])
    assert result["mean_kl_teacher_student"] == pytest.approx(expected_kl, rel=1e-10)
    expected_accuracy, expected_pairs = brute_force_pairwise_accuracy(student_mu, teacher_mu, groups)
    assert result["pairwise_accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)
    assert result["num_pairs"] == expected_pairs == 10 * 15  # 10 groups of 6 -> 15 pairs each, no ties
    # a student that follows its teacher orders most pairs the teacher's way (far from the 1/2 of a coin)
    follower = 0.8 * teacher + 0.2 * random_probs(60, 9, seed=17)
    close = teacher_student_agreement(follower, teacher, levels, groups)
    by_hand = brute_force_pairwise_accuracy(follower @ levels, teacher_mu, groups)
    assert (close["pairwise_accuracy"], close["num_pairs"]) == (pytest.approx(by_hand[0], abs=1e-12), by_hand[1])
    assert by_hand[0] > 0.75
    # the teacher is the label: its tie (items 0 and 1, mu_T = 1.3) leaves the pair out; the student's mu
    # (1.3, 2.0, 2.7) orders the other two pairs as the teacher's (1.3, 1.3, 2.7) does
    tied = teacher_student_agreement([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
                                     [[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], [1.0, 2.0, 3.0], [0, 0, 0])
    assert (tied["pairwise_accuracy"], tied["num_pairs"]) == (1.0, 2)
    assert tied["mean_abs_expected_score_gap"] == pytest.approx(0.7 / 3)
    # the student equal to the teacher: perfect agreement
    same = teacher_student_agreement(teacher, teacher, levels, groups)
    assert same["mean_abs_expected_score_gap"] == 0.0
    assert same["mean_kl_teacher_student"] == pytest.approx(0.0, abs=1e-12)
    assert same["pairwise_accuracy"] == 1.0
    assert "pairwise_accuracy" not in teacher_student_agreement(student, teacher, levels)
    with pytest.raises(ValueError, match="`teacher_probs` must have the shape"):
        teacher_student_agreement(student, teacher[:5], levels)


# ---------------------------------------------------------------- GSB and bootstrap (METHOD sec. 4.4)


def test_gsb_arithmetic():
    # G = 11, S = 6, B = 3: net = (11 - 3) / 20 = 0.4
    result = gsb([1] * 11 + [0] * 6 + [-1] * 3)
    assert result == {"good": 0.55, "same": 0.3, "bad": 0.15, "net": 0.4, "num_judgements": 20}
    # the paper's 41.3%: G = 55%, S = 31.3%, B = 13.7% -> (550 - 137) / 1000
    assert gsb(np.array([1] * 550 + [0] * 313 + [-1] * 137))["net"] == pytest.approx(0.413)
    assert gsb(torch.tensor([-1, -1]))["net"] == -1.0
    with pytest.raises(ValueError, match="`judgements` values"):
        gsb([1, 2])
    with pytest.raises(ValueError, match="`judgements` must not be empty"):
        gsb([])


def net_of(sample):
    return gsb(sample)["net"]


def test_bootstrap_ci_deterministic_covering_and_narrowing():
    rng = np.random.default_rng(17)
    small = rng.choice([1, 0, -1], p=[0.5, 0.3, 0.2], size=100)
    large = rng.choice([1, 0, -1], p=[0.5, 0.3, 0.2], size=2500)
    first = bootstrap_ci(net_of, small, seed=3)
    assert first == bootstrap_ci(net_of, small, seed=3)
    assert first != bootstrap_ci(net_of, small, seed=4)
    assert first["lower"] <= first["estimate"] <= first["upper"]
    assert first["estimate"] == gsb(small)["net"]
    wide = first["upper"] - first["lower"]
    narrow = bootstrap_ci(net_of, large, seed=3)
    assert narrow["upper"] - narrow["lower"] < wide / 2  # about 1/sqrt(25) of the width
    # a lower confidence gives a nested, narrower interval
    ninety = bootstrap_ci(net_of, small, confidence=0.9, seed=3)
    assert first["lower"] <= ninety["lower"] <= ninety["upper"] <= first["upper"]


def test_bootstrap_ci_resamples_whole_groups():
    groups = np.repeat(np.arange(30), np.arange(30) % 4 + 1)  # sizes 1, 2, 3, 4, 1, ...
    item = np.arange(groups.shape[0])
    seen_sizes = []

    def whole_groups(items, groups):
        # each resampled group (one id per draw) is exactly one original group, complete
        for group_id in np.unique(groups):
            members = items[groups == group_id]
            original_group = np.unique(original_groups[members])
            assert len(original_group) == 1
            assert sorted(members) == np.flatnonzero(original_groups == original_group[0]).tolist()
        seen_sizes.append(len(items))
        return 0.0

    original_groups = groups
    bootstrap_ci(whole_groups, item, groups, num_resamples=20, pass_groups=True)
    assert len(set(seen_sizes)) > 1  # resample sizes vary with the drawn groups
    with pytest.raises(ValueError, match="`pass_groups=True` needs `groups`"):
        bootstrap_ci(whole_groups, item, pass_groups=True)


def test_bootstrap_ci_of_grouped_pairwise_accuracy():
    predicted, human, groups = random_grouped_scores(num_items=300, num_groups=60, seed=18)
    result = bootstrap_ci(
        lambda p, h, groups: pairwise_accuracy(p, h, groups)["accuracy"],
        (predicted, human),
        groups,
        num_resamples=200,
        pass_groups=True,
    )
    assert result["estimate"] == pairwise_accuracy(predicted, human, groups)["accuracy"]
    assert result["lower"] < result["estimate"] < result["upper"]
    with pytest.raises(ValueError, match="`data` arrays must share"):
        bootstrap_ci(lambda a, b: 0.0, (predicted, human[:10]))
    with pytest.raises(ValueError, match="`confidence`"):
        bootstrap_ci(net_of, [1, 0], confidence=1.0)
    with pytest.raises(ValueError, match="`num_resamples`"):
        bootstrap_ci(net_of, [1, 0], num_resamples=0)
    with pytest.raises(ValueError, match="`groups` must have the same length"):
        bootstrap_ci(net_of, [1, 0], groups=[0])


def test_gsb_with_ci():
    judgements = np.array([1] * 11 + [0] * 6 + [-1] * 3)
    groups = np.arange(20) // 2
    result = gsb_with_ci(judgements, groups, num_resamples=500, seed=1)
    assert result["net"] == pytest.approx(0.4)
    assert result["good"] == 0.55 and result["num_judgements"] == 20
    assert result["net_lower"] <= 0.4 <= result["net_upper"]
    assert result == gsb_with_ci(judgements, groups, num_resamples=500, seed=1)
    # whole prompts are resampled: with two judgements per prompt the net is the mean of the prompts' nets
    # (1, 1, 1, 1, 1, 0.5, 0, 0, -0.5, -1), whose percentile bootstrap scipy computes on its own draws; both
    # intervals sit on the 0.05 lattice of means of 10 half-points, so they agree within one step
    prompt_nets = [(judgements[2 * g] + judgements[2 * g + 1]) / 2 for g in range(10)]
    assert prompt_nets == [1, 1, 1, 1, 1, 0.5, 0, 0, -0.5, -1]
    reference = scipy.stats.bootstrap((np.array(prompt_nets),), np.mean, method="percentile", n_resamples=20000,
                                      confidence_level=0.95, rng=np.random.default_rng(0)).confidence_interval
    precise = gsb_with_ci(judgements, groups, num_resamples=20000, seed=1)
    assert precise["net_lower"] == pytest.approx(reference.low, abs=0.05 + 1e-9)
    assert precise["net_upper"] == pytest.approx(reference.high, abs=0.05 + 1e-9)
    assert precise["net_lower"] < 0.4 < precise["net_upper"]
    # degenerate judgements: every resample has the same net, so the interval is that point
    for value in (1, 0, -1):
        point = gsb_with_ci(np.full(20, value), groups, num_resamples=200, seed=2)
        assert point["net"] == point["net_lower"] == point["net_upper"] == float(value)


# ---------------------------------------------------------------- evaluate_scores


def pair_list_accuracy_by_hand(predicted_a, predicted_b, outcome) -> dict[str, float | int]:
    """One listed pair at a time: outcome 0 left out, a predicted tie 1/2, else 1 if the higher side won."""
    credit = []
    for a, b, o in zip(predicted_a, predicted_b, outcome, strict=True):
        if o == 0:
            continue
        credit.append(0.5 if a == b else float((a > b) == (o > 0)))
    return {"accuracy": sum(credit) / len(credit), "num_pairs": len(credit)}


def correlations_by_scipy(predicted, human, groups) -> dict[str, float | int | None]:
    """scipy's Spearman, Kendall tau-b and Pearson, globally and averaged over the groups of >= 3 items that are
    not constant in either score."""
    counted = {"spearman": [], "kendall": [], "pearson": []}
    for group in np.unique(groups):
        x, y = predicted[groups == group], human[groups == group]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        counted["spearman"].append(scipy.stats.spearmanr(x, y).statistic)
        counted["kendall"].append(scipy.stats.kendalltau(x, y, variant="b").statistic)
        counted["pearson"].append(scipy.stats.pearsonr(x, y).statistic)
    return {
        "spearman": scipy.stats.spearmanr(predicted, human).statistic,
        "kendall_tau_b": scipy.stats.kendalltau(predicted, human, variant="b").statistic,
        "pearson": scipy.stats.pearsonr(predicted, human).statistic,
        "num_items": len(predicted),
        "group_spearman": float(np.mean(counted["spearman"])),
        "group_kendall_tau_b": float(np.mean(counted["kendall"])),
        "group_pearson": float(np.mean(counted["pearson"])),
        "num_groups": len(np.unique(groups)),
        "num_groups_counted": len(counted["kendall"]),
    }


def test_evaluate_scores_matches_the_individual_metrics():
    """Each entry against an independent reference: brute-force pair loops, scipy correlations, −mean log p[label]
    and the Brier sum in numpy, `brute_force_ece` on the top-level confidence."""
    rng = np.random.default_rng(19)
    num_items, names = 48, ["alignment", "realism"]
    probs = random_probs(num_items, 2, 9, seed=19, sharpness=2.0)
    groups = np.arange(num_items) // 4
    human = rng.integers(0, 9, size=(num_items, 2)) * 0.5 + 1.0  # on the half-point grid
    index_a, index_b = np.arange(0, num_items, 2), np.arange(1, num_items, 2)
    outcome = np.sign(human[index_a] - human[index_b])  # (P, D)
    report = evaluate_scores(
        probs, HALF_POINT_LEVELS, names, groups, human_scores=human, pairs=(index_a, index_b, outcome)
    )
    assert set(report) == {"alignment", "realism", "overall"}
    mu = probs @ HALF_POINT_LEVELS  # (N, D)
    rows = np.arange(num_items)
    for dimension, name in enumerate(names):
        entry = report[name]
        labels = np.round((human[:, dimension] - 1.0) / 0.5).astype(int)
        p = probs[:, dimension]
        assert entry["mean_expected_score"] == pytest.approx(mu[:, dimension].mean())
        accuracy, num_pairs = brute_force_pairwise_accuracy(mu[:, dimension], human[:, dimension], groups)
        assert entry["pairwise_accuracy"] == {"accuracy": pytest.approx(accuracy, abs=1e-12), "num_pairs": num_pairs}
        reference = correlations_by_scipy(mu[:, dimension], human[:, dimension], groups)
        assert reference["num_groups_counted"] > 0
        assert entry["correlations"] == pytest.approx(reference, abs=1e-12)
        assert entry["nll"] == pytest.approx(-np.log(p[rows, labels]).mean(), rel=1e-10)
        one_hot = np.zeros_like(p)
        one_hot[rows, labels] = 1.0
        assert entry["brier"] == pytest.approx(((p - one_hot) ** 2).sum(axis=1).mean(), rel=1e-10)
        correct = (p.argmax(axis=1) == labels).astype(float)
        assert entry["ece"]["ece"] == pytest.approx(brute_force_ece(p.max(axis=1), correct, 15), abs=1e-12)
        # (mostly overconfident here, so the ECE alone hardly depends on the bins): 15 equal-mass bins of 48 items,
        # each the mean confidence and accuracy of its run of the items sorted by confidence
        counts = np.asarray(entry["ece"]["bin_count"]).tolist()
        assert len(counts) == 15 and sorted(counts) == [3] * 12 + [4] * 3
        chunks = np.split(np.argsort(p.max(axis=1)), np.cumsum(counts)[:-1])
        assert entry["ece"]["bin_confidence"] == pytest.approx([p.max(axis=1)[c].mean() for c in chunks])
        assert entry["ece"]["bin_accuracy"] == pytest.approx([correct[c].mean() for c in chunks])
        assert entry["pair_accuracy"] == pytest.approx(
            pair_list_accuracy_by_hand(mu[index_a, dimension], mu[index_b, dimension], outcome[:, dimension])
        )
        assert "pairwise_ece" in entry and "emd" not in entry
    reward = ((mu - 1.0) / 4.0).mean(axis=1)
    assert report["overall"]["mean_reward"] == pytest.approx(reward.mean())
    accuracy, num_pairs = brute_force_pairwise_accuracy(reward, human.mean(axis=1), groups)
    assert report["overall"]["pairwise_accuracy"] == {"accuracy": pytest.approx(accuracy, abs=1e-12),
                                                      "num_pairs": num_pairs}


def test_evaluate_scores_histograms_weights_and_overall_pairs():
    """Histogram entries against scipy (Wasserstein on the levels, Jensen-Shannon distance squared, cross-entropy
    as H(h) + KL(h ‖ p)) and numpy (Brier averaged over the votes); the weighted overall reward's pairs by hand."""
    probs = random_probs(12, 2, 9, seed=20)
    votes = np.random.default_rng(20).integers(1, 4, size=(12, 2, 9))
    outcome = np.array([1, -1, 0, 1, 1, -1])  # (P,): one overall preference per pair
    index_a, index_b = np.arange(0, 12, 2), np.arange(1, 12, 2)
    report = evaluate_scores(
        torch.tensor(probs),
        torch.tensor(HALF_POINT_LEVELS),
        ["aesthetics", "physics"],
        histograms=votes,
        pairs=(index_a, index_b, outcome),
        weights=[3.0, 1.0],
    )
    for dimension, name in enumerate(["aesthetics", "physics"]):
        p, h = probs[:, dimension], votes[:, dimension]
        shares = h / h.sum(axis=1, keepdims=True)
        emd = np.mean([scipy.stats.wasserstein_distance(HALF_POINT_LEVELS, HALF_POINT_LEVELS, pi, hi)
                       for pi, hi in zip(p, h, strict=True)])
        js = np.mean([scipy.spatial.distance.jensenshannon(pi, hi) ** 2 for pi, hi in zip(p, h, strict=True)])
        nll = np.mean([scipy.stats.entropy(si) + scipy.stats.entropy(si, pi)
                       for si, pi in zip(shares, p, strict=True)])
        brier = np.mean([sum(si[label] * ((pi - np.eye(9)[label]) ** 2).sum() for label in range(9))
                         for si, pi in zip(shares, p, strict=True)])
        assert report[name]["emd"] == pytest.approx(emd, rel=1e-10)
        assert report[name]["js_divergence"] == pytest.approx(js, rel=1e-9)
        assert report[name]["nll"] == pytest.approx(nll, rel=1e-10)
        assert report[name]["brier"] == pytest.approx(brier, rel=1e-10)
        assert "ece" not in report[name] and "pairwise_accuracy" not in report[name]
    reward = ((probs @ HALF_POINT_LEVELS - 1.0) / 4.0) @ np.array([0.75, 0.25])
    assert report["overall"]["mean_reward"] == pytest.approx(reward.mean())
    assert report["overall"]["pair_accuracy"] == pytest.approx(
        pair_list_accuracy_by_hand(reward[index_a], reward[index_b], outcome)
    )


def test_evaluate_scores_errors():
    probs = random_probs(4, 2, 3, seed=21)
    levels = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="`dimension_names`"):
        evaluate_scores(probs, levels, ["a"])
    with pytest.raises(ValueError, match="`dimension_names`"):
        evaluate_scores(probs, levels, ["a", "overall"])
    with pytest.raises(ValueError, match="`probs` must have 3 dimension"):
        evaluate_scores(probs[:, 0], levels, ["a"])
    with pytest.raises(ValueError, match="`human_scores` must have shape"):
        evaluate_scores(probs, levels, ["a", "b"], human_scores=np.ones((4, 3)))
    with pytest.raises(ValueError, match="`weights`"):
        evaluate_scores(probs, levels, ["a", "b"], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="`pairs index_a` must index"):
        evaluate_scores(probs, levels, ["a", "b"], pairs=(np.array([0, 4]), np.array([1, 2]), np.array([1, 1])))
    with pytest.raises(ValueError, match="`groups` must have the same length"):
        evaluate_scores(probs, levels, ["a", "b"], groups=[0, 0])


def test_module_doctests():
    results = doctest.testmod(metrics, verbose=False, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert results.failed == 0
    assert results.attempted > 20
