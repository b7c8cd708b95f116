"""The baselines' and GDSO's loss functions against independent computations (hand values, plain-Python enumeration).

Each test pins a property that a plausible bug breaks: the preferred side of Bradley-Terry, the " yes" index of
RewardDance, the direction of OPD's KL, the sign and the clip branches of the policy gradient, the k3 estimator's
direction, the advantage's std (population, floored) and the GDSO reward's pairwise share. The trainer tests (tiny
models) check that GDSO's second PPO epoch and reference KL, OPD's exact loss and RewardDance's loss reach the
trainers as written here.
"""

import math

import pytest
import torch

from training.gdso import GDSOConfig, GDSOTrainer
from training.objectives import (
    bradley_terry_loss,
    clipped_policy_loss,
    gdso_rewards,
    group_advantages,
    grpo_score_rewards,
    k3_kl,
    reverse_kl_exact,
    reverse_kl_reinforce,
    rewarddance_loss,
)
from training.opd import OPDConfig, OPDTrainer
from training.scalar_baselines import YES_NO_TOKENS, RewardDanceTrainer, ScalarConfig
from training.sequences import Row, forward_rows
from zreward_diffusers.testing import create_tiny_checkpoint


# ------------------------------------------------------------------------------------------------ Bradley-Terry
def test_bradley_terry_loss_values_by_hand():
    """−log σ(s_a − s_b) against math: log 2 at a tie, log1p(e^−4) for a clear pair, log1p(e^4) when swapped."""
    for value in (-2.0, 0.0, 1.0, 7.5):
        assert bradley_terry_loss(torch.tensor(value), torch.tensor(value)).item() == pytest.approx(math.log(2))
    right = bradley_terry_loss(torch.tensor(3.0), torch.tensor(-1.0)).item()
    wrong = bradley_terry_loss(torch.tensor(-1.0), torch.tensor(3.0)).item()
    assert right == pytest.approx(math.log1p(math.exp(-4.0)), rel=1e-5)
    assert wrong == pytest.approx(math.log1p(math.exp(4.0)), rel=1e-5)
    assert right < 0.02 < 4.0 < wrong
    batch = bradley_terry_loss(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(batch, torch.tensor([math.log1p(math.exp(-0.5)), math.log1p(math.exp(2.0)),
                                                    math.log(2)]))


def test_bradley_terry_gradient_pushes_the_better_score_up():
    """d/ds_a = −σ(s_b − s_a) = −1/(1 + e^(s_a − s_b)) < 0 and d/ds_b = −d/ds_a, by hand."""
    score_a = torch.tensor([3.0, 0.0, -2.0], requires_grad=True)
    score_b = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    bradley_terry_loss(score_a, score_b).sum().backward()
    by_hand = torch.tensor([-1 / (1 + math.exp(4.0)), -0.5, -1 / (1 + math.exp(-3.0))])
    torch.testing.assert_close(score_a.grad, by_hand)
    torch.testing.assert_close(score_b.grad, -by_hand)
    assert (score_a.grad < 0).all()


# ------------------------------------------------------------------------------------------------ RewardDance
def yes_no(p_yes: list[float]) -> torch.Tensor:
    """log (P(no), P(yes)) rows, in the reader's token order."""
    return torch.tensor([[math.log(1 - p), math.log(p)] for p in p_yes])


def test_rewarddance_reads_no_then_yes():
    assert YES_NO_TOKENS == (" no", " yes")


def test_rewarddance_loss_by_hand():
    """Soft-target cross-entropy against math: p_yes = 0.8 gives −log 0.8 (t = 1), −(0.25 log 0.8 + 0.75 log 0.2)
    (t = 0.25) and −log 0.2 (t = 0)."""
    losses = rewarddance_loss(yes_no([0.8, 0.8, 0.8, 0.3]), torch.tensor([1.0, 0.25, 0.0, 0.5]))
    by_hand = [-math.log(0.8), -(0.25 * math.log(0.8) + 0.75 * math.log(0.2)), -math.log(0.2),
               -(0.5 * math.log(0.3) + 0.5 * math.log(0.7))]
    torch.testing.assert_close(losses, torch.tensor(by_hand))


def test_rewarddance_gradient_moves_p_yes_towards_the_target():
    """On logits, d loss / d logit_yes = P(yes) − t (softmax cross-entropy, by hand); SGD steps bring P(yes) to t."""
    targets = torch.tensor([1.0, 0.25, 0.0, 0.6])
    logits = torch.tensor([[0.0, 0.0], [-1.0, 1.0], [0.5, 0.2], [2.0, -1.0]], requires_grad=True)
    p_yes = [1 / (1 + math.exp(a - b)) for a, b in logits.tolist()]
    rewarddance_loss(logits.log_softmax(-1), targets).sum().backward()
    by_hand = torch.tensor([[t - p, p - t] for p, t in zip(p_yes, targets.tolist(), strict=True)])
    torch.testing.assert_close(logits.grad, by_hand)

    with torch.no_grad():
        stepped = logits - 0.5 * logits.grad
    new_p_yes = stepped.softmax(-1)[:, 1]
    assert ((new_p_yes - targets).abs() < (torch.tensor(p_yes) - targets).abs()).all()
    fitted = logits.detach()[[1, 3]].clone().requires_grad_(True)  # t = 1 and t = 0 have no finite optimum
    optimizer = torch.optim.SGD([fitted], lr=2.0)
    for _ in range(300):
        optimizer.zero_grad()
        rewarddance_loss(fitted.log_softmax(-1), targets[[1, 3]]).sum().backward()
        optimizer.step()
    torch.testing.assert_close(fitted.softmax(-1)[:, 1].detach(), torch.tensor([0.25, 0.6]), atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------------ GRPO
def test_grpo_score_rewards_by_hand():
    """1[|s − y| ≤ 0.5] + w · valid, written out per sample: hits (at and inside the tolerance), misses, invalid."""
    sampled = torch.tensor([[3.0, 3.5, 2.5, 3.6, 5.0], [1.5, 2.0, 1.0, 4.5, 1.5]])
    labels = torch.tensor([3.0, 1.5])
    valid = torch.tensor([[True, True, True, True, False], [True, True, True, True, False]])
    # image 0 (y = 3): hit, hit at +0.5, hit at −0.5, miss by 0.6, invalid (5.0 would miss anyway)
    # image 1 (y = 1.5): hit, hit at +0.5, hit at −0.5, miss by 3, invalid although its level would hit
    rewards = grpo_score_rewards(sampled, labels, valid, format_reward=0.25)
    torch.testing.assert_close(rewards, torch.tensor([[1.25, 1.25, 1.25, 0.25, 0.0], [1.25, 1.25, 1.25, 0.25, 0.0]]))
    no_format = grpo_score_rewards(sampled, labels, valid, format_reward=0.0)
    torch.testing.assert_close(no_format, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]]))
    default = grpo_score_rewards(sampled, labels, valid)  # format_reward 1
    torch.testing.assert_close(default, torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0], [2.0, 2.0, 2.0, 1.0, 0.0]]))
    narrow = grpo_score_rewards(sampled, labels, valid, format_reward=0.0, tolerance=0.0)
    torch.testing.assert_close(narrow, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]))


