"""The training objectives against values computed by hand (METHOD eqs. 6–10, 13)."""

import math

import pytest
import torch

from training.objectives import (
    bradley_terry_loss,
    clipped_policy_loss,
    gap_loss,
    gdso_rewards,
    group_advantages,
    grpo_score_rewards,
    has_spread,
    k3_kl,
    kl_to_target,
    soft_target,
)
from zreward_diffusers.data import Record
from zreward_diffusers.rubric import Rubric

LEVELS = Rubric().levels_tensor()


def test_gdso_rewards_by_hand():
    # two images, two rollouts; y = (4, 2); span 4
    expected = torch.tensor([[4.0, 1.0], [2.0, 3.0]])
    labels = torch.tensor([4.0, 2.0])
    rewards = gdso_rewards(expected, labels, level_span=4.0, alpha=0.5)
    # means: image 0 -> 2.5, image 1 -> 2.5
    # image 0 rollout 0: 1 - 0/4 + 0.5 * [(4 - 2.5) * (4 - 2) > 0] = 1.5
    # image 0 rollout 1: 1 - 3/4 + 0.5 * [(1 - 2.5) * 2 > 0] = 0.25
    # image 1 rollout 0: 1 - 0 + 0.5 * [(2 - 2.5) * (2 - 4) > 0] = 1.5
    # image 1 rollout 1: 1 - 1/4 + 0.5 * [(3 - 2.5) * (-2) > 0] = 0.75
    torch.testing.assert_close(rewards, torch.tensor([[1.5, 0.25], [1.5, 0.75]]))


def test_gdso_rewards_ties_and_format():
    expected = torch.tensor([[3.0, 3.0], [3.0, 5.0]])
    labels = torch.tensor([3.0, 3.0])  # tied labels: no pairwise term at all
    finished = torch.tensor([[True, False], [True, True]])
    rewards = gdso_rewards(expected, labels, level_span=4.0, alpha=0.5, finished=finished, format_penalty=1.0)
    torch.testing.assert_close(rewards, torch.tensor([[1.0, 0.0], [1.0, 0.5]]))


def test_gdso_rewards_do_not_carry_gradient():
    expected = torch.tensor([[3.0, 3.5]], requires_grad=True)
    assert not gdso_rewards(expected, torch.tensor([3.0]), 4.0).requires_grad


def test_group_advantages_with_floor_and_spread():
    rewards = torch.tensor([[1.0, 3.0], [2.0, 2.0], [1.0, 1.02]])
    advantages = group_advantages(rewards, std_floor=0.05)
    # std of (1, 3) is 1 -> (-1, 1); no spread -> 0; std 0.01 is floored to 0.05 -> (-0.2, 0.2)
    torch.testing.assert_close(advantages, torch.tensor([[-1.0, 1.0], [0.0, 0.0], [-0.2, 0.2]]))
    assert has_spread(rewards).tolist() == [True, False, True]


def test_clipped_policy_loss_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.zeros(1, 3)
    # ratios e^0.5 ≈ 1.6487 (clipped to 1.28 for a positive advantage) and e^-0.5 ≈ 0.6065
    new = torch.tensor([[0.5, -0.5, 7.0]])
    loss = clipped_policy_loss(new, old, torch.tensor([2.0]), mask, 0.2, 0.28)
    assert loss.item() == pytest.approx(-(1.28 * 2 + math.exp(-0.5) * 2), rel=1e-6)
    # a negative advantage: min(ρA, clip(ρ)A) takes the larger ratio's (more negative) value for ρ > 1 and the
    # clipped 0.8 for ρ < 0.8
    loss = clipped_policy_loss(new, old, torch.tensor([-1.0]), mask, 0.2, 0.28)
    assert loss.item() == pytest.approx(-(-math.exp(0.5) - 0.8), rel=1e-6)


def test_clipped_policy_loss_gradient_is_the_reinforce_gradient_on_policy():
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = clipped_policy_loss(log_probs, log_probs.detach(), torch.tensor([0.7]), torch.ones(1, 2))
    loss.backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([[-0.7, -0.7]]))


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    mask = torch.ones(1, 2)
    assert k3_kl(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.0]]), mask).item() == 0.0
    value = k3_kl(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]), mask).item()
    assert value == pytest.approx(math.exp(-0.5) + 0.5 - 1)


def test_gap_loss_by_hand():
    expected = torch.tensor([[3.0, 4.0], [2.5, 4.0], [3.0, 3.0]])
    labels = torch.tensor([4.0, 3.0, 4.0])
    total, count = gap_loss(expected, labels, delta=0.5, bt_weight=0.5, temperature=0.25)
    assert count == 6  # 3 pairs x 2 rollouts

    def huber(x):
        return 0.5 * x * x if abs(x) <= 0.5 else 0.5 * (abs(x) - 0.25)

    def bt(x):
        return math.log1p(math.exp(-x))

    by_hand = 0.0
    # pair (0, 1): target gap 1
    by_hand += huber(0.5 - 1) + 0.5 * bt(0.5 / 0.25) + huber(0.0 - 1) + 0.5 * bt(0.0)
    # pair (0, 2): tie -> Huber to 0 only
    by_hand += huber(0.0) + huber(1.0)
    # pair (1, 2): target gap -1
    by_hand += huber(-0.5 + 1) + 0.5 * bt(0.5 / 0.25) + huber(1.0 + 1) + 0.5 * bt(-1.0 / 0.25)
    assert total.item() == pytest.approx(by_hand, rel=1e-6)


def test_kl_to_target_matches_definition_and_handles_zero_mass():
    target = torch.tensor([0.0, 0.25, 0.75])
    log_probs = torch.tensor([0.2, 0.3, 0.5]).log()
    expected = 0.25 * math.log(0.25 / 0.3) + 0.75 * math.log(0.75 / 0.5)
    assert kl_to_target(target, log_probs).item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_target(target, target.clamp_min(1e-30).log()).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_target_from_histogram_and_from_label():
    record = Record("r", "p", "x.png", "g", labels={"alignment": 3.5}, histograms={"realism": [0, 0, 0, 0, 5, 0,
                                                                                                 0, 0, 0]})
    from_histogram = soft_target(record, "realism", LEVELS)
    assert from_histogram[4].item() > 0.9 and from_histogram.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (from_histogram * LEVELS).sum().item() == pytest.approx(3.0, abs=1e-5)
    from_label = soft_target(record, "alignment", LEVELS)
    assert (from_label * LEVELS).sum().item() == pytest.approx(3.5, abs=1e-5)
    with pytest.raises(ValueError, match="aesthetics"):
        soft_target(record, "aesthetics", LEVELS)


def test_bradley_terry_and_grpo_rewards():
    assert bradley_terry_loss(torch.tensor(1.0), torch.tensor(1.0)).item() == pytest.approx(math.log(2))
    rewards = grpo_score_rewards(torch.tensor([[3.0, 3.5, 5.0]]), torch.tensor([3.0]),
                                 torch.tensor([[True, True, False]]), format_reward=1.0)
    torch.testing.assert_close(rewards, torch.tensor([[2.0, 2.0, 0.0]]))
