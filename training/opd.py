"""The on-policy distillation (OPD) baseline of the student table (docs/method.md, 'Baselines').

OPD distils token sequences: the student samples, the teacher scores each sampled token on the *student's* prefix,
and the per-token reward is −(log π_S − log π_T) — token-level reverse KL (GKD arXiv 2306.13649, MiniLLM arXiv
2306.08543, Thinking Machines' "On-Policy Distillation", 2025). For a no-reasoning student the only sampled token is
the score token at the answer slot, and the teacher is read on the same prefix with no reasoning:

    L_OPD = E_{s ~ p_S}[log p_S(s|x) − log p_T(s|x, ∅)] = KL(p_S ‖ p_T(·|x, ∅))          (eq. 14 in docs/method.md)

`estimator: sampled` (default) follows OPD: `num_samples` tokens drawn from the student's full-vocabulary distribution,
REINFORCE with the detached per-token reverse-KL reward; `estimator: exact` computes the same KL in closed form over
the vocabulary (its zero-variance expectation). Teacher and student must share a tokenizer (the world's do). TRL's
`GKDTrainer`/`DistillationTrainer` implement the sequence version for text-only models; with one token per input and
VLM inputs the closed form is simpler and exact, so this baseline runs on our loop with the same budget as RISD.

    python -m training.opd --config training/configs/student_opd_tiny.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .config import check_at_least, check_choice
from .data import step_rng
from .gdso import unit_seed
from .objectives import reverse_kl_exact, reverse_kl_reinforce
from .sequences import Row, forward_rows
from .trainer import RewardTrainer, RewardTrainingConfig, load_base, run_entry_point

logger = logging.getLogger(__name__)

ESTIMATORS = ("sampled", "exact")


@dataclass
class OPDConfig(RewardTrainingConfig):
    """The on-policy distillation baseline: the student's reverse KL to the teacher read without reasoning.

    `python -m training.opd --config training/configs/student_opd_tiny.yaml`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("teacher",),
        "Optimisation": ("batch_size",),
        "Objective": ("estimator", "num_samples"),
    }

    base: str = field(default="world/base_student", metadata={"help": "the student's starting backbone"})
    teacher: str = field(default="runs/teacher/gdso/model", metadata={"help": "the teacher: a Z-Reward checkpoint"})
    output_dir: str = field(default="runs/student_opd", metadata={"help": "checkpoints, final model, metrics"})
    estimator: str = field(default="sampled", metadata={"help": "sampled (OPD's REINFORCE) or exact (closed form)"})
    num_samples: int = field(default=8, metadata={"help": "student samples per input (sampled estimator)"})
    batch_size: int = field(default=32, metadata={"help": "inputs per step over all processes"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "estimator", ESTIMATORS)
        check_at_least(self, 1, "num_samples", "batch_size")


class OPDTrainer(RewardTrainer):
    name = "opd"
    reasoning = False
    config_class = OPDConfig

    def __init__(self, config: OPDConfig):
        super().__init__(config)
        teacher, processor, _ = load_base(config.teacher, config.trust_remote_code)
        if processor.tokenizer.get_vocab() != self.processor.tokenizer.get_vocab():
            raise ValueError("OPD compares token distributions: the teacher and the student must share a tokenizer")
        if processor.image_processor.to_dict() != self.processor.image_processor.to_dict():
            raise ValueError("OPD reads the teacher on the student's inputs: their image processors must match")
        self.teacher = teacher.to(self.device).requires_grad_(False).eval()
        self.units = [(n, d) for n in range(len(self.train_set.records)) for d in self.dimensions]

    def training_step(self, step: int) -> dict[str, float]:
        config, device = self.config, self.device
        rng = step_rng(config.seed, step)
        chosen = rng.choice(len(self.units), size=config.batch_size, replace=len(self.units) < config.batch_size)
        local = [(u, *self.units[i]) for u, i in enumerate(chosen.tolist())][self.rank::self.world_size]
        records = self.train_set.records
        batch = self.to_device(self.encoder([Row(n, records[n].prompt, d) for _, n, d in local]))
        read_ids = self.encoder.read_token_ids.to(device)
        student = forward_rows(self.model, batch, read_ids)
        with torch.no_grad():
            teacher = forward_rows(self.teacher, batch, read_ids)
        log_s, log_t = student.answer_log_probs, teacher.answer_log_probs
        exact = reverse_kl_exact(log_s, log_t)  # KL(p_S || p_T) per input
        if config.estimator == "exact":
            loss_sum = exact.sum()
        else:
            samples = torch.stack([
                torch.multinomial(log_s[i].detach().exp().cpu(), config.num_samples, replacement=True,
                                  generator=torch.Generator().manual_seed(unit_seed(config.seed, step, u)))
                for i, (u, _, _) in enumerate(local)]).to(device)  # (B, S)
            loss_sum = reverse_kl_reinforce(log_s, log_t, samples).sum()
        self.accelerator.backward(loss_sum / config.batch_size * self.world_size)
        with torch.no_grad():
            sums = {"reverse_kl": float(exact.sum()),
                    "score_token_mass": float(log_s[:, read_ids].logsumexp(-1).exp().sum()),
                    "teacher_score_token_mass": float(log_t[:, read_ids].logsumexp(-1).exp().sum())}
        logs = self.reduce_logs(sums, {key: len(local) for key in sums})
        logs["loss"] = logs["reverse_kl"]
        return logs


def main(argv: list[str] | None = None) -> dict:
    return run_entry_point(OPDTrainer, OPDConfig, argv)


if __name__ == "__main__":
    main()
