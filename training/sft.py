"""Teacher cold start (and the paper's "SFT" baseline): cross-entropy on rationales, then KL(q ‖ p) on the score slot.

Each row is one (image, prompt, dimension) with its written rationale: the rationale and the `</think>` that closes it
are trained by token-level cross-entropy (averaged over the global batch's tokens), and the score distribution read
right after the teacher-forced answer prefix is pulled to the soft target q (DeQA-Score: annotator histogram mixed with
a mean-preserving Gaussian, or the Gaussian around a single label) by KL(q ‖ p), averaged over rows (docs/method.md,
'Cold start'); by default the KL is taken against the full-vocabulary next-token distribution, which adds −log(mass on
the K score tokens) and so also teaches the model to write a score token there. With `reasoning: false` the rows carry
no rationale and only the KL term trains: a no-reasoning model supervised directly on the labels.

    python -m training.sft --config training/configs/teacher_sft_tiny.yaml
    accelerate launch -m training.sft --config training/configs/teacher_sft_tiny.yaml      # same code, N processes
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .config import check_at_least
from .data import step_rng
from .objectives import kl_to_target, soft_target
from .sequences import Row, forward_rows
from .trainer import RewardTrainer, RewardTrainingConfig, run_entry_point

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(RewardTrainingConfig):
    """Teacher cold start (and the SFT baseline): cross-entropy on rationales, KL(q || p) on the score slot.

    `python -m training.sft --config training/configs/teacher_sft_tiny.yaml`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Optimisation": ("batch_size", "micro_batch_size"),
        "Objective": ("reasoning", "ce_weight", "kl_weight", "full_vocabulary", "target_epsilon", "target_sigma"),
    }

    output_dir: str = field(default="runs/teacher_sft", metadata={"help": "checkpoints, final model, metrics"})
    reasoning: bool = field(default=True, metadata={"help": "train on rationales (teacher); false: score slot only"})
    batch_size: int = field(default=32, metadata={"help": "rows per step over all processes"})
    micro_batch_size: int = field(default=16, metadata={"help": "rows per forward pass"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the rationale cross-entropy"})
    kl_weight: float = field(default=1.0, metadata={"help": "weight of KL(q || p) on the score slot"})
    full_vocabulary: bool = field(default=True, metadata={
        "help": "KL against the full-vocabulary next-token distribution (also teaches writing a score token, "
                "-log of the score-token mass); false: against the softmax over the K score tokens only"})
    target_epsilon: float = field(default=0.1, metadata={"help": "histogram smoothing weight of the soft target"})
    target_sigma: float = field(default=0.5, metadata={"help": "std of the soft target's Gaussian"})

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "batch_size", "micro_batch_size")


class SFTTrainer(RewardTrainer):
    name = "sft"
    config_class = SFTConfig

    def __init__(self, config: SFTConfig):
        self.reasoning = config.reasoning
        super().__init__(config)
        self.units = [(n, d) for n, record in enumerate(self.train_set.records) for d in self.dimensions
                      if (not config.reasoning or record.rationales.get(d))
                      and (d in record.histograms or record.label(d) is not None)]
        if not self.units:
            raise ValueError("the training data has no rows with a label (and, with `reasoning`, a rationale) on "
                             f"the dimensions {self.dimensions}")
        self._targets: dict[tuple[int, str], torch.Tensor] = {}

    def target(self, n: int, dimension: str) -> torch.Tensor:
        if (n, dimension) not in self._targets:
            self._targets[n, dimension] = soft_target(self.train_set.records[n], dimension, self.levels,
                                                      self.config.target_epsilon, self.config.target_sigma)
        return self._targets[n, dimension]

    def step_units(self, step: int) -> list[tuple[int, str]]:
        """This process's share of step `step`'s rows (the global batch is a function of the seed and step)."""
        rng = step_rng(self.config.seed, step)
        size = self.config.batch_size
        chosen = rng.choice(len(self.units), size=size, replace=len(self.units) < size)
        return [self.units[i] for i in chosen.tolist()][self.rank::self.world_size]

    def rows(self, units) -> list[Row]:
        records = self.train_set.records
        return [Row(n, records[n].prompt, d, records[n].rationales[d] if self.reasoning else None) for n, d in units]

    def training_step(self, step: int) -> dict[str, float]:
        config = self.config
        units = self.step_units(step)
        rows = self.rows(units)
        encoded = [self.encoder.encode_row(row) for row in rows]  # token side only: lengths and trained tokens
        local_tokens = float(sum(sum(mask) for _, mask in encoded))
        num_tokens, num_rows = self.global_count(local_tokens), float(config.batch_size)
        scale = self.world_size  # DDP averages gradients over processes
        read_ids = self.encoder.read_token_ids.to(self.device)
        sums = {"ce": 0.0, "kl": 0.0, "score_token_mass": 0.0, "expected_abs_error": 0.0}
        order = sorted(range(len(rows)), key=lambda i: len(encoded[i][1]))
        micro = config.micro_batch_size
        for start in range(0, len(order), micro):
            chunk = order[start:start + micro]
            last = start + micro >= len(order)
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                batch = self.to_device(self.encoder([rows[i] for i in chunk]))
                out = forward_rows(self.model, batch, read_ids)
                ce = -out.token_log_probs.sum()
                targets = torch.stack([self.target(*units[i]) for i in chunk]).to(self.device)
                read = out.answer_log_probs[:, read_ids] if config.full_vocabulary else out.score_log_probs
                kl = kl_to_target(targets, read).sum()
                loss = config.kl_weight * kl / num_rows
                if self.reasoning and num_tokens > 0:
                    loss = loss + config.ce_weight * ce / num_tokens
                self.accelerator.backward(loss * scale)
            with torch.no_grad():
                sums["ce"] += float(ce)
                sums["kl"] += float(kl)
                sums["score_token_mass"] += float(out.answer_log_probs[:, read_ids].logsumexp(-1).exp().sum())
                expected = (out.score_log_probs.exp() * self.levels.to(self.device)).sum(-1)
                labels = (targets * self.levels.to(self.device)).sum(-1)
                sums["expected_abs_error"] += float((expected - labels).abs().sum())
        counts = {"ce": local_tokens, "kl": len(rows), "score_token_mass": len(rows), "expected_abs_error": len(rows)}
        logs = self.reduce_logs(sums, counts)
        logs["loss"] = config.kl_weight * logs["kl"] + (config.ce_weight * logs["ce"] if self.reasoning else 0.0)
        return logs


def main(argv: list[str] | None = None) -> dict:
    return run_entry_point(SFTTrainer, SFTConfig, argv)


if __name__ == "__main__":
    main()