# ------------------------------------------------------------------------------------------------ OPD
def kl_by_enumeration(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ_s p(s) (log p(s) − log q(s)) in plain Python."""
    return sum(ps * (math.log(ps) - math.log(qs)) for ps, qs in zip(p, q, strict=True) if ps > 0)


def reverse_kl_gradient(student_logits: list[float], teacher: list[float]) -> list[float]:
    """d KL(softmax(z) ‖ p_T) / d z_i = p_i (log p_i − log p_T(i) − KL), derived by hand, in plain Python."""
    top = max(student_logits)
    weights = [math.exp(z - top) for z in student_logits]
    p = [w / sum(weights) for w in weights]
    kl = kl_by_enumeration(p, teacher)
    return [pi * (math.log(pi) - math.log(ti) - kl) for pi, ti in zip(p, teacher, strict=True)]


def test_reverse_kl_exact_is_student_first():
    """Closed form against enumeration: KL(p_S ‖ p_T), not KL(p_T ‖ p_S) (they differ on this example)."""
    student, teacher = [0.5, 0.5], [0.9, 0.1]
    reverse = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert abs(reverse - forward) > 0.1
    value = reverse_kl_exact(torch.tensor([student]).log(), torch.tensor([teacher]).log()).item()
    assert value == pytest.approx(reverse, rel=1e-6)

    generator = torch.Generator().manual_seed(0)
    log_s = torch.randn(4, 6, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)
    log_t = torch.randn(4, 6, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)
    by_hand = [kl_by_enumeration(s, t) for s, t in zip(log_s.exp().tolist(), log_t.exp().tolist(), strict=True)]
    torch.testing.assert_close(reverse_kl_exact(log_s, log_t), torch.tensor(by_hand, dtype=torch.float64))
    assert reverse_kl_exact(log_s, log_s).abs().max().item() < 1e-12


def test_reverse_kl_exact_gradient_by_hand():
    """The gradient w.r.t. the student's logits is the reverse KL's, derived by hand."""
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.7]], dtype=torch.float64, requires_grad=True)
    teacher = [0.1, 0.3, 0.2, 0.25, 0.15]
    reverse_kl_exact(logits.log_softmax(-1), torch.tensor([teacher], dtype=torch.float64).log()).sum().backward()
    by_hand = reverse_kl_gradient(logits[0].tolist(), teacher)
    torch.testing.assert_close(logits.grad[0], torch.tensor(by_hand, dtype=torch.float64))


@pytest.mark.parametrize("num_samples", [1, 2])
def test_reverse_kl_reinforce_is_unbiased_for_the_reverse_kl_gradient(num_samples):
    """The sampled surrogate's gradient, averaged exactly over every draw of `num_samples` tokens from p_S (weighted
    by its probability), equals the reverse KL's gradient derived by hand."""
    logits = torch.tensor([[0.5, -0.3, 1.2, -1.0]], dtype=torch.float64, requires_grad=True)
    teacher = [0.4, 0.3, 0.2, 0.1]
    log_t = torch.tensor([teacher], dtype=torch.float64).log()
    p = logits.detach().softmax(-1)[0].tolist()
    vocab = range(len(teacher))
    draws = [(s,) for s in vocab] if num_samples == 1 else [(s, r) for s in vocab for r in vocab]
    expectation = torch.zeros(len(teacher), dtype=torch.float64)
    for draw in draws:
        logits.grad = None
        reverse_kl_reinforce(logits.log_softmax(-1), log_t, torch.tensor([draw])).sum().backward()
        expectation += math.prod(p[s] for s in draw) * logits.grad[0]
    torch.testing.assert_close(expectation, torch.tensor(reverse_kl_gradient(logits[0].tolist(), teacher),
                                                         dtype=torch.float64))


