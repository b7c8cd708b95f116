"""The training objectives of the teacher, the student and the baselines, as pure tensor functions.

Equations and defaults follow Z-Reward (arXiv 2606.09076) as reconstructed in docs/method.md, sections 'Teacher',
'Student: RISD' and 'Baselines', whose equation numbers are used here: the GDSO reward (eq. 6), the advantage with a
std floor (eq. 7, after GRPO arXiv 2402.03300 and DAPO arXiv 2503.14476), the clipped token-level policy gradient
(eq. 8, DAPO's clip-higher), the direct pointwise KL (eq. 9, DeQA-Score arXiv 2501.11561) and pairwise gap terms
(eq. 10), the RISD loss (eq. 13) and the baselines' losses. Every function returns *sums* and the counts they are over
where a loop must normalise across processes (a token-level mean over the global batch is a sum of local sums divided
by a global count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zreward_diffusers.data import Record
from zreward_diffusers.distributions import gaussian_soft_target, histogram_soft_target


def soft_target(record: Record, dimension: str, levels: torch.Tensor, epsilon: float = 0.1,
                sigma: float = 0.5) -> torch.Tensor:
    """The record's target distribution `(K,)` on `dimension`: q = 0.9 h + 0.1 g_σ(ȳ) from its annotator histogram,
    else the mean-corrected discretised Gaussian around its label (DeQA-Score)."""
    if dimension in record.histograms:
        histogram = torch.tensor(record.histograms[dimension], dtype=torch.float64)
        return histogram_soft_target(histogram, levels.double(), epsilon=epsilon, sigma=sigma).float()
    label = record.label(dimension)
    if label is None:
        raise ValueError(f"record {record.record_id!r} has neither a histogram nor a label on {dimension!r}")
    return gaussian_soft_target(float(label), levels.double(), sigma=sigma).float()


def kl_to_target(target: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per row for targets `q` `(..., K)` and model log-probabilities `log p` `(..., K)`; 0·log 0 = 0."""
    log_target = torch.where(target > 0, target.clamp_min(1e-38).log(), torch.zeros_like(target))
    return (target * (log_target - log_probs)).sum(-1)


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    return F.huber_loss(x, torch.zeros_like(x), delta=delta, reduction="none")


# ------------------------------------------------------------------------------------------------ GDSO
def gdso_rewards(expected: torch.Tensor, labels: torch.Tensor, level_span: float, alpha: float = 0.5,
                 finished: torch.Tensor | None = None, format_penalty: float = 1.0) -> torch.Tensor:
    """Eq. (6) of docs/method.md for one prompt group: `expected` μ `(N, G)` (N images, G rollouts), `labels` y `(N,)`.

    R_ij = 1 − |μ_ij − y_j| / (v_K − v_1) + α · share of the group's other images l with y_l ≠ y_j that rollout i
    of image j orders as the labels do against l's rollout mean μ̄_l (no share, no term, when there are none)
    − format_penalty · [rollout i did not finish its reasoning]. No gradient flows through R.
    """
    expected, labels = expected.detach(), labels.to(expected)
    reward = 1.0 - (expected - labels[:, None]).abs() / level_span
    mean = expected.mean(dim=1)  # μ̄_l
    label_gap = labels[:, None] - labels[None, :]  # (j, l): y_j − y_l
    others = label_gap != 0
    agree = ((expected[:, :, None] - mean[None, None, :]) * label_gap[:, None, :]) > 0  # (j, i, l)
    counts = others.sum(dim=1)  # |P_j|
    share = (agree & others[:, None, :]).sum(dim=2) / counts.clamp_min(1)[:, None]
    reward = reward + alpha * share
    if finished is not None:
        reward = reward - format_penalty * (~finished.to(torch.bool)).to(reward)
    return reward


def group_advantages(rewards: torch.Tensor, std_floor: float = 0.05) -> torch.Tensor:
    """Eq. (7) of docs/method.md: (R − mean_i R) / max(std_i R, σ_min) over each image's G rollouts (last dimension).

    The std is the population std (GRPO's group statistics over the G samples drawn)."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, correction=0, keepdim=True)
    return (rewards - mean) / std.clamp_min(std_floor)


def has_spread(rewards: torch.Tensor, min_std: float = 1e-3) -> torch.Tensor:
    """DAPO's dynamic sampling: inputs whose rollout rewards vary (`(N,)` bool); the others carry no signal."""
    return rewards.std(dim=-1, correction=0) >= min_std


