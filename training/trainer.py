"""The loop every reward-model trainer shares (teacher SFT, GDSO, the baselines, the student): accelerate, optional
LoRA, gradient checkpointing, checkpoints with exact resume, trackers, held-out evaluation and the final save.

A trainer subclasses `RewardTrainer` and implements `training_step(step)`: build that step's local share of the
global batch (a function of `(seed, step)` only, split across processes), run forward and `accelerator.backward`,
and return the step's logs. Losses are local sums divided by *global* counts and multiplied by the number of
processes (DDP averages gradients), so one process and many give the same update for the same global batch.

We train on accelerate rather than subclassing TRL's trainers: GDSO's loss needs the score distribution read after a
teacher-forced answer prefix, in the same backward pass as the policy gradient, with per-group rewards and direct
pointwise and pairwise terms — none of which fit `GRPOTrainer.compute_loss` without overriding its private rollout
and scoring methods (a fork in all but name). The loop stays small enough to read in one sitting.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, get_scheduler

from zreward_diffusers import ZRewardLoss, ZRewardScorer
from zreward_diffusers.checkpoint import CONFIG_NAME, load_backbone, read_config
from zreward_diffusers.evaluation import dataset_targets, evaluate_probs
from zreward_diffusers.metrics import pairwise_accuracy_from_pairs
from zreward_diffusers.rubric import Rubric

from .config import check_at_least, check_choice, none_if_off
from .data import DataSpec, ImageBank, load_split
from .model_card import model_card, write_model_card
from .sequences import Row, RowEncoder, forward_rows, sample_reasoning
from .state import CheckpointManager, Progress, prepare_output_dir, write_text_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class RewardTrainingConfig:
    """Fields every reward-model trainer has (`python -m training.<name>`); each trainer adds its own."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("base", "trust_remote_code", "dimensions", "lora", "gradient_checkpointing", "mixed_precision"),
        "Data": ("train_data", "eval_data"),
        "Optimisation": ("steps", "lr", "weight_decay", "lr_scheduler", "warmup_steps", "max_grad_norm", "seed"),
        "Evaluation": ("eval_every", "eval_num_samples", "eval_max_new_tokens", "eval_batch_size"),
        "Checkpoints and logging": ("output_dir", "save_every", "checkpoints_total_limit", "resume", "overwrite",
                                    "log_every", "log_with"),
    }

    base: str = field(default="world/base_teacher", metadata={
        "help": "backbone to start from: a Hugging Face checkpoint directory or hub id, or a Z-Reward checkpoint"})
    output_dir: str = field(default="runs/reward", metadata={"help": "checkpoints, the final model and metrics"})
    train_data: dict = field(default_factory=lambda: asdict(DataSpec(start=0, num_groups=512)),
                             metadata={"help": "training split (`training.data.DataSpec` fields)"})
    eval_data: dict = field(default_factory=lambda: asdict(DataSpec(start=100_000, num_groups=64)),
                            metadata={"help": "held-out split (`training.data.DataSpec` fields)"})
    dimensions: list | None = field(default=None, metadata={"help": "rubric dimensions to train (default: all)"})
    lora: dict | None = field(default=None, metadata={
        "help": "PEFT LoraConfig fields (e.g. {r: 16, lora_alpha: 32, target_modules: all-linear}); none: full"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision: no, fp16 or bf16"})
    lr: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "transformers scheduler name"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    seed: int = field(default=0, metadata={"help": "seed of batches, sampling and initialisation"})
    eval_every: int = field(default=0, metadata={"help": "steps between held-out evaluations (0: only at the end)"})
    eval_num_samples: int = field(default=2, metadata={
        "help": "reasoning chains per held-out input whose distributions are averaged (teacher mode)"})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "reasoning length limit at evaluation"})
    eval_batch_size: int = field(default=64, metadata={"help": "rows per forward pass at evaluation"})
    save_every: int = field(default=50, metadata={"help": "steps between training-state checkpoints"})
    checkpoints_total_limit: int | None = field(default=None, metadata={
        "help": "keep at most this many checkpoints in <output_dir>/checkpoints (oldest deleted first; none: all)"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest complete checkpoint in <output_dir>/checkpoints (none there: start)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in a used <output_dir>: its checkpoints and metrics are deleted, its outputs replaced "
                "(without it, or --resume, a used <output_dir> is refused)"})
    log_every: int = field(default=1, metadata={"help": "steps between tracker logs"})
    log_with: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker (none: off)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code of the base"})

    def __post_init__(self):
        self.log_with = none_if_off(self.log_with)
        check_choice(self, "mixed_precision", ("no", "fp16", "bf16"))
        check_at_least(self, 1, "steps", "save_every", "log_every", "eval_batch_size", "eval_num_samples",
                       "eval_max_new_tokens", "checkpoints_total_limit")
        check_at_least(self, 0, "warmup_steps", "eval_every")


