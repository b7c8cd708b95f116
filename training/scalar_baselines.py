"""The two scalar reward baselines of the paper's table, on the same backbone, data and loop as the teacher.

- **Bradley-Terry** (`training.bradley_terry`): a linear value head on the backbone's last hidden state at the read
  position of the no-reasoning input; trained on within-group pairs of differently labelled images,
  −log σ(s_a − s_b) with `a` the better-labelled image (the scalar pairwise reward model of ImageReward / HPS).
- **RewardDance-style** (`training.rewarddance`, after RewardDance, arXiv 2509.08826): the reward is the model's
  probability of " yes" (against " no") to "is the image good on this criterion?", read at the answer slot like the
  score tokens; trained by cross-entropy on the soft yes-target (y − v_1)/(v_K − v_1). RewardDance's comparative
  (two-image) form needs two images per sequence; this pointwise form keeps the inputs identical to every other
  model in the table.

Both score every held-out image on every dimension with one scalar, and are judged by the same panel-pair accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from .config import check_at_least, parse_args
from .data import step_rng
from .objectives import bradley_terry_loss, rewarddance_loss
from .sequences import Row, RowEncoder, forward_rows
from .trainer import RewardTrainer, RewardTrainingConfig

logger = logging.getLogger(__name__)

YES_NO_TEMPLATE = ('Prompt: "{prompt}"\nDimension: {dimension}. {question}\n'
                   "Is the image good for the prompt on this dimension? Answer yes or no.")
YES_NO_PREFIX = "Answer:"
YES_NO_TOKENS = (" no", " yes")
VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class ScalarConfig(RewardTrainingConfig):
    """The scalar baselines (`python -m training.bradley_terry` / `training.rewarddance`): one score per image and
    dimension, trained on the same backbone, data and loop as the teacher."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Optimisation": ("batch_size", "micro_batch_size"),
    }

    batch_size: int = field(default=32, metadata={"help": "pairs (BT) or rows (RewardDance) per step, all processes"})
    micro_batch_size: int = field(default=32, metadata={"help": "rows per forward pass"})

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "batch_size", "micro_batch_size")


class ScalarTrainer(RewardTrainer):
    """Shared part: no-reasoning rows, scalar held-out scores."""

    reasoning = False

    def scalar_scores(self, out) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict_scalar(self) -> np.ndarray:
        records = self.eval_set.records
        rows = [(n, d, Row(n, r.prompt, dim)) for n, r in enumerate(records) for d, dim in enumerate(self.dimensions)]
        local = rows[self.rank::self.world_size]
        scores = torch.zeros(len(records), len(self.dimensions), dtype=torch.float64, device=self.device)
        model = self.unwrapped()
        was_training = model.training
        model.eval()
        for start in range(0, len(local), self.config.eval_batch_size):
            chunk = local[start:start + self.config.eval_batch_size]
            out = self.forward(self.eval_encoder, [row for _, _, row in chunk], model)
            for (n, d, _), value in zip(chunk, self.scalar_scores(out), strict=True):
                scores[n, d] = value.double()
        model.train(was_training)
        if self.world_size > 1:
            scores = self.accelerator.reduce(scores, "sum")
        return scores.cpu().numpy()

    def forward(self, encoder: RowEncoder, rows: list[Row], model=None):
        batch = self.to_device(encoder(rows))
        return forward_rows(model or self.model, batch, encoder.read_token_ids.to(self.device),
                            with_hidden=self.needs_hidden)

    needs_hidden = False

    def evaluate(self) -> dict:
        return self.scalar_preference_accuracy(self.predict_scalar())