def test_reverse_kl_reinforce_value_on_fixed_samples():
    """Per row, −mean_s[(log p_T(s) − log p_S(s)) log p_S(s)] over the drawn tokens, written out by hand."""
    student, teacher = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]
    value = reverse_kl_reinforce(torch.tensor([student]).log(), torch.tensor([teacher]).log(), torch.tensor([[0, 2]]))
    first = (math.log(0.2) - math.log(0.5)) * math.log(0.5)  # token 0: reward log p_T − log p_S, times log p_S
    second = (math.log(0.6) - math.log(0.2)) * math.log(0.2)  # token 2
    by_hand = -(first + second) / 2
    assert value.item() == pytest.approx(by_hand, rel=1e-5)


# ------------------------------------------------------------------------------------------------ GDSO
EPS_LOW, EPS_HIGH = 0.2, 0.28
# ratios per token (old log-probs 0): far above 1 + ε_high, inside, below 1 − ε_low, above, masked out
RATIOS = [[1.6, 1.1, 0.5, 1.3, 3.0], [1.6, 0.95, 0.5, 0.7, 0.1]]
MASK = [[1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0]]
ADVANTAGES = [1.5, -2.0]


def test_clipped_policy_loss_by_hand_with_both_clips_active():
    """−Σ min(ρA, clip(ρ)A) with plain-Python loops, and the expected branch per token written out."""
    log_probs = torch.tensor(RATIOS).log()
    loss = clipped_policy_loss(log_probs, torch.zeros(2, 5), torch.tensor(ADVANTAGES), torch.tensor(MASK),
                               EPS_LOW, EPS_HIGH)
    by_hand = 0.0
    for ratios, mask, advantage in zip(RATIOS, MASK, ADVANTAGES, strict=True):
        for ratio, m in zip(ratios, mask, strict=True):
            clipped = min(max(ratio, 1 - EPS_LOW), 1 + EPS_HIGH)
            by_hand -= m * min(ratio * advantage, clipped * advantage)
    # A = 1.5: 1.6 → clipped 1.28; 1.1 and 0.5 unclipped (the min keeps the pessimistic ρA); 1.3 → 1.28
    # A = −2: 1.6 and 0.95 unclipped (ρA is the smaller); 0.5 and 0.7 → clipped 0.8
    written_out = -(1.5 * (1.28 + 1.1 + 0.5 + 1.28) - 2.0 * (1.6 + 0.95 + 0.8 + 0.8))
    assert by_hand == pytest.approx(written_out)
    assert loss.item() == pytest.approx(written_out, rel=1e-6)