def load_base(path: str, trust_remote_code: bool = False):
    """`(model, processor, rubric)` from a Hugging Face checkpoint or a Z-Reward checkpoint (its adapter merged)."""
    directory = Path(path)
    if (directory / CONFIG_NAME).is_file():
        config = read_config(directory)
        model, processor = load_backbone(directory, config, trust_remote_code=trust_remote_code)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model, processor, Rubric.from_dict(config["rubric"])
    model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True,
                                                        trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, processor, Rubric()


class RewardTrainer:
    """Shared loop; see the module docstring. `reasoning` says how the model is read (teacher or student mode)."""

    name = "reward"
    reasoning = True
    config_class = RewardTrainingConfig

    def __init__(self, config: RewardTrainingConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(log_with=config.log_with, project_dir=config.output_dir,
                                       mixed_precision=config.mixed_precision)
        prepare_output_dir(self.output_dir, config, self.accelerator)
        torch.manual_seed(config.seed)
        model, self.processor, self.rubric = load_base(config.base, config.trust_remote_code)
        self.dimensions = tuple(config.dimensions or self.rubric.dimension_names)
        for dimension in self.dimensions:
            self.rubric.dimension_index(dimension)
        self.levels = self.rubric.levels_tensor()
        self.train_set = load_split(config.train_data)
        self.eval_set = load_split(config.eval_data)
        self.train_bank, self.eval_bank = ImageBank(self.train_set), ImageBank(self.eval_set)
        self.encoder = self.make_encoder(self.train_bank.images)
        self.eval_encoder = self.make_encoder(self.eval_bank.images)
        model = self.prepare_model(model)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.extra_modules = self.build_extra_modules(model)
        parameters = [p for p in model.parameters() if p.requires_grad]
        parameters += [p for module in self.extra_modules.values() for p in module.parameters()]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.warmup_steps,
                                       num_training_steps=config.steps)
        prepared = self.accelerator.prepare(model, *self.extra_modules.values(), self.optimizer, self.scheduler)
        self.model = prepared[0]
        self.extra_modules = dict(zip(self.extra_modules, prepared[1:-2], strict=True))
        self.optimizer, self.scheduler = prepared[-2:]
        self.checkpoints = CheckpointManager(self.accelerator, self.output_dir / "checkpoints",
                                             config.checkpoints_total_limit)
        self.start_step, self.train_seconds, self.history = 0, 0.0, []
        progress = self.checkpoints.resume() if config.resume else None
        if progress is not None:
            self.start_step, self.train_seconds = progress.step, progress.train_seconds
            self.history = progress.extra.get("history", [])
        self.model.train()

    # ------------------------------------------------------------------------------------------------ hooks
    def make_encoder(self, images: torch.Tensor) -> RowEncoder:
        return RowEncoder(self.processor, self.rubric, images)

    def prepare_model(self, model):
        """Make the trainable model: LoRA adapters when `config.lora`, else every parameter trains."""
        if self.config.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(**self.config.lora))
        else:
            model.requires_grad_(True)
        return model

    def build_extra_modules(self, model) -> dict[str, torch.nn.Module]:
        """Trainable modules besides the backbone (a value head); saved and restored with it."""
        return {}

    def training_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def device(self):
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def global_count(self, value: float) -> float:
        """Sum of a local count over processes (for normalising local loss sums)."""
        tensor = torch.tensor(float(value), device=self.device)
        return float(self.accelerator.reduce(tensor, "sum")) if self.world_size > 1 else float(value)

    def reduce_logs(self, sums: dict[str, float], counts: dict[str, float]) -> dict[str, float]:
        """Global means: `sums[key]` over processes divided by `counts[key]` over processes (nan if none)."""
        keys = sorted(sums)
        tensor = torch.tensor([[sums[k] for k in keys], [counts[k] for k in keys]], dtype=torch.float64,
                              device=self.device)
        if self.world_size > 1:
            tensor = self.accelerator.reduce(tensor, "sum")
        return {k: (tensor[0, i] / tensor[1, i]).item() if tensor[1, i] > 0 else math.nan
                for i, k in enumerate(keys)}

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in batch.items()}

    # ------------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, dataset=None, bank=None, encoder=None) -> np.ndarray:
        """Score distributions `(N, D, K)` of the held-out split (teacher mode: averaged over sampled chains)."""
        dataset = self.eval_set if dataset is None else dataset
        encoder = self.eval_encoder if encoder is None else encoder
        config = self.config
        rows = [(n, d, Row(n, record.prompt, dimension)) for n, record in enumerate(dataset.records)
                for d, dimension in enumerate(self.dimensions)]
        probs = torch.zeros(len(dataset.records), len(self.dimensions), len(self.levels), dtype=torch.float64,
                            device=self.device)
        model = self.unwrapped()
        was_training = model.training
        model.eval()
        batch_size = max(1, config.eval_batch_size // (config.eval_num_samples if self.reasoning else 1))
        # chunks are cut from all rows and dealt to processes, each sampled with its own seed: the chains (and so the
        # report) are the same whatever the number of processes
        for start in range(self.rank * batch_size, len(rows), self.world_size * batch_size):
            chunk = rows[start:start + batch_size]
            chunk_rows = [row for _, _, row in chunk]
            if self.reasoning:
                seed = config.seed * 1_000_003 + start
                chains, _ = sample_reasoning(model, encoder, chunk_rows, config.eval_num_samples,
                                             config.eval_max_new_tokens, generator_seed=seed)
                expanded = [Row(r.image, r.prompt, r.dimension, c) for r, cs in zip(chunk_rows, chains, strict=True)
                            for c in cs]
            else:
                expanded = chunk_rows
            out = forward_rows(model, self.to_device(encoder(expanded)), encoder.read_token_ids.to(self.device))
            p = out.score_log_probs.exp().double()
            p = p.view(len(chunk), -1, p.shape[-1]).mean(dim=1)
            for (n, d, _), row_probs in zip(chunk, p, strict=True):
                probs[n, d] = row_probs
        model.train(was_training)
        if self.world_size > 1:
            probs = self.accelerator.reduce(probs, "sum")
        return probs.cpu().numpy()

    def evaluate(self) -> dict:
        """Held-out report: `preference_accuracy` (panel pairs, human ties left out, mean over dimensions), the
        expected scores `(N, D)` (`scores`) and the full `evaluate_probs` report (`report`)."""
        probs = self.predict()
        subset = self.eval_set
        if tuple(subset.dimensions) != self.dimensions:  # probs are in `self.dimensions` order
            subset = type(subset)(subset.records, subset.pairs, subset.root, list(self.dimensions), subset.levels,
                                  [], subset.description)
        report = evaluate_probs(probs, subset)
        accuracy = {d: report[d]["pair_accuracy"]["accuracy"] for d in self.dimensions if "pair_accuracy" in report[d]}
        return {"preference_accuracy": float(np.mean(list(accuracy.values()))) if accuracy else math.nan,
                "per_dimension": accuracy, "scores": probs @ self.levels.double().numpy(), "report": report}

    def scalar_preference_accuracy(self, scores: np.ndarray) -> dict:
        """Panel-pair accuracy of per-record scalar scores `(N, D)` (for the scalar baselines); `scores` as given."""
        targets = dataset_targets(self.eval_set)
        index, outcome = targets["dimension_pairs"]
        accuracy = {}
        for d, dimension in enumerate(self.dimensions):
            column = list(self.eval_set.dimensions).index(dimension)
            result = pairwise_accuracy_from_pairs(scores[index[:, 0], d], scores[index[:, 1], d], outcome[:, column])
            accuracy[dimension] = result["accuracy"]
        return {"preference_accuracy": float(np.mean(list(accuracy.values()))), "per_dimension": accuracy,
                "scores": scores}

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run (or finish) the training; save the final model; returns the metrics written to `metrics.json`."""
        config, accelerator = self.config, self.accelerator
        if config.log_with:
            hparams = {k: v for k, v in asdict(config).items() if isinstance(v, int | float | str | bool)}
            accelerator.init_trackers(self.name, config=hparams)
        evaluation = {}
        progress = tqdm(range(self.start_step, config.steps), desc=self.name, initial=self.start_step,
                        total=config.steps, disable=not accelerator.is_local_main_process)
        started = time.perf_counter()
        for step in progress:
            logs = self.training_step(step)
            accelerator.clip_grad_norm_(self.optimizer.param_groups[0]["params"], config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            done = step + 1
            logs["lr"] = self.scheduler.get_last_lr()[0]
            self.history.append({"step": done, **logs})
            progress.set_postfix(loss=f"{logs.get('loss', math.nan):.4f}")
            if done % config.log_every == 0:
                accelerator.log({f"train/{k}": v for k, v in logs.items() if not math.isnan(v)}, step=done)
            if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
                evaluation = self.evaluate()
                accelerator.log({"eval/preference_accuracy": evaluation["preference_accuracy"]}, step=done)
                logger.info("%s step %d: held-out preference accuracy %.4f %s", self.name, done,
                            evaluation["preference_accuracy"], evaluation["per_dimension"])
            if done % config.save_every == 0 or done == config.steps:
                self.save_state(done, self.train_seconds + time.perf_counter() - started)
        self.train_seconds += time.perf_counter() - started
        if not evaluation:
            evaluation = self.evaluate()
        metrics = {
            "trainer": self.name, "steps": config.steps, "resumed_from_step": self.start_step,
            "train_seconds": round(self.train_seconds, 1),
            "preference_accuracy": evaluation["preference_accuracy"], "per_dimension": evaluation["per_dimension"],
            "eval_scores": evaluation["scores"].tolist(), "history": self.history,
        }
        if "report" in evaluation:
            metrics["report"] = _jsonable(evaluation["report"])
        self.save_final(metrics)
        accelerator.end_training()
        return metrics

    def save_state(self, step: int, seconds: float) -> None:
        self.checkpoints.save(Progress(step, seconds, {"history": self.history}))

    def save_final(self, metrics: dict) -> None:
        """The trained model as a Z-Reward checkpoint with its model card (`<output_dir>/model`, README.md inside)
        and `<output_dir>/metrics.json`."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.export(self.output_dir / "model")
            distilled = getattr(self.config, "judge_outputs", None) or getattr(self.config, "teacher", None)
            card = model_card(self.name, self.rubric, self.dimensions, self.config.base,
                              self.train_set.description or "user data", metrics, teacher=distilled)
            write_model_card(self.output_dir / "model", card)
            write_text_atomic(self.output_dir / METRICS_FILE, json.dumps(metrics, indent=2))
        self.accelerator.wait_for_everyone()

    def export(self, directory: Path) -> None:
        """Save as a checkpoint `ZRewardLoss.from_pretrained` loads (LoRA saved as an adapter over `base`)."""
        model = self.unwrapped()
        requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        loss = ZRewardLoss(ZRewardScorer(model, self.processor, self.rubric), dimensions=list(self.dimensions))
        loss.save_pretrained(directory, base_model=self.config.base if self.config.lora else None,
                             overwrite=self.config.overwrite)
        for name, p in model.named_parameters():  # the scorer froze the backbone; training may go on
            p.requires_grad_(requires_grad[name])
        model.train()


def run_entry_point(trainer_class, config_class, argv: list[str] | None = None) -> dict:
    """The body of every `python -m training.<name>` entry point: parse the config, train, log the result."""
    from .config import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_args(config_class, argv)
    trainer = trainer_class(config)
    metrics = trainer.train()
    logger.info("%s: held-out preference accuracy %.4f in %.0f s", trainer.name, metrics["preference_accuracy"],
                metrics["train_seconds"])
    return metrics


def run_cached(trainer_class, config) -> dict:
    """Train unless `<output_dir>/metrics.json` exists (then return it); an interrupted run resumes."""
    path = Path(config.output_dir) / METRICS_FILE
    if path.exists():
        logger.info("%s: done already (%s)", config.output_dir, path)
        return json.loads(path.read_text())
    config.resume = True
    return trainer_class(config).train()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
