"""Reward fine-tuning of a diffusers generator with `ZRewardLoss`: LoRA on the denoiser, DRaFT-K / DRaFT-LV /
AlignProp / ReFL gradients through the sampler (docs/method.md, 'Generator fine-tuning').

Each step samples `batch_size` prompts, generates with the method's gradient path (`pipelines.methods`), scores the
decoded images with the reward (the RISD student: one differentiable forward), and takes an optimizer step on the LoRA
parameters only. Guardrails (same section of docs/method.md): the uncertainty-averse reward (κ > 0 subtracts κ·σ), a
velocity-space L2 to the frozen base at the steps that carry gradients, ReFL's saturating φ(r) = ReLU(margin − r),
monitors (reward mean/std, the reward model's own σ on the samples, sample diversity, colour saturation) and early
stopping on a held-out judge (the synthetic world's pixel oracle, for the world's prompts). The objective keywords
of `ZRewardLoss` (`reward_statistic`, `reward_combine`, `reward_floors`, ...) pick what the reward reads of the
distribution; with `redistill_every` > 0 the teacher re-scores the generator's own samples every so many steps and
the student is refreshed on them (`pipelines.redistill`, online re-distillation).

    python -m pipelines.reward_finetune --config pipelines/configs/draft_tiny.yaml
    accelerate launch -m pipelines.reward_finetune --config pipelines/configs/draft_sdxl.yaml

The LoRA weights land in `<output_dir>/lora` in diffusers' format: `pipe.load_lora_weights("<output_dir>/lora")`.
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

from training.config import check_at_least, check_choice, none_if_off, parse_args
from training.state import CheckpointManager, Progress, prepare_output_dir, write_text_atomic
from zreward_diffusers import ZRewardLoss
from zreward_diffusers.loss import COMBINATIONS, STATISTICS

from .attention import configure_attention
from .lora import DEFAULT_TARGETS, add_lora, denoiser_of, diversity, saturation, save_lora
from .methods import METHODS, sample
from .rollout import rollout_for

logger = logging.getLogger(__name__)


@dataclass
class RewardFinetuneConfig:
    """Reward fine-tuning of a diffusers generator's LoRA with a differentiable reward (DRaFT-K, DRaFT-LV, AlignProp,
    ReFL).

    `python -m pipelines.reward_finetune --config pipelines/configs/draft_tiny.yaml`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Generator": ("pretrained", "num_inference_steps", "guidance_scale", "height", "width", "max_sequence_length",
                      "mixed_precision", "gradient_checkpointing"),
        "Reward": ("reward", "reward_device", "kappa", "reward_dimensions", "normalize_reward", "reward_statistic",
                   "reward_alpha", "reward_threshold", "reward_combine", "reward_temperature", "reward_floors",
                   "reward_floor_weight"),
        "Online re-distillation": ("redistill_every", "redistill_teacher", "redistill_samples", "redistill_chains",
                                   "redistill_max_new_tokens", "redistill_steps", "redistill_lr",
                                   "redistill_batch_size"),
        "Method": ("method", "k", "lv_samples", "refl_last_steps", "refl_margin", "velocity_l2_weight"),
        "Prompts": ("prompts", "num_prompts", "eval_prompts", "batch_size", "eval_batch_size"),
        "LoRA and optimisation": ("lora_rank", "lora_alpha", "lora_targets", "lr", "max_grad_norm", "steps", "seed"),
        "Evaluation and early stopping": ("eval_every", "judge", "early_stopping_patience"),
        "Checkpoints and logging": ("output_dir", "save_every", "checkpoints_total_limit", "resume", "overwrite",
                                    "log_with"),
    }

    pretrained: str = field(default="world/generator", metadata={
        "help": "the generator: a diffusers pipeline directory or hub id, or tiny:<sd15|sdxl|sd3|flux> (random)"})
    reward: str = field(default="runs/student_risd/model", metadata={
        "help": "a Z-Reward checkpoint (the RISD student), or tiny (a random tiny student, for tests)"})
    reward_device: str | None = field(default=None, metadata={"help": "device of the reward (default: generator's)"})
    kappa: float = field(default=0.0, metadata={"help": "uncertainty aversion: the reward minus kappa * sigma"})
    reward_dimensions: list | None = field(default=None, metadata={"help": "rubric dimensions rewarded (default all)"})
    normalize_reward: bool = field(default=True, metadata={
        "help": "running mean/std normalisation of mu (reward_statistic mean only; kept as they are across "
                "re-distillation refreshes)"})
    reward_statistic: str = field(default="mean", metadata={
        "help": f"what each dimension contributes: one of {STATISTICS} (not mean: set normalize_reward false); "
                "overrides the checkpoint's setting, as every reward_* field does"})
    reward_alpha: float | None = field(default=None, metadata={
        "help": "level of the quantile / cvar statistic, in (0, 1] (none: 0.25)"})
    reward_threshold: float | None = field(default=None, metadata={
        "help": "the score of the tail statistic, P(score >= threshold)"})
    reward_combine: str = field(default="weighted", metadata={"help": f"across dimensions: one of {COMBINATIONS}"})
    reward_temperature: float | None = field(default=None, metadata={"help": "tau of softmin (none: 0.05)"})
    reward_floors: dict | None = field(default=None, metadata={
        "help": "{dimension: floor} in the statistic's units: reward minus floor_weight * ReLU(floor - r_d)"})
    reward_floor_weight: float = field(default=1.0, metadata={"help": "weight of the floor penalty"})
    method: str = field(default="draft", metadata={"help": f"one of {METHODS}"})
    k: int = field(default=1, metadata={"help": "DRaFT-K: steps with gradients"})
    lv_samples: int = field(default=2, metadata={"help": "DRaFT-LV: re-noised samples per prompt"})
    refl_last_steps: int = field(default=10, metadata={"help": "ReFL: stop uniformly within the last this many steps"})
    refl_margin: float | None = field(default=None, metadata={"help": "ReFL's phi: loss ReLU(margin - r); none: -r"})
    num_inference_steps: int = field(default=20, metadata={"help": "sampler steps"})
    guidance_scale: float = field(default=1.0, metadata={"help": "classifier-free guidance (1: off)"})
    height: int = field(default=32, metadata={"help": "image height"})
    width: int = field(default=32, metadata={"help": "image width"})
    max_sequence_length: int = field(default=77, metadata={"help": "T5 prompt length (SD3, Flux)"})
    prompts: str = field(default="synthetic", metadata={"help": "synthetic (the world's grammar) or a text file"})
    num_prompts: int = field(default=512, metadata={"help": "training prompts drawn from the world"})
    eval_prompts: int = field(default=32, metadata={"help": "held-out prompts for the judge"})
    eval_batch_size: int | None = field(
        default=None, metadata={"help": "prompts per evaluation batch (each batch's noise has its own seed); "
                                        "default: batch_size"}
    )
    batch_size: int = field(
        default=4, metadata={"help": "prompts per step per process (N processes: N x batch_size per step; the "
                                     "run equals one process with N x batch_size)"}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_targets: list = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={"help": "LoRA modules"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    seed: int = field(default=0, metadata={"help": "seed of prompts, noise and LoRA init"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "checkpoint the denoiser steps and the VAE decoder (and the reward backbone)"})
    velocity_l2_weight: float = field(default=0.0, metadata={"help": "weight of the velocity-space L2 to the base"})
    eval_every: int = field(default=0, metadata={"help": "steps between held-out judgements (0: start and end)"})
    judge: str = field(default="oracle", metadata={"help": "oracle (the world's pixel judge) or none"})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "stop after this many evaluations without a better judged score (0: never)"})
    save_every: int = field(default=50, metadata={"help": "steps between training-state checkpoints"})
    checkpoints_total_limit: int | None = field(default=None, metadata={
        "help": "keep at most this many checkpoints in <output_dir>/checkpoints (oldest deleted first; none: all)"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest complete checkpoint in <output_dir>/checkpoints (none there: start)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in a used <output_dir>: its checkpoints and metrics are deleted, its outputs replaced "
                "(without it, or --resume, a used <output_dir> is refused)"})
    output_dir: str = field(default="runs/draft", metadata={"help": "LoRA weights, checkpoints, metrics"})
    log_with: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker (none: off)"})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision"})
    redistill_every: int = field(default=0, metadata={
        "help": "every this many steps the teacher scores the generator's own samples and the student is refreshed "
                "by RISD on them (0: off). Cost: R = steps // redistill_every refreshes; teacher chains = R x "
                "redistill_samples x dimensions x redistill_chains (each <= redistill_max_new_tokens tokens); "
                "student rows R x redistill_steps x redistill_batch_size x dimensions; logged in metrics.json"})
    redistill_teacher: str | None = field(default=None, metadata={
        "help": "the Z-Reward teacher checkpoint (e.g. runs/demo/teacher_gdso/model; tiny: a random tiny teacher, "
                "for tests); required with redistill_every"})
    redistill_samples: int = field(default=32, metadata={
        "help": "generator samples per refresh (training prompts, seeds from (seed, refresh))"})
    redistill_chains: int = field(default=4, metadata={"help": "M: teacher reasoning chains per input"})
    redistill_max_new_tokens: int = field(default=96, metadata={"help": "teacher reasoning length limit"})
    redistill_steps: int = field(default=10, metadata={"help": "student optimizer steps per refresh"})
    redistill_lr: float = field(default=1e-4, metadata={"help": "the student's AdamW learning rate"})
    redistill_batch_size: int = field(default=8, metadata={
        "help": "images per student step (all rewarded dimensions each); also inputs per teacher generation call"})

    def __post_init__(self):
        self.log_with = none_if_off(self.log_with)
        check_choice(self, "method", METHODS)
        check_choice(self, "judge", ("oracle", "none"))
        check_choice(self, "mixed_precision", ("no", "fp16", "bf16"))
        check_at_least(self, 1, "batch_size", "eval_batch_size", "steps", "num_inference_steps", "save_every",
                       "checkpoints_total_limit", "k", "lv_samples", "lora_rank")
        check_at_least(self, 0, "eval_every", "early_stopping_patience", "eval_prompts", "redistill_every")
        check_choice(self, "reward_statistic", STATISTICS)
        check_choice(self, "reward_combine", COMBINATIONS)
        if self.normalize_reward and self.reward_statistic != "mean":
            raise ValueError(f"`normalize_reward` standardises the expected score; it does not apply to "
                             f"`reward_statistic` {self.reward_statistic!r}: set normalize_reward false, or "
                             "reward_statistic mean")
        if self.redistill_every:
            if not self.redistill_teacher:
                raise ValueError("`redistill_every` > 0 needs a `redistill_teacher` (a Z-Reward teacher checkpoint, "
                                 "e.g. runs/demo/teacher_gdso/model)")
            check_at_least(self, 1, "redistill_samples", "redistill_chains", "redistill_max_new_tokens",
                           "redistill_steps", "redistill_batch_size")
            if not (isinstance(self.redistill_lr, int | float) and math.isfinite(self.redistill_lr)
                    and self.redistill_lr > 0):
                raise ValueError(f"`redistill_lr` must be a positive number, got {self.redistill_lr!r}")