def test_clipped_policy_loss_gradient_is_zero_on_clipped_tokens():
    """d loss / d log π_t = −A ρ_t where the unclipped branch is the min, 0 where the clipped one is (and masked)."""
    log_probs = torch.tensor(RATIOS).log().requires_grad_(True)
    clipped_policy_loss(log_probs, torch.zeros(2, 5), torch.tensor(ADVANTAGES), torch.tensor(MASK), EPS_LOW,
                        EPS_HIGH).backward()
    by_hand = torch.tensor([[0.0, -1.5 * 1.1, -1.5 * 0.5, 0.0, 0.0], [2.0 * 1.6, 2.0 * 0.95, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(log_probs.grad, by_hand)
    # on policy (ρ = 1) every masked token gets −A: a positive advantage raises the token's log-probability
    on_policy = torch.tensor(RATIOS).log().requires_grad_(True)
    clipped_policy_loss(on_policy, on_policy.detach(), torch.tensor(ADVANTAGES), torch.tensor(MASK)).backward()
    torch.testing.assert_close(on_policy.grad, torch.tensor([[-1.5] * 4 + [0.0], [2.0] * 4 + [0.0]]))


def test_k3_kl_by_hand_and_its_expectation_is_the_kl_to_the_reference():
    """k3 = e^(log π_ref − log π) − (log π_ref − log π) − 1 per token by hand; ≥ 0, 0 at equality; and its mean
    under π is KL(π ‖ π_ref) (exact enumeration over a small vocabulary), not KL(π_ref ‖ π)."""
    log_probs = torch.tensor([[-1.0, -2.0, -0.3]])
    ref = torch.tensor([[-1.5, -1.0, -5.0]])
    value = k3_kl(log_probs, ref, torch.tensor([[1.0, 1.0, 0.0]])).item()
    assert value == pytest.approx((math.exp(-0.5) + 0.5 - 1) + (math.exp(1.0) - 1 - 1), rel=1e-6)
    assert k3_kl(log_probs, log_probs, torch.ones(1, 3)).item() == 0.0

    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 16, 6, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)
    one = torch.ones(1, 1)
    assert all(k3_kl(a[i:i + 1, s:s + 1], b[i:i + 1, s:s + 1], one).item() >= 0 for i in range(16) for s in range(6))
    pi, pi_ref = a.exp()[0].tolist(), b.exp()[0].tolist()
    expectation = sum(p * k3_kl(a[:1, s:s + 1], b[:1, s:s + 1], torch.ones(1, 1)).item() for s, p in enumerate(pi))
    assert expectation == pytest.approx(kl_by_enumeration(pi, pi_ref), rel=1e-9)
    assert abs(kl_by_enumeration(pi, pi_ref) - kl_by_enumeration(pi_ref, pi)) > 0.05


def test_group_advantages_population_std_and_floor_by_hand():
    """(R − mean) / max(population std, floor) written out: std of (1, 2, 3, 6) is √3.5; (1, 1.02, 1.01) floors."""
    advantages = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]]), std_floor=0.05)
    root = math.sqrt(3.5)
    torch.testing.assert_close(advantages, torch.tensor([[-2 / root, -1 / root, 0.0, 3 / root], [0.0] * 4]))
    floored = group_advantages(torch.tensor([[1.0, 1.02, 1.01]]), std_floor=0.05)
    torch.testing.assert_close(floored, torch.tensor([[-0.2, 0.2, 0.0]]), atol=1e-5, rtol=1e-4)
    unfloored = group_advantages(torch.tensor([[1.0, 1.02, 1.01]]), std_floor=1e-4)
    std = math.sqrt((0.01 ** 2 + 0.01 ** 2) / 3)
    torch.testing.assert_close(unfloored, torch.tensor([[-0.01 / std, 0.01 / std, 0.0]]), atol=1e-3, rtol=1e-3)