# ------------------------------------------------------------------------------------------------ Bradley-Terry
class BradleyTerryTrainer(ScalarTrainer):
    name = "bradley_terry"
    needs_hidden = True

    def __init__(self, config: ScalarConfig):
        super().__init__(config)
        self.pairs = []
        for records in self.train_set.groups().values():
            for dimension in self.dimensions:
                for a in records:
                    for b in records:
                        ya, yb = a.label(dimension), b.label(dimension)
                        if ya is not None and yb is not None and ya > yb:
                            self.pairs.append((self.index(a), self.index(b), a.prompt, dimension))
        if not self.pairs:
            raise ValueError("the training data has no within-group pair of differently labelled images")

    def index(self, record) -> int:
        return self.train_bank.index[record.record_id]

    def prepare_model(self, model):
        """The language-model head is not used by a scalar value head: frozen (unless tied to the embeddings)."""
        model = super().prepare_model(model)
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight is not embeddings.weight:
            head.requires_grad_(False)
        return model

    def build_extra_modules(self, model) -> dict[str, torch.nn.Module]:
        """A linear value head without bias: −log σ(s_a − s_b) cannot see a bias, so its gradient is rounding noise,
        which Adam's normalisation would turn into a drift of every score."""
        hidden = model.config.get_text_config().hidden_size
        head = torch.nn.Linear(hidden, 1, bias=False)
        torch.nn.init.zeros_(head.weight)
        return {"value_head": head}

    def scalar_scores(self, out) -> torch.Tensor:
        return self.extra_modules["value_head"](out.hidden.float()).squeeze(-1)

    def training_step(self, step: int) -> dict[str, float]:
        config = self.config
        rng = step_rng(config.seed, step)
        chosen = rng.choice(len(self.pairs), size=config.batch_size, replace=len(self.pairs) < config.batch_size)
        local = [self.pairs[i] for i in chosen.tolist()][self.rank::self.world_size]
        rows = [Row(a, prompt, dim) for a, _, prompt, dim in local]
        rows += [Row(b, prompt, dim) for _, b, prompt, dim in local]
        out = self.forward(self.encoder, rows)
        scores = self.scalar_scores(out)
        better, worse = scores[:len(local)], scores[len(local):]
        losses = bradley_terry_loss(better, worse)
        self.accelerator.backward(losses.sum() / config.batch_size * self.world_size)
        sums = {"loss": float(losses.detach().sum()), "accuracy": float((better > worse).float().sum())}
        return self.reduce_logs(sums, {"loss": len(local), "accuracy": len(local)})

    def export(self, directory: Path) -> None:
        """The backbone as a Z-Reward checkpoint plus `value_head.safetensors` (the baseline's scalar head)."""
        super().export(directory)
        head = self.accelerator.unwrap_model(self.extra_modules["value_head"])
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(directory / VALUE_HEAD_FILE))


# ------------------------------------------------------------------------------------------------ RewardDance
class RewardDanceTrainer(ScalarTrainer):
    name = "rewarddance"

    def make_encoder(self, images: torch.Tensor) -> RowEncoder:
        rubric = dataclasses.replace(self.rubric, prompt_template=YES_NO_TEMPLATE)
        return RowEncoder(self.processor, rubric, images, answer_prefix=YES_NO_PREFIX, read_tokens=YES_NO_TOKENS)

    def scalar_scores(self, out) -> torch.Tensor:
        return out.score_log_probs[:, 1].exp()  # P(" yes")

    def training_step(self, step: int) -> dict[str, float]:
        config = self.config
        records = self.train_set.records
        units = [(n, d) for n, r in enumerate(records) for d in self.dimensions if r.label(d) is not None]
        rng = step_rng(config.seed, step)
        chosen = rng.choice(len(units), size=config.batch_size, replace=len(units) < config.batch_size)
        local = [units[i] for i in chosen.tolist()][self.rank::self.world_size]
        out = self.forward(self.encoder, [Row(n, records[n].prompt, d) for n, d in local])
        levels = self.levels
        target = torch.tensor([(records[n].label(d) - float(levels[0])) / float(levels[-1] - levels[0])
                               for n, d in local], device=self.device)
        losses = rewarddance_loss(out.score_log_probs, target)
        self.accelerator.backward(losses.sum() / config.batch_size * self.world_size)
        sums = {"loss": float(losses.detach().sum()),
                "p_yes_abs_error": float((out.score_log_probs[:, 1].exp() - target).abs().detach().sum())}
        return self.reduce_logs(sums, {"loss": len(local), "p_yes_abs_error": len(local)})


TRAINERS = {"bradley_terry": BradleyTerryTrainer, "rewarddance": RewardDanceTrainer}


def main(name: str, argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_args(ScalarConfig, argv)
    if config.output_dir == ScalarConfig.output_dir:
        config.output_dir = f"runs/teacher_{name}"
    metrics = TRAINERS[name](config).train()
    logger.info("%s: held-out preference accuracy %.4f in %.0f s", name, metrics["preference_accuracy"],
                metrics["train_seconds"])
    return metrics