def load_pipeline(name: str, seed: int = 0):
    if name.startswith("tiny:"):
        from .tiny import build_tiny_pipeline

        return build_tiny_pipeline(name.split(":", 1)[1], seed=seed)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(name, use_safetensors=True)


def load_reward(name: str, config: RewardFinetuneConfig) -> ZRewardLoss:
    overrides = dict(kappa=config.kappa, normalize=config.normalize_reward, margin=config.refl_margin,
                     statistic=config.reward_statistic, alpha=config.reward_alpha, threshold=config.reward_threshold,
                     combine=config.reward_combine, temperature=config.reward_temperature,
                     floors=config.reward_floors, floor_weight=config.reward_floor_weight)
    if config.reward_dimensions:
        overrides["dimensions"] = list(config.reward_dimensions)
    if name == "tiny":
        from zreward_diffusers.testing import build_tiny_scorer

        return ZRewardLoss(build_tiny_scorer("qwen2_vl", seed=0), **overrides)
    return ZRewardLoss.from_pretrained(name, **overrides)


def world_prompts(num_train: int, num_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Distinct prompts of the world's grammar: training ones, then held-out ones never trained on."""
    from zreward_diffusers.synthetic.grammar import sample_prompt_spec

    rng = np.random.default_rng(seed)
    seen, ordered = set(), []
    while len(ordered) < num_train + num_eval:
        text = sample_prompt_spec(rng, 0.3).text()
        if text not in seen:
            seen.add(text)
            ordered.append(text)
    return ordered[:num_train], ordered[num_train:]


@torch.no_grad()
def judge_images(images: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """The world's oracle judge (pixel estimator + oracle), mean over rubric dimensions, per image."""
    from zreward_diffusers.synthetic.estimator import judge_batch

    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    scores = judge_batch(pixels.permute(0, 2, 3, 1).cpu().numpy(), prompts)
    return np.mean(np.stack(list(scores.values())), axis=0)


class RewardFinetuner:
    def __init__(self, config: RewardFinetuneConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(log_with=config.log_with, project_dir=config.output_dir,
                                       mixed_precision=config.mixed_precision)
        prepare_output_dir(self.output_dir, config, self.accelerator)
        self.pipe = load_pipeline(config.pretrained, config.seed)
        self.pipe.to(self.accelerator.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.attention = configure_attention(self.pipe)
        self.parameters = add_lora(self.pipe, config.lora_rank, config.lora_alpha, config.lora_targets, config.seed)
        denoiser = denoiser_of(self.pipe)
        self.reward = load_reward(config.reward, config).to(config.reward_device or self.accelerator.device)
        if config.gradient_checkpointing:
            self.reward.enable_gradient_checkpointing()
        self.rollout = rollout_for(self.pipe, config.height, config.width, config.guidance_scale,
                                   config.max_sequence_length)
        if config.prompts == "synthetic":
            self.train_prompts, self.eval_prompts = world_prompts(config.num_prompts, config.eval_prompts, config.seed)
        else:
            lines = [line.strip() for line in Path(config.prompts).read_text().splitlines() if line.strip()]
            if len(lines) <= config.eval_prompts:
                raise ValueError(f"`prompts` file has {len(lines)} prompts; need more than eval_prompts")
            self.train_prompts, self.eval_prompts = lines[config.eval_prompts:], lines[:config.eval_prompts]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.denoiser, self.optimizer, self.scheduler = self.accelerator.prepare(denoiser, self.optimizer,
                                                                                 self.scheduler)
        self.redistiller = None
        if config.redistill_every:  # before the resume: it registers the hooks that save and restore the student
            from .redistill import Redistiller

            self.redistiller = Redistiller(self)
        self.checkpoints = CheckpointManager(self.accelerator, self.output_dir / "checkpoints",
                                             config.checkpoints_total_limit)
        self.start_step, self.seconds, self.history = 0, 0.0, []
        self.evaluations, self.best, self.waited = [], -math.inf, 0
        progress = self.checkpoints.resume() if config.resume else None
        if progress is not None:
            self.start_step, self.seconds = progress.step, progress.train_seconds
            self.history = progress.extra["history"]
            # the evaluations so far and the early-stopping state go on where they were
            self.evaluations = progress.extra.get("evaluations", [])
            best = progress.extra.get("best")
            self.best, self.waited = -math.inf if best is None else best, progress.extra.get("waited", 0)
            if self.redistiller is not None:
                self.redistiller.restore(progress.extra)
            stats = progress.extra["reward_stats"]  # the reward's running normalisation goes on where it was
            self.reward.running_mean.copy_(torch.tensor(stats["running_mean"]))
            self.reward.running_var.copy_(torch.tensor(stats["running_var"]))
            self.reward.num_batches_tracked.fill_(stats["num_batches_tracked"])

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        """The noise of step `step` (`stream` 0: training, 7: evaluation), the same on every process: each keeps
        its shard of what is drawn for the whole batch (`pipelines.methods.sample`'s `shard`)."""
        seed = int(np.random.SeedSequence([self.config.seed, step, stream, 0]).generate_state(1)[0])
        return torch.Generator(device="cpu").manual_seed(seed)

    def step_prompts(self, step: int) -> list[str]:
        """This process's `batch_size` prompts of step `step`: its slice of the step's `batch_size * processes`
        prompts, drawn from `(seed, step)` alone."""
        rank, world, size = self.accelerator.process_index, self.accelerator.num_processes, self.config.batch_size
        rng = np.random.default_rng([self.config.seed, step, 0])
        drawn = rng.integers(len(self.train_prompts), size=size * world)[rank * size:(rank + 1) * size]
        return [self.train_prompts[i] for i in drawn]

    def training_step(self, step: int) -> dict[str, float]:
        """One step on this process's prompts; the logged values are over the whole batch (all processes), except
        `diversity`, the mean over processes of each one's batch diversity."""
        config, accelerator = self.config, self.accelerator
        prompts = self.step_prompts(step)
        rng = np.random.default_rng([config.seed, step, 1])
        shard = (accelerator.process_index * len(prompts), accelerator.num_processes * len(prompts))
        result = sample(self.rollout, prompts, config.num_inference_steps, config.method, config.k,
                        config.lv_samples, config.refl_last_steps, self.generator(step), rng,
                        use_checkpoint=config.gradient_checkpointing,
                        velocity_l2=config.velocity_l2_weight > 0, shard=shard)
        image_prompts = [prompts[i] for i in result.prompt_index]
        reward_device = next(self.reward.scorer.model.parameters()).device
        reward, scores = self.reward.reward_with_scores(result.images.to(reward_device), image_prompts)
        loss = self.reward.loss_from_reward(reward).to(result.images.device)
        if result.velocity_l2 is not None:
            loss = loss + config.velocity_l2_weight * result.velocity_l2
        self.accelerator.backward(loss)
        self.average_gradients()
        grad_norm = self.accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        device = accelerator.device
        rewards = accelerator.gather(reward.detach().float().to(device))
        means = torch.stack([value.detach().float().to(device) for value in (
            loss, scores.expected.mean(), scores.std.mean(), diversity(result.images), saturation(result.images))])
        means = accelerator.reduce(means, "mean")  # equal shards: the mean of the processes' means
        logs = {"loss": float(means[0]), "reward_mean": float(rewards.mean()),
                "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                "expected_score": float(means[1]), "reward_model_std": float(means[2]),
                "diversity": float(means[3]), "saturation": float(means[4]), "grad_norm": float(grad_norm)}
        if result.velocity_l2 is not None:
            logs["velocity_l2"] = float(accelerator.reduce(result.velocity_l2.detach(), "mean"))
        return logs

    @torch.no_grad()
    def average_gradients(self) -> None:
        """Average the LoRA gradients over processes (one all-reduce).

        The rollout calls the pipeline's own denoiser, not the DDP wrapper `accelerator.prepare` returns (the
        pipelines' sampling code reads the module's attributes), so DDP's backward hooks never synchronise; this
        does. With equal shards, the average of the processes' mean-loss gradients is the whole batch's."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad for p in self.parameters if p.grad is not None]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), "mean")
        for g, value in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(value.view_as(g))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out prompts, fixed seeds: the reward's μ and the judge's score of the generated images.

        Every process evaluates every prompt with the same seeds, so all reach the same early-stopping decision."""
        config = self.config
        images, prompts = [], []
        eval_batch_size = config.eval_batch_size or config.batch_size
        for start in range(0, len(self.eval_prompts), eval_batch_size):
            chunk = self.eval_prompts[start:start + eval_batch_size]
            out = sample(self.rollout, chunk, config.num_inference_steps, "draft", k=1,
                         generator=self.generator(10**9 + start, 7), rng=np.random.default_rng(0))
            images.append(out.images.detach())
            prompts += chunk
        images = torch.cat(images)
        reward_device = next(self.reward.scorer.model.parameters()).device
        scores = self.reward.score(images.to(reward_device), prompts)
        result = {"eval_expected_score": float(scores.expected.mean())}
        if config.judge == "oracle":
            result["eval_judge_score"] = float(judge_images(images, prompts).mean())
        return result

    def train(self) -> dict:
        config, accelerator = self.config, self.accelerator
        if config.log_with:
            hparams = {k: v for k, v in asdict(config).items() if isinstance(v, int | float | str | bool)}
            accelerator.init_trackers("reward_finetune", config=hparams)
        if not self.start_step:
            self.evaluations = [{"step": 0, **self.evaluate()}]
        evaluations, stopped_early = self.evaluations, False
        bar = tqdm(range(self.start_step, config.steps), desc=config.method, initial=self.start_step,
                   total=config.steps, disable=not accelerator.is_local_main_process)
        started = time.perf_counter()
        for step in bar:
            logs = self.training_step(step)
            done = step + 1
            self.history.append({"step": done, **logs})
            bar.set_postfix(reward=f"{logs['reward_mean']:.3f}")
            accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=done)
            if self.redistiller is not None and done % config.redistill_every == 0:
                self.redistiller.refresh(done // config.redistill_every, done)
            if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
                evaluation = {"step": done, **self.evaluate()}
                evaluations.append(evaluation)
                accelerator.log({f"eval/{k}": v for k, v in evaluation.items() if k != "step"}, step=done)
                score = evaluation.get("eval_judge_score", evaluation["eval_expected_score"])
                if score > self.best:
                    self.best, self.waited = score, 0
                    self.save_lora("best_lora")
                else:
                    self.waited += 1
                if config.early_stopping_patience and self.waited >= config.early_stopping_patience:
                    stopped_early = True
                    logger.info("early stop at step %d: the judged score has not improved for %d evaluations",
                                done, self.waited)
                    break
            if done % config.save_every == 0 or done == config.steps:
                self.save_state(done, self.seconds + time.perf_counter() - started)
        self.seconds += time.perf_counter() - started
        self.save_lora("lora")
        metrics = {"method": config.method, "steps": config.steps, "resumed_from_step": self.start_step,
                   "train_seconds": round(self.seconds, 1),
                   "stopped_early": stopped_early, "evaluations": evaluations, "history": self.history}
        if self.redistiller is not None:
            metrics.update(self.redistiller.metrics(self.seconds))
            if accelerator.is_main_process:  # the refreshed reward, loadable with ZRewardLoss.from_pretrained
                self.redistiller.save_reward(self.output_dir / "reward")
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.output_dir / "metrics.json", json.dumps(metrics, indent=2))
        accelerator.end_training()
        return metrics

    def save_lora(self, name: str) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_lora(self.pipe, self.output_dir / name, overwrite=self.config.overwrite)

    def save_state(self, step: int, seconds: float) -> None:
        stats = {"running_mean": self.reward.running_mean.tolist(), "running_var": self.reward.running_var.tolist(),
                 "num_batches_tracked": int(self.reward.num_batches_tracked)}
        extra = {"history": self.history, "reward_stats": stats, "evaluations": self.evaluations,
                 "best": None if self.best == -math.inf else self.best, "waited": self.waited}
        if self.redistiller is not None:
            extra.update(self.redistiller.state())
        self.checkpoints.save(Progress(step, seconds, extra))


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_args(RewardFinetuneConfig, argv)
    metrics = RewardFinetuner(config).train()
    first, last = metrics["evaluations"][0], metrics["evaluations"][-1]
    logger.info("%s: held-out reward mu %.3f -> %.3f, judge %s -> %s", config.method, first["eval_expected_score"],
                last["eval_expected_score"], first.get("eval_judge_score"), last.get("eval_judge_score"))
    return metrics


if __name__ == "__main__":
    main()