def test_gdso_rewards_pairwise_share_with_ties_by_hand():
    """Eq. (6) written out on three images, labels (5, 3, 3): tied images are not compared with each other, a
    rollout can order half of its pairs right (share 0.5), an unfinished chain pays the format penalty, and a
    rollout level with the other image's mean orders nothing."""
    expected = torch.tensor([[4.5, 3.0], [3.0, 4.0], [2.0, 3.0]])
    labels = torch.tensor([5.0, 3.0, 3.0])
    finished = torch.tensor([[True, True], [True, False], [True, True]])
    rewards = gdso_rewards(expected, labels, level_span=4.0, alpha=0.5, finished=finished, format_penalty=1.0)
    # rollout means μ̄ = (3.75, 3.5, 2.5)
    # image 0 (y = 5) vs images 1 and 2 (y = 3): right when μ > μ̄_l
    #   4.5: 1 − 0.5/4 + 0.5 · 2/2 = 1.375;  3.0: 1 − 2/4 + 0.5 · 1/2 (only above 2.5) = 0.75
    # image 1 (y = 3) vs image 0 only (image 2 ties): right when μ < 3.75
    #   3.0: 1 + 0.5 = 1.5;  4.0: 1 − 1/4 + 0 − 1 (unfinished) = −0.25
    # image 2 (y = 3) vs image 0 only: 2.0: 1 − 1/4 + 0.5 = 1.25;  3.0: 1 + 0.5 = 1.5
    torch.testing.assert_close(rewards, torch.tensor([[1.375, 0.75], [1.5, -0.25], [1.25, 1.5]]))
    no_order = gdso_rewards(expected, labels, level_span=4.0, alpha=0.0)
    torch.testing.assert_close(no_order, torch.tensor([[0.875, 0.5], [1.0, 0.75], [0.75, 1.0]]))
    # labels (5, 3), μ̄ = (3, 3): image 1's μ = 3 equals μ̄_0, which orders nothing (strictly right only)
    level = gdso_rewards(torch.tensor([[4.0, 2.0], [3.0, 3.0]]), torch.tensor([5.0, 3.0]), 4.0, alpha=0.5)
    torch.testing.assert_close(level, torch.tensor([[1 - 1 / 4 + 0.5, 1 - 3 / 4], [1.0, 1.0]]))


# ------------------------------------------------------------------------------------------------ GDSO trainer
SMALL_DATA = dict(train_data={"num_groups": 3, "start": 0}, eval_data={"num_groups": 2, "start": 1000})


def fixed_rollout(trainer, step: int = 0) -> dict:
    """The step's first unit with fixed, distinct reasoning chains, all finished (the chains are not sampled)."""
    unit, records, dimension = trainer.step_units(step)[0]
    rollout = trainer.rollouts(step, unit, records, dimension)
    rollout["rows"] = [Row(r.image, r.prompt, r.dimension, f"chain {i} on {r.prompt}")
                       for i, r in enumerate(rollout["rows"])]
    rollout["finished"] = torch.ones(len(records), trainer.config.num_rollouts, dtype=torch.bool)
    rollout["num_tokens"] = sum(sum(trainer.encoder.encode_row(row)[1]) for row in rollout["rows"])
    return rollout


