"""Teacher GDSO — Group-wise Direct Score Optimization (Z-Reward, arXiv 2606.09076) — and the GRPO baseline.

The method as implemented, with the equation numbers used below, is in docs/method.md, 'GDSO'.

Per step: `groups_per_step` (prompt group, dimension) units whose labels differ within the group; for each of the
group's N images, G reasoning chains are sampled; after each chain the answer prefix is teacher-forced and the score
distribution p(·|x, r) is *read* (never sampled). Then

- reward R_ij = 1 − |μ_ij − y_j|/(v_K − v_1) + α · (share of the group's other images this rollout orders as the
  labels do) − β_f · [unfinished reasoning]   (eq. 6, no gradient);
- advantage Â = (R − mean)/max(std, σ_min) over each image's G rollouts (eq. 7); images whose rollouts all get the same
  reward (std < `min_reward_std`) are dropped from the policy-gradient term (DAPO's dynamic sampling, without
  refilling: their advantage is zero, and they leave the token normaliser);
- L_PG: clipped ratio (ε_low, ε_high), token-level over the global batch, on the reasoning tokens and the `</think>`
  that ends them only — the forced answer prefix and the score slot are not in it (eq. 8); one optimizer step per
  rollout batch, so the ratio is 1 and the clip is inactive unless `ppo_epochs` > 1;
- L_pt = mean over rollouts of KL(q_j ‖ p(·|x_j, r_ij)) (eq. 9) and L_gap = mean over within-group pairs, rollout by
  rollout, of Huber(gap error) + η·BT on expectations, ties Huber-only (eq. 10);
- L = L_PG + λ_pt L_pt + λ_gap L_gap (+ β_KL · k3 KL to the starting model, off by default) (eq. 11).

`objective: grpo` is the paper's GRPO baseline on the same loop: the score token is *sampled* from the full vocabulary
at the answer slot, reward 1[|s − y| ≤ 0.5] + format reward (finished reasoning and a valid score token), and the
clipped policy gradient covers the reasoning and the sampled score token; no direct terms.

Every sampling call is seeded by (seed, step, unit), so a run is reproducible, resumable, and the same whatever the
number of processes (`accelerate launch`; each process takes every `num_processes`-th unit).

    python -m training.gdso --config training/configs/teacher_gdso_tiny.yaml
    accelerate launch -m training.gdso --config training/configs/teacher_gdso_tiny.yaml
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .config import check_at_least, check_choice
from .data import labelled_groups, step_rng
from .objectives import (
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
from .sequences import Row, forward_rows, sample_reasoning
from .trainer import RewardTrainer, RewardTrainingConfig, run_entry_point

logger = logging.getLogger(__name__)

OBJECTIVES = ("gdso", "grpo")


@dataclass
class GDSOConfig(RewardTrainingConfig):
    """The GDSO teacher (and, with `objective: grpo`, the GRPO baseline): rollouts of reasoning chains scored by the
    distribution read after them, a clipped policy gradient plus direct pointwise and pairwise terms.

    `python -m training.gdso --config training/configs/teacher_gdso_tiny.yaml`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Rollouts": ("objective", "groups_per_step", "num_rollouts", "max_new_tokens", "temperature", "top_p"),
        "Reward and advantage": ("alpha", "format_penalty", "format_reward", "std_floor", "min_reward_std"),
        "Policy gradient": ("eps_low", "eps_high", "ppo_epochs", "kl_beta"),
        "Direct terms": ("pointwise_weight", "full_vocabulary", "target_epsilon", "target_sigma", "gap_weight",
                         "huber_delta", "bt_weight", "bt_temperature"),
    }

    base: str = field(default="runs/teacher_sft/model", metadata={"help": "starting model (the cold-start SFT)"})
    output_dir: str = field(default="runs/teacher_gdso", metadata={"help": "checkpoints, final model, metrics"})
    objective: str = field(default="gdso", metadata={"help": "gdso, or grpo (the sampled-score-token baseline)"})
    groups_per_step: int = field(default=4, metadata={"help": "(prompt group, dimension) units per step (global)"})
    num_rollouts: int = field(default=8, metadata={"help": "G: reasoning chains sampled per image"})
    max_new_tokens: int = field(default=96, metadata={"help": "reasoning length limit (longer: format violation)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the rollouts"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the within-group order reward"})
    format_penalty: float = field(default=1.0, metadata={"help": "β_f: reward penalty of an unfinished chain"})
    std_floor: float = field(default=0.05, metadata={"help": "σ_min of the advantage"})
    min_reward_std: float = field(default=1e-3, metadata={"help": "images with less reward spread leave the PG term"})
    eps_low: float = field(default=0.2, metadata={"help": "lower clip of the ratio"})
    eps_high: float = field(default=0.28, metadata={"help": "upper clip of the ratio (clip-higher)"})
    ppo_epochs: int = field(default=1, metadata={"help": "optimizer passes over one rollout batch"})
    pointwise_weight: float = field(default=1.0, metadata={"help": "λ_pt"})
    gap_weight: float = field(default=0.5, metadata={"help": "λ_gap"})
    huber_delta: float = field(default=0.5, metadata={"help": "δ of the gap term's Huber"})
    bt_weight: float = field(default=0.5, metadata={"help": "η: Bradley-Terry weight within the gap term"})
    bt_temperature: float = field(default=0.25, metadata={"help": "T of the gap term's Bradley-Terry"})
    kl_beta: float = field(default=0.0, metadata={"help": "β_KL to the starting model (k3 estimator); 0: off"})
    format_reward: float = field(default=1.0, metadata={"help": "grpo: reward of a well-formed answer"})
    full_vocabulary: bool = field(default=True, metadata={
        "help": "pointwise KL against the full-vocabulary next-token distribution (keeps the model writing score "
                "tokens, as in SFT); false: against the softmax over the K score tokens"})
    target_epsilon: float = field(default=0.1, metadata={"help": "histogram smoothing weight of the soft target"})
    target_sigma: float = field(default=0.5, metadata={"help": "std of the soft target's Gaussian"})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "objective", OBJECTIVES)
        check_at_least(self, 2, "num_rollouts")  # advantages are relative to the group
        check_at_least(self, 1, "ppo_epochs", "groups_per_step", "max_new_tokens")


def unit_seed(seed: int, step: int, unit: int, stream: int = 0) -> int:
    """A 63-bit seed for one sampling call, a function of (seed, step, unit, stream) only."""
    return int(np.random.SeedSequence([seed, step, unit, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class GDSOTrainer(RewardTrainer):
    name = "gdso"
    config_class = GDSOConfig

    def __init__(self, config: GDSOConfig):
        self.name = config.objective
        super().__init__(config)
        self.units = labelled_groups(self.train_set, self.dimensions)
        if not self.units:
            raise ValueError("the training data has no prompt group with differing labels on "
                             f"{self.dimensions}; GDSO needs groups of several images with different scores")
        self.index = {record.record_id: n for n, record in enumerate(self.train_set.records)}
        self.reference = None
        if config.kl_beta > 0 and not config.lora:  # with LoRA the reference is the model with adapters disabled
            self.reference = copy.deepcopy(self.unwrapped()).requires_grad_(False).eval()

    # ------------------------------------------------------------------------------------------------ rollouts
    def step_units(self, step: int) -> list[tuple[int, list, str]]:
        """This process's share of the step's units, each with its index in the global batch."""
        rng = step_rng(self.config.seed, step)
        size = self.config.groups_per_step
        chosen = rng.choice(len(self.units), size=size, replace=len(self.units) < size).tolist()
        units = [(u, *self.units[i]) for u, i in enumerate(chosen)]
        return units[self.rank::self.world_size]

    def rollouts(self, step: int, unit: int, records, dimension: str) -> dict:
        config = self.config
        rows = [Row(self.index[r.record_id], r.prompt, dimension) for r in records]
        chains, finished = sample_reasoning(self.model, self.encoder, rows, config.num_rollouts, config.max_new_tokens,
                                            config.temperature, config.top_p, unit_seed(config.seed, step, unit))
        expanded = [Row(row.image, row.prompt, dimension, chain) for row, cs in zip(rows, chains, strict=True)
                    for chain in cs]
        labels = torch.tensor([r.label(dimension) for r in records], dtype=torch.float32)
        targets = torch.stack([soft_target(r, dimension, self.levels, config.target_epsilon, config.target_sigma)
                               for r in records])
        return dict(unit=unit, rows=expanded, finished=torch.tensor(finished), labels=labels, targets=targets,
                    num_tokens=sum(sum(self.encoder.encode_row(row)[1]) for row in expanded))

    def reference_log_probs(self, batch, read_ids) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return forward_rows(self.reference, batch, read_ids).token_log_probs
            with self.unwrapped().disable_adapter():
                return forward_rows(self.model, batch, read_ids).token_log_probs

    # ------------------------------------------------------------------------------------------------ the step
    def unit_terms(self, step: int, rollout: dict, old: dict | None) -> dict:
        """Loss sums and logs of one unit (one forward pass over its N·G rows).

        `old` is None in the first PPO epoch: the rewards, advantages and token log-probs read now are the rollout
        policy's, returned as `behaviour`. Later epochs pass that `behaviour` back unchanged: the advantages stay the
        rollout-time ones and the ratio is taken to the rollout-time log-probs (PPO, GRPO), whatever the epoch.
        """
        config, device = self.config, self.device
        read_ids = self.encoder.read_token_ids.to(device)
        levels = self.levels.to(device)
        num_images, rollouts = len(rollout["labels"]), config.num_rollouts
        batch = self.to_device(self.encoder(rollout["rows"]))
        out = forward_rows(self.model, batch, read_ids)
        expected = (out.score_log_probs.exp() * levels).sum(-1).view(num_images, rollouts)
        labels, finished = rollout["labels"].to(device), rollout["finished"].to(device)
        token_log_probs, mask = out.token_log_probs, out.token_mask
        terms = {}
        if config.objective == "gdso":
            span = float(levels[-1] - levels[0])
            rewards = gdso_rewards(expected, labels, span, config.alpha, finished, config.format_penalty)
        else:
            if old is None:  # sample the score token once per rollout batch, seeded by the unit
                generator = torch.Generator(device="cpu").manual_seed(unit_seed(config.seed, step, rollout["unit"], 1))
                sampled = torch.multinomial(out.answer_log_probs.detach().exp().cpu(), 1, generator=generator)
                rollout["sampled"] = sampled.squeeze(1).to(device)
            sampled = rollout["sampled"]
            is_score = (sampled[:, None] == read_ids[None]).any(dim=1)
            level_index = (sampled[:, None] == read_ids[None]).float().argmax(dim=1)
            valid = is_score.view(num_images, rollouts) & finished
            rewards = grpo_score_rewards(levels[level_index].view(num_images, rollouts), labels, valid,
                                         config.format_reward)
            score_log_prob = out.answer_log_probs.gather(1, sampled[:, None])  # the sampled score token's log π
            token_log_probs = torch.cat([token_log_probs, score_log_prob], dim=1)
            mask = torch.cat([mask, torch.ones_like(score_log_prob)], dim=1)
        if old is None:  # the rollout-time policy: its advantages and log-probs hold for every PPO epoch
            spread = has_spread(rewards, config.min_reward_std)
            advantages = (group_advantages(rewards, config.std_floor) * spread[:, None]).flatten().detach()
            old_log_probs = token_log_probs.detach()
        else:  # a later epoch (PPO, GRPO): only the ratio to the rollout-time policy moves
            spread, advantages, old_log_probs = old["spread"], old["advantages"], old["log_probs"]
        pg_mask = mask * spread.repeat_interleave(rollouts)[:, None]
        terms["pg"] = clipped_policy_loss(token_log_probs, old_log_probs, advantages, pg_mask, config.eps_low,
                                          config.eps_high)
        terms["pg_tokens"] = float(pg_mask.sum())
        if config.objective == "gdso":
            targets = rollout["targets"].to(device).repeat_interleave(rollouts, dim=0)
            read = out.answer_log_probs[:, read_ids] if config.full_vocabulary else out.score_log_probs
            terms["pointwise"] = kl_to_target(targets, read).sum()
            terms["gap"], terms["gap_count"] = gap_loss(expected, labels, config.huber_delta, config.bt_weight,
                                                        config.bt_temperature)
        if config.kl_beta > 0:
            ref = self.reference_log_probs(batch, read_ids)
            terms["kl_ref"] = k3_kl(out.token_log_probs, ref, out.token_mask)
        with torch.no_grad():
            terms["logs"] = {
                "reward_mean": float(rewards.sum()), "reward_std": float(rewards.std(dim=1, correction=0).sum()),
                "score_token_mass": float(out.answer_log_probs[:, read_ids].logsumexp(-1).exp().sum()),
                "reasoning_length": float(out.token_mask.sum()), "finished": float(finished.float().sum()),
                "dropped": float((~spread).float().sum()),
                "expected_abs_error": float((expected - labels[:, None]).abs().sum()),
                "expected_rollout_std": float(expected.std(dim=1, correction=0).sum()),
            }
            terms["num_rows"], terms["num_images"] = num_images * rollouts, num_images
        behaviour = {"log_probs": old_log_probs, "advantages": advantages, "spread": spread}
        return dict(terms, log_probs=token_log_probs.detach(), behaviour=behaviour)

    def training_step(self, step: int) -> dict[str, float]:
        config = self.config
        rollouts = [self.rollouts(step, u, records, dim) for u, records, dim in self.step_units(step)]
        old = [None] * len(rollouts)
        for epoch in range(config.ppo_epochs):
            if epoch:  # later epochs: one more optimizer step on the same rollouts
                self.accelerator.clip_grad_norm_(self.optimizer.param_groups[0]["params"], config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            terms = [self.unit_terms(step, r, o) for r, o in zip(rollouts, old, strict=True)]
            old = [t["behaviour"] for t in terms]  # the rollout-time values, handed on unchanged
            counts = torch.tensor([sum(t["pg_tokens"] for t in terms), sum(t["num_rows"] for t in terms),
                                   sum(t.get("gap_count", 0) for t in terms),
                                   sum(float(r["num_tokens"]) for r in rollouts)], dtype=torch.float64,
                                  device=self.device)
            if self.world_size > 1:
                counts = self.accelerator.reduce(counts, "sum")
            pg_tokens, num_rows, gap_count, num_tokens = (max(float(c), 1.0) for c in counts)
            loss = sum(t["pg"] for t in terms) / pg_tokens
            if config.objective == "gdso":
                loss = loss + config.pointwise_weight * sum(t["pointwise"] for t in terms) / num_rows
                loss = loss + config.gap_weight * sum(t["gap"] for t in terms) / gap_count
            if config.kl_beta > 0:
                loss = loss + config.kl_beta * sum(t["kl_ref"] for t in terms) / num_tokens
            self.accelerator.backward(loss * self.world_size)
        sums = {key: sum(t["logs"][key] for t in terms) for key in terms[0]["logs"]}
        sums.update(pg=float(sum(t["pg"].detach() for t in terms)), loss=float(loss.detach()) / self.world_size)
        num_images = sum(t["num_images"] for t in terms)
        rows = sum(t["num_rows"] for t in terms)
        counts = {"reward_mean": rows, "reward_std": num_images, "score_token_mass": rows, "reasoning_length": rows,
                  "finished": rows, "dropped": num_images, "expected_abs_error": rows,
                  "expected_rollout_std": num_images, "pg": sum(t["pg_tokens"] for t in terms),
                  "loss": 1.0 / self.world_size}
        if config.objective == "gdso":
            sums.update(pointwise=float(sum(t["pointwise"].detach() for t in terms)),
                        gap=float(sum(t["gap"].detach() for t in terms)))
            counts.update(pointwise=rows, gap=sum(t["gap_count"] for t in terms))
        return self.reduce_logs(sums, counts)


def main(argv: list[str] | None = None, config_class: type = GDSOConfig) -> dict:
    return run_entry_point(GDSOTrainer, config_class, argv)


if __name__ == "__main__":
    main()