def clipped_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.28) -> torch.Tensor:
    """Eq. (8) of docs/method.md, summed over the `mask`ed tokens: −Σ_t min(ρ_t Â, clip(ρ_t, 1 − ε_low, 1 + ε_high) Â).

    `log_probs`, `old_log_probs`, `mask`: `(B, S)`; `advantages`: `(B,)`. Divide by the global token count for DAPO's
    token-level normalisation.
    """
    ratio = (log_probs - old_log_probs).exp()
    advantages = advantages[:, None].to(ratio)
    objective = torch.minimum(ratio * advantages, ratio.clamp(1 - eps_low, 1 + eps_high) * advantages)
    return -(objective * mask).sum()


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO's k3 estimator of KL(π_θ ‖ π_ref), summed over `mask`ed tokens: π_ref/π_θ − log(π_ref/π_θ) − 1."""
    log_ratio = ref_log_probs - log_probs
    return ((log_ratio.exp() - log_ratio - 1) * mask).sum()


def gap_loss(expected: torch.Tensor, labels: torch.Tensor, delta: float = 0.5, bt_weight: float = 0.5,
             temperature: float = 0.25) -> tuple[torch.Tensor, int]:
    """Eq. (10) of docs/method.md, summed over pairs: `(sum, number of terms)` for μ `(N, G)` and labels y `(N,)`.

    Every unordered pair (j, l) of the group is paired rollout by rollout (i with i): Huber_δ((μ_ij − μ_il) −
    (y_j − y_l)) + η · (−log σ(sgn(y_j − y_l) (μ_ij − μ_il) / T)); tied labels keep only the Huber term (target 0).
    """
    labels = labels.to(expected)
    first, second = torch.triu_indices(len(labels), len(labels), offset=1, device=expected.device)
    diff = expected[first] - expected[second]  # (P, G)
    target = (labels[first] - labels[second])[:, None]
    loss = huber(diff - target, delta)
    sign = torch.sign(target)
    loss = loss + bt_weight * (sign != 0) * -F.logsigmoid(sign * diff / temperature)
    return loss.sum(), loss.numel()


# ------------------------------------------------------------------------------------------------ baselines
def bradley_terry_loss(score_a: torch.Tensor, score_b: torch.Tensor) -> torch.Tensor:
    """−log σ(s_a − s_b) per pair, `a` the preferred side (the scalar reward model's loss)."""
    return -F.logsigmoid(score_a - score_b)


def rewarddance_loss(yes_no_log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The RewardDance-style baseline's loss per row (RewardDance, arXiv 2509.08826, in its pointwise form).

    Cross-entropy of the soft yes-target t ∈ [0, 1] against the model's (" no", " yes") distribution at the answer
    slot: −(t · log P(yes) + (1 − t) · log P(no)). `yes_no_log_probs` `(B, 2)` are log-probabilities over the two read
    tokens, index 0 " no" and index 1 " yes" (P(yes) is the reward); `target` `(B,)`.
    """
    return -(target * yes_no_log_probs[:, 1] + (1 - target) * yes_no_log_probs[:, 0])


def reverse_kl_exact(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-row OPD loss in closed form (docs/method.md eq. 14): KL(p_S ‖ p_T) = Σ_s p_S(s) (log p_S(s) − log p_T(s)).

    `student_log_probs`, `teacher_log_probs` `(B, V)`: log-probabilities over the same vocabulary. The student comes
    first (reverse KL, mode-seeking: the expectation is under the student's own distribution).
    """
    return (student_log_probs.exp() * (student_log_probs - teacher_log_probs)).sum(-1)


def reverse_kl_reinforce(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor,
                         samples: torch.Tensor) -> torch.Tensor:
    """OPD's sampled surrogate per row: −mean_s [r(s) · log p_S(s)] with the detached reward r = −(log p_S − log p_T).

    `samples` `(B, S)` are token ids drawn from p_S. Its gradient is an unbiased (REINFORCE) estimate of the gradient
    of KL(p_S ‖ p_T); its value is not the KL (log the exact one for that).
    """
    sampled_s = student_log_probs.gather(1, samples)
    sampled_t = teacher_log_probs.gather(1, samples)
    reward = -(sampled_s - sampled_t).detach()
    return -(reward * sampled_s).mean(dim=1)


def grpo_score_rewards(sampled_levels: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                       format_reward: float = 1.0, tolerance: float = 0.5) -> torch.Tensor:
    """The GRPO baseline's reward: 1[|s − y| ≤ 0.5] + format_reward · [valid score token after finished reasoning].

    `sampled_levels` `(N, G)` are the levels of the sampled score tokens (any value where not `valid`).
    """
    valid = valid.to(torch.bool)
    hit = ((sampled_levels - labels[:, None].to(sampled_levels)).abs() <= tolerance + 1e-6) & valid
    return hit.to(sampled_levels.dtype) + format_reward * valid.to(sampled_levels.dtype)