def advantages_by_hand(expected: list[list[float]], labels: list[float], span: float, alpha: float,
                       std_floor: float, min_std: float) -> tuple[list[list[float]], list[bool]]:
    """Eqs. (6)–(7) and dynamic sampling in plain Python (all chains finished): the advantages (0 for an image
    without reward spread) and which images keep their spread."""
    means = [sum(row) / len(row) for row in expected]
    advantages, spread = [], []
    for j, row in enumerate(expected):
        others = [lab for lab in range(len(labels)) if labels[lab] != labels[j]]
        rewards = []
        for mu in row:
            right = sum((mu - means[lab]) * (labels[j] - labels[lab]) > 0 for lab in others)
            rewards.append(1 - abs(mu - labels[j]) / span + (alpha * right / len(others) if others else 0.0))
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        spread.append(std >= min_std)
        advantages.append([(r - mean) / max(std, std_floor) if spread[-1] else 0.0 for r in rewards])
    return advantages, spread


def test_gdso_off_policy_epoch_terms_by_hand(tiny_base, tmp_path):
    """`unit_terms` on a fixed rollout after the policy moved (a second PPO epoch): the clipped PG sum and the k3 KL
    to the starting model against plain-Python loops over the model's per-token log-probabilities."""
    config = GDSOConfig(base=tiny_base, output_dir=str(tmp_path), groups_per_step=1, num_rollouts=3,
                        max_new_tokens=4, ppo_epochs=2, kl_beta=0.1, eps_low=0.02, eps_high=0.03, log_with=None,
                        **SMALL_DATA)
    trainer = GDSOTrainer(config)
    rollout = fixed_rollout(trainer)
    read_ids = trainer.encoder.read_token_ids
    with torch.no_grad():
        batch = trainer.encoder(rollout["rows"])
        at_rollout = forward_rows(trainer.unwrapped(), batch, read_ids).score_log_probs.tolist()
    first = trainer.unit_terms(0, rollout, None)
    assert first["kl_ref"].item() == 0.0  # the policy is still the reference
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trainer.unwrapped().parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    second = trainer.unit_terms(0, rollout, first["behaviour"])

    with torch.no_grad():
        out = forward_rows(trainer.unwrapped(), batch, read_ids)
        ref = forward_rows(trainer.reference, batch, read_ids).token_log_probs.tolist()
    levels = trainer.levels.tolist()
    num_images, rollouts = len(rollout["labels"]), config.num_rollouts
    # the advantages are the rollout-time ones (PPO, GRPO): μ read by the model before it moved
    mus = [sum(math.exp(lp) * v for lp, v in zip(row, levels, strict=True)) for row in at_rollout]
    expected = [mus[j * rollouts:(j + 1) * rollouts] for j in range(num_images)]
    advantages, spread = advantages_by_hand(expected, rollout["labels"].tolist(), levels[-1] - levels[0], config.alpha,
                                    config.std_floor, config.min_reward_std)
    new, old, mask = out.token_log_probs.tolist(), first["log_probs"].tolist(), out.token_mask.tolist()
    pg, pg_tokens, clipped, k3 = 0.0, 0.0, 0, 0.0
    for row in range(num_images * rollouts):
        advantage = advantages[row // rollouts][row % rollouts]
        for t, m in enumerate(mask[row]):
            if not m:
                continue
            ratio = math.exp(new[row][t] - old[row][t])
            bounded = min(max(ratio, 1 - config.eps_low), 1 + config.eps_high)
            pg -= min(ratio * advantage, bounded * advantage)
            pg_tokens += spread[row // rollouts]
            clipped += bounded * advantage < ratio * advantage
            log_ratio = ref[row][t] - new[row][t]
            k3 += math.exp(log_ratio) - log_ratio - 1
    assert clipped > 0 and any(spread)  # the clip is exercised
    assert second["pg"].item() == pytest.approx(pg, rel=1e-4, abs=1e-5)
    assert second["pg_tokens"] == pg_tokens
    assert second["kl_ref"].item() == pytest.approx(k3, rel=1e-4) and k3 > 0
    assert sum(map(sum, mask)) == rollout["num_tokens"]


def test_gdso_two_ppo_epochs_take_an_inner_step_and_weigh_the_reference_kl(tiny_base, tmp_path):
    """With `ppo_epochs=2` a step updates the model once inside `training_step` (and once more by the loop), and its
    logged loss is L_PG + λ_pt L_pt + λ_gap L_gap + β_KL · k3 / tokens, each recomputed from `unit_terms` at the
    updated model against the first epoch's log-probabilities."""
    config = GDSOConfig(base=tiny_base, output_dir=str(tmp_path), groups_per_step=1, num_rollouts=3,
                        max_new_tokens=4, ppo_epochs=2, kl_beta=0.5, pointwise_weight=0.7, lr=1e-2, warmup_steps=0,
                        log_with=None, **SMALL_DATA)
    trainer = GDSOTrainer(config)
    rollout = fixed_rollout(trainer)
    trainer.rollouts = lambda *args: {key: value for key, value in rollout.items()}
    behaviour = trainer.unit_terms(0, rollout, None)["behaviour"]
    trainer.optimizer.zero_grad(set_to_none=True)
    before = {name: p.detach().clone() for name, p in trainer.unwrapped().named_parameters()}
    logs = trainer.training_step(0)
    after = dict(trainer.unwrapped().named_parameters())
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the inner optimizer step

    terms = trainer.unit_terms(0, rollout, behaviour)
    assert terms["kl_ref"].item() > 0
    by_hand = (terms["pg"].item() / max(terms["pg_tokens"], 1.0)
               + config.pointwise_weight * terms["pointwise"].item() / terms["num_rows"]
               + config.gap_weight * terms["gap"].item() / terms["gap_count"]
               + config.kl_beta * terms["kl_ref"].item() / rollout["num_tokens"])
    assert logs["loss"] == pytest.approx(by_hand, rel=1e-4)


# ------------------------------------------------------------------------------------------------ OPD trainer
def test_opd_trainer_exact_loss_is_the_reverse_kl_by_enumeration(tmp_path, monkeypatch):
    """The OPD trainer's `exact` loss on a batch of every unit (order-free) is the mean over units of
    Σ_s p_S(s) log(p_S(s) / p_T(s)) over the vocabulary, enumerated in plain Python from the two models' reads.
    The value checked is the one handed to `accelerator.backward` (× world size 1), not the logged copy."""
    create_tiny_checkpoint(tmp_path / "teacher", seed=0)
    create_tiny_checkpoint(tmp_path / "student", seed=1)
    config = OPDConfig(base=str(tmp_path / "student"), teacher=str(tmp_path / "teacher"),
                       output_dir=str(tmp_path / "out"), estimator="exact", dimensions=["alignment", "realism"],
                       log_with=None, train_data={"num_groups": 1, "start": 0}, eval_data={"num_groups": 1})
    trainer = OPDTrainer(config)
    trainer.config.batch_size = len(trainer.units)  # one permutation of all units: the mean is over every unit
    with torch.no_grad():  # a peaked teacher, so that the two directions of the KL differ clearly
        trainer.teacher.get_output_embeddings().weight.mul_(8.0)
    records = trainer.train_set.records
    read_ids = trainer.encoder.read_token_ids
    with torch.no_grad():
        batch = trainer.encoder([Row(n, records[n].prompt, d) for n, d in trainer.units])
        student = forward_rows(trainer.unwrapped(), batch, read_ids).answer_log_probs.exp().tolist()
        teacher = forward_rows(trainer.teacher, batch, read_ids).answer_log_probs.exp().tolist()
    reverse = [kl_by_enumeration(s, t) for s, t in zip(student, teacher, strict=True)]
    forward = [kl_by_enumeration(t, s) for s, t in zip(student, teacher, strict=True)]
    assert abs(sum(reverse) - sum(forward)) > 0.01 * sum(reverse)
    backpropagated = []
    backward = trainer.accelerator.backward

    def recording_backward(loss, **kwargs):
        backpropagated.append(loss.detach().item())
        return backward(loss, **kwargs)

    monkeypatch.setattr(trainer.accelerator, "backward", recording_backward)
    logs = trainer.training_step(0)
    assert trainer.world_size == 1 and len(backpropagated) == 1
    assert backpropagated[0] == pytest.approx(sum(reverse) / len(reverse), rel=1e-4)
    assert backpropagated[0] != pytest.approx(sum(forward) / len(forward), rel=1e-3)
    assert logs["loss"] == pytest.approx(sum(reverse) / len(reverse), rel=1e-4)
    assert logs["reverse_kl"] == pytest.approx(sum(reverse) / len(reverse), rel=1e-4)


# ------------------------------------------------------------------------------------------------ RewardDance trainer
def test_rewarddance_trainer_loss_and_steps_by_hand(tiny_base, tmp_path):
    """The RewardDance trainer on a batch of every labelled unit: its loss is the soft-target cross-entropy of
    P(" yes") against P(" no"), both looked up by token id in the full-vocabulary read; its scores are P(" yes");
    and a few optimizer steps bring P(" yes") closer to the targets."""
    config = ScalarConfig(base=tiny_base, output_dir=str(tmp_path), lr=3e-3, warmup_steps=0, log_with=None,
                          **SMALL_DATA)
    trainer = RewardDanceTrainer(config)
    records, levels = trainer.train_set.records, trainer.levels.tolist()
    units = [(n, d) for n, r in enumerate(records) for d in trainer.dimensions if r.label(d) is not None]
    trainer.config.batch_size = len(units)  # one permutation of all units each step
    tokenizer = trainer.processor.tokenizer
    yes, no = (tokenizer.encode(f"Answer: {word}", add_special_tokens=False)[-1] for word in ("yes", "no"))
    targets = [(records[n].label(d) - levels[0]) / (levels[-1] - levels[0]) for n, d in units]
    rows = [Row(n, records[n].prompt, d) for n, d in units]

    def p_yes() -> list[float]:
        with torch.no_grad():
            out = trainer.forward(trainer.encoder, rows, trainer.unwrapped())
        return [1 / (1 + math.exp(row[no] - row[yes])) for row in out.answer_log_probs.tolist()], out

    probs, out = p_yes()
    torch.testing.assert_close(trainer.scalar_scores(out), torch.tensor(probs), atol=1e-5, rtol=1e-5)
    losses = [-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(probs, targets, strict=True)]
    swapped = [-(t * math.log(1 - p) + (1 - t) * math.log(p)) for p, t in zip(probs, targets, strict=True)]
    assert abs(sum(losses) - sum(swapped)) > 1e-3 * sum(losses)
    errors = [sum(abs(p - t) for p, t in zip(probs, targets, strict=True)) / len(units)]
    logs = trainer.training_step(0)
    assert logs["loss"] == pytest.approx(sum(losses) / len(units), rel=1e-4)
    assert logs["p_yes_abs_error"] == pytest.approx(errors[0], rel=1e-4)
    for step in range(1, 4):
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        errors.append(sum(abs(p - t) for p, t in zip(p_yes()[0], targets, strict=True)) / len(units))
        trainer.training_step(step)
    assert errors[-1] < 0.8 * errors[0]


def test_every_ppo_epoch_uses_the_rollout_time_policy(tiny_base, tmp_path):
    """With 3 PPO epochs the model moves twice inside a step, yet epochs 2 and 3 both take their ratio to the
    log-probs, and keep the advantages, that epoch 1 read at rollout time (not the previous epoch's)."""
    config = GDSOConfig(base=tiny_base, output_dir=str(tmp_path), groups_per_step=1, num_rollouts=3,
                        max_new_tokens=4, ppo_epochs=3, lr=1e-2, warmup_steps=0, log_with=None, **SMALL_DATA)
    trainer = GDSOTrainer(config)
    rollout = fixed_rollout(trainer)
    trainer.rollouts = lambda *args: {key: value for key, value in rollout.items()}
    calls, unit_terms = [], trainer.unit_terms

    def recorded(step, unit_rollout, old):
        terms = unit_terms(step, unit_rollout, old)
        calls.append((old, terms))
        return terms

    trainer.unit_terms = recorded
    trainer.training_step(0)
    assert [old is None for old, _ in calls] == [True, False, False]
    at_rollout = calls[0][1]
    for old, _ in calls[1:]:
        for key in ("log_probs", "advantages", "spread"):
            assert torch.equal(old[key], at_rollout["behaviour"][key]), key
    assert not torch.equal(calls[1][1]["log_probs"], at_rollout["log_probs"])  # the model did move in between
