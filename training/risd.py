"""Student RISD — Reasoning-Internalized Score Distillation (Z-Reward, arXiv 2606.09076).

The method as implemented, with the equation numbers used below, is in docs/method.md, 'Student: RISD'. The teacher
samples M reasoning chains per input; the target is the average of the distributions it reads after each,
q̄(k|x) = (1/M) Σ_m p_T(k|x, r_m) (eq. 12), cached on disk once (`training.teacher_cache`). The student reads
p_S(k|x) with no reasoning, in one forward pass, and minimises (eq. 13)

    KL(q̄ ‖ p_S) + λ_g · Huber_δ((μ_S^a − μ_S^b) − (μ̄_T^a − μ̄_T^b)) + λ_h · 1[labelled] · KL(q_human ‖ p_S),

the gap term over the pairs of each prompt group. Forward KL keeps the teacher's mean and total variance (the law of
total variance over chains): that is the internalisation. An optional temperature τ distils q̄^{1/τ} into p_S^{1/τ}
with the τ² factor (Hinton); the default τ = 1 keeps the distribution calibrated. With `judge_outputs` the cache
holds a third-party reasoning judge's chains and scores instead (`training.judge`): RISD then distils that judge.

    python -m training.risd --config training/configs/student_risd_tiny.yaml
    accelerate launch -m training.risd --config training/configs/student_risd_tiny.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .config import check_at_least
from .data import step_rng
from .objectives import huber, kl_to_target, soft_target
from .sequences import Row, forward_rows
from .teacher_cache import (
    CacheSettings,
    TeacherCache,
    average_chains,
    build_teacher_cache,
    input_key,
    teacher_fingerprint,
)
from .trainer import RewardTrainer, RewardTrainingConfig, load_base, run_entry_point

logger = logging.getLogger(__name__)


@dataclass
class RISDConfig(RewardTrainingConfig):
    """The RISD student: distilled from the teacher's reasoning-averaged distributions, read without reasoning.

    `python -m training.risd --config training/configs/student_risd_tiny.yaml`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("teacher",),
        "Teacher cache": ("judge_outputs", "cache_dir", "num_samples", "target_samples", "teacher_temperature",
                          "teacher_max_new_tokens", "cache_seed", "cache_chunk_size"),
        "Optimisation": ("groups_per_step",),
        "Objective": ("gap_weight", "human_weight", "huber_delta", "temperature", "full_vocabulary"),
    }

    base: str = field(default="world/base_student", metadata={"help": "the student's starting backbone"})
    teacher: str = field(default="runs/teacher/gdso/model", metadata={"help": "the teacher: a Z-Reward checkpoint"})
    output_dir: str = field(default="runs/student_risd", metadata={"help": "checkpoints, final model, metrics"})
    cache_dir: str = field(default="runs/teacher_cache", metadata={"help": "where teacher caches are kept"})
    judge_outputs: str | None = field(default=None, metadata={
        "help": "a judge's JSONL (training.judge): distil it instead of sampling `teacher`"})
    num_samples: int = field(default=8, metadata={"help": "M: teacher chains per input (sampled into the cache)"})
    target_samples: int | None = field(default=None, metadata={
        "help": "average only the first m ≤ M cached chains (the M ablation without resampling); none: all M"})
    teacher_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the teacher"})
    teacher_max_new_tokens: int = field(default=96, metadata={"help": "teacher reasoning length limit"})
    cache_seed: int = field(default=0, metadata={"help": "seed of the teacher's sampling (students of any seed "
                                                         "share one cache)"})
    cache_chunk_size: int = field(default=32, metadata={"help": "inputs per teacher generation call"})
    groups_per_step: int = field(default=8, metadata={"help": "(prompt group, dimension) units per step (global)"})
    gap_weight: float = field(default=0.5, metadata={"help": "λ_g of the gap term (0: off)"})
    human_weight: float = field(default=0.1, metadata={"help": "λ_h of the human-label term (0: off)"})
    huber_delta: float = field(default=0.5, metadata={"help": "δ of the gap term"})
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature τ"})
    full_vocabulary: bool = field(default=True, metadata={
        "help": "KL terms against the full-vocabulary next-token distribution (also keeps the mass on the score "
                "tokens); false: against the softmax over the K score tokens"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "num_samples", "groups_per_step", "cache_chunk_size", "teacher_max_new_tokens")
        if self.target_samples is not None and not 1 <= self.target_samples <= self.num_samples:
            raise ValueError(f"`target_samples` must lie in [1, num_samples={self.num_samples}], "
                             f"got {self.target_samples}")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be positive, got {self.temperature}")


def load_teacher_targets(config, train_set, train_bank, dimensions, rubric, accelerator):
    """`({(record_id, dimension): q̄}, cache directory)` for a RISD-style config (`teacher`, `cache_dir`,
    `num_samples`, `teacher_temperature`, `teacher_max_new_tokens`, `cache_chunk_size`, `cache_seed`,
    `target_samples`); processes split the cache build, then all read it. With `config.judge_outputs` (a judge's
    JSONL, `training.judge`) the cache is built from it instead and the teacher is not loaded."""
    judge_outputs = getattr(config, "judge_outputs", None)
    if judge_outputs is not None:
        from .judge import cache_from_judge_jsonl

        # every process checks the file (a bad line stops them all); the main one writes the cache
        cache = cache_from_judge_jsonl(judge_outputs, train_set, rubric, dimensions, config.cache_dir,
                                       rank=accelerator.process_index, write=accelerator.is_main_process,
                                       bank=train_bank)
        accelerator.wait_for_everyone()
        return _targets(config, cache.load(), train_set, train_bank, dimensions), cache.directory
    settings = CacheSettings(config.num_samples, config.teacher_temperature, 1.0, config.teacher_max_new_tokens,
                             config.cache_chunk_size, config.cache_seed)
    cache = TeacherCache(config.cache_dir, teacher_fingerprint(config.teacher, settings), settings,
                         rank=accelerator.process_index)
    teacher, processor, teacher_rubric = load_base(config.teacher, config.trust_remote_code)
    if teacher_rubric.levels != rubric.levels:
        raise ValueError(f"teacher levels {teacher_rubric.levels} differ from the student's {rubric.levels}")
    teacher.to(accelerator.device)
    build_teacher_cache(teacher, processor, teacher_rubric, train_set, dimensions, cache, accelerator.device,
                        progress=accelerator.is_local_main_process, rank=accelerator.process_index,
                        world_size=accelerator.num_processes)
    del teacher
    accelerator.wait_for_everyone()
    return _targets(config, cache.load(), train_set, train_bank, dimensions), cache.directory


def _targets(config, entries, train_set, train_bank, dimensions) -> dict[tuple[str, str], torch.Tensor]:
    """`{(record_id, dimension): q̄}` from cache entries (the first `target_samples` chains when set)."""
    targets = {}
    for n, record in enumerate(train_set.records):
        for dimension in dimensions:
            entry = entries[input_key(train_bank.images[n], record.prompt, dimension)]
            if config.target_samples is None:
                mean = torch.tensor(entry["mean"], dtype=torch.float32)
            else:
                m = config.target_samples
                mean = torch.tensor(average_chains(np.array(entry["probs"][:m]), entry["finished"][:m]),
                                    dtype=torch.float32)
            targets[record.record_id, dimension] = mean / mean.sum()
    return targets


class RISDTrainer(RewardTrainer):
    name = "risd"
    reasoning = False
    config_class = RISDConfig

    def __init__(self, config: RISDConfig):
        super().__init__(config)
        self.targets = self.teacher_targets()
        groups = [records for records in self.train_set.groups().values() if len(records) >= 2]
        self.units = [(records, d) for records in groups for d in self.dimensions]
        if not self.units:
            raise ValueError("RISD needs prompt groups of at least 2 images")

    def teacher_targets(self) -> dict[tuple[str, str], torch.Tensor]:
        """q̄ of every training (record, dimension), from the cache (built here when missing)."""
        targets, self.cache_directory = load_teacher_targets(
            self.config, self.train_set, self.train_bank, self.dimensions, self.rubric, self.accelerator)
        return targets

    def step_units(self, step: int):
        rng = step_rng(self.config.seed, step)
        size = self.config.groups_per_step
        chosen = rng.choice(len(self.units), size=size, replace=len(self.units) < size).tolist()
        return [self.units[i] for i in chosen][self.rank::self.world_size]

    def distill_kl(self, target: torch.Tensor, out) -> torch.Tensor:
        """KL(q̄ ‖ p_S) per row, at temperature τ (× τ²)."""
        tau = self.config.temperature
        read_ids = self.encoder.read_token_ids.to(self.device)
        log_probs = out.answer_log_probs[:, read_ids] if self.config.full_vocabulary else out.score_log_probs
        if tau == 1.0:
            return kl_to_target(target, log_probs)
        soft_target_tau = torch.softmax(target.clamp_min(1e-12).log() / tau, dim=-1)
        return kl_to_target(soft_target_tau, torch.log_softmax(out.score_log_probs / tau, dim=-1)) * tau**2

    def training_step(self, step: int) -> dict[str, float]:
        config, device = self.config, self.device
        units = self.step_units(step)
        rows, targets, humans, spans = [], [], [], []
        for records, dimension in units:
            spans.append((len(rows), len(records)))
            for record in records:
                rows.append(Row(self.train_bank.index[record.record_id], record.prompt, dimension))
                targets.append(self.targets[record.record_id, dimension])
                labelled = dimension in record.histograms or record.label(dimension) is not None
                humans.append(soft_target(record, dimension, self.levels) if labelled else None)
        num_pairs_local = sum(n * (n - 1) // 2 for _, n in spans)
        counts = torch.tensor([len(rows), num_pairs_local, sum(h is not None for h in humans)], dtype=torch.float64,
                              device=device)
        if self.world_size > 1:
            counts = self.accelerator.reduce(counts, "sum")
        num_rows, num_pairs, num_labelled = (max(float(c), 1.0) for c in counts)
        out = forward_rows(self.model, self.to_device(self.encoder(rows)), self.encoder.read_token_ids.to(device))
        target = torch.stack(targets).to(device)
        levels = self.levels.to(device)
        distill = self.distill_kl(target, out).sum()
        student_mu = (out.score_log_probs.exp() * levels).sum(-1)
        teacher_mu = (target * levels).sum(-1)
        gap = torch.zeros((), device=device)
        for start, n in spans:
            first, second = torch.triu_indices(n, n, offset=1, device=device) + start
            gap = gap + huber((student_mu[first] - student_mu[second]) - (teacher_mu[first] - teacher_mu[second]),
                              config.huber_delta).sum()
        human = torch.zeros((), device=device)
        labelled = [i for i, h in enumerate(humans) if h is not None]
        if labelled and config.human_weight:
            read = out.answer_log_probs[:, self.encoder.read_token_ids.to(device)] if config.full_vocabulary \
                else out.score_log_probs
            human = kl_to_target(torch.stack([humans[i] for i in labelled]).to(device), read[labelled]).sum()
        loss = distill / num_rows + config.gap_weight * gap / num_pairs + config.human_weight * human / num_labelled
        self.accelerator.backward(loss * self.world_size)
        with torch.no_grad():
            sums = {"distill": float(distill), "gap": float(gap), "human": float(human),
                    "mean_abs_gap_to_teacher": float((student_mu - teacher_mu).abs().sum()),
                    "score_token_mass": float(out.answer_log_probs[:, self.encoder.read_token_ids.to(device)]
                                              .logsumexp(-1).exp().sum())}
        logs = self.reduce_logs(sums, {"distill": len(rows), "gap": num_pairs_local, "human": max(len(labelled), 0),
                                       "mean_abs_gap_to_teacher": len(rows), "score_token_mass": len(rows)})
        logs["loss"] = self.global_count(float(loss.detach()))  # local sums over global counts: sum over processes
        return logs

    def teacher_probs(self, dataset=None) -> np.ndarray:
        """The cached q̄ of the training inputs `(N, D, K)` (for agreement metrics)."""
        dataset = self.train_set if dataset is None else dataset
        return np.stack([[self.targets[r.record_id, d].numpy() for d in self.dimensions] for r in dataset.records])


def main(argv: list[str] | None = None) -> dict:
    return run_entry_point(RISDTrainer, RISDConfig, argv)


if __name__ == "__main__":
    main()
