"""Pretrain the world's base VLMs: tiny Qwen2-VL students and teachers that can name what the world's images show.

A from-scratch tiny VLM does not learn to compare its prompt with its image from score labels alone
(docs/design.md, 'The synthetic world'); real VLMs arrive pretrained, and so must ours. This entry point builds one
tokenizer on the world's text (prompts, descriptions, rationales, the world's questions and the rubric's wording),
shared by all models, then trains each model in `config.models` from scratch on chat-formatted conversations about
one image (image first), whose answers are written from the image's true scene
(`zreward_diffusers.synthetic.questions`): several short questions (object colour, shape and count, background
colour, sun side, shadow direction, floating objects, degradations), or one long answer ("What is in the image?",
"Describe the image." → `describe(scene)`, and the rubric's own questions answered with the description — never
with a score: scores are learned later). The loss is the language-model loss on the answer tokens only, each
answer's mean token loss weighing the same. Before that, with `vision.steps` > 0 (the shipped config), stage 0
(`training.vision_stage`, configured by the `vision` settings) trains each model's vision tower alone to classify
the scene's attributes, as real VLMs start from a pretrained vision encoder; its classification heads are not part of
the saved model. Models whose towers have the same config train one shared trunk in that stage (`vision.shared`; the
shipped teacher and student do), as one vision encoder serves every size of a real VLM family. Stage 0's image pool
starts with the conversations' training images (`vision.pool_from_train`, rendered once for both stages) and goes on
with world groups after the held-out ones. A model may set its own `vision_steps` (stage 0) and `steps` (stage 1)
in `models`.

Each model is saved as an ordinary Hugging Face checkpoint (`<output_dir>/<name>`: safetensors weights, config,
processor with tokenizer and chat template), which every later stage loads exactly as a downloaded one:

    python -m training.pretrain_base --config training/configs/pretrain_base_tiny.yaml --output_dir runs/base
    accelerate launch -m training.pretrain_base --config training/configs/pretrain_base_tiny.yaml   # same code

`<output_dir>/metrics.json` holds the held-out accuracies (colour, shape, count and background named by the
highest log-likelihood among the candidate answers, not by free generation) and the training time of each model.
Periodic checkpoints (`<output_dir>/checkpoints/<name>/checkpoint-<step>`, written by `accelerator.save_state`
through `training.state.CheckpointManager`) let `--resume` continue a run exactly: each step's batch is a function of
(seed, step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLImageProcessor

from zreward_diffusers.saving import save_directory
from zreward_diffusers.synthetic import Scene, SyntheticWorld, WorldConfig
from zreward_diffusers.synthetic.parallel import check_render_workers, render_world
from zreward_diffusers.synthetic.questions import (
    EVAL_CANDIDATES,
    conversation,
    corpus,
    evaluated_question,
    is_clean,
    true_answer,
)
from zreward_diffusers.testing import tiny_config, tiny_processor
from zreward_diffusers.tiny_tokenizer import build_tiny_tokenizer

from .config import check_at_least, check_choice, check_non_negative, parse_args, scalar_fields
from .optim import OPTIMIZERS
from .sequences import ConversationEncoder
from .state import Progress, latest_checkpoint, loss_curve, prepare_output_dir, start_or_resume, write_text_atomic
from .vision_stage import VisionStageConfig, train_vision

logger = logging.getLogger(__name__)

FAMILY = "qwen2_vl"
METRICS_FILE = "metrics.json"


@dataclass
class PretrainBaseConfig:
    """Pretraining of the synthetic world's base models (tiny Qwen2-VL) on descriptions of its images."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Models": ("models", "vocab_size", "patch_size", "min_pixels", "max_pixels"),
        "Data": ("world_seed", "num_train_images", "num_eval_images", "image_size", "questions_per_image",
                 "task_weights", "render_workers"),
        "Optimisation": ("steps", "batch_size", "micro_batch_size", "lr", "optimizer", "muon_lr", "weight_decay",
                         "lr_scheduler", "warmup_steps", "max_grad_norm", "seed"),
        "Stage 0: the vision tower alone": ("vision",),
        "Evaluation": ("eval_every", "eval_batch_size"),
        "Checkpoints and logging": ("output_dir", "save_every", "checkpoints_total_limit", "resume", "overwrite",
                                    "log_every", "log_with"),
    }

    output_dir: str = field(default="runs/base", metadata={"help": "where `<name>/` checkpoints and metrics go"})
    models: dict = field(
        default_factory=lambda: {
            "student": {
                "text_config": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 8,
                                "num_key_value_heads": 4, "initializer_range": 0.06},
                "vision_config": {"embed_dim": 64, "num_heads": 4, "initializer_range": 0.06},
            },
            "teacher": {
                "text_config": {"hidden_size": 192, "intermediate_size": 384, "num_hidden_layers": 3,
                                "num_attention_heads": 12, "num_key_value_heads": 4, "initializer_range": 0.06},
                "vision_config": {"embed_dim": 64, "num_heads": 4, "initializer_range": 0.06},
                "steps": 750,
            },
        },
        metadata={"help": "models to train, by name: overrides of the tiny Qwen2-VL config (`text_config`, "
                          "`vision_config`; the vision merger's output width follows the text width) and optionally "
                          "the model's own `vision_steps` and `steps`, which win over the config's `vision.steps` "
                          "and `steps`"},
    )
    world_seed: int = field(default=0, metadata={"help": "seed of the synthetic world"})
    num_train_images: int = field(
        default=65536, metadata={"help": "training images of the conversations (the world's first groups)"}
    )
    num_eval_images: int = field(default=512, metadata={"help": "held-out images (groups after the training ones)"})
    image_size: int = field(default=56, metadata={"help": "side of the rendered images in pixels"})
    min_pixels: int = field(
        default=56 * 56,
        metadata={"help": "processor min_pixels: with 7-pixel patches 56*56 reads 56 px images unresized as 16 image "
                          "tokens (with Qwen2-VL's 14-pixel patches 112*112 upsamples them to 16, 56*56 gives 4)"},
    )
    max_pixels: int = field(default=56 * 56, metadata={"help": "processor max_pixels"})
    patch_size: int = field(
        default=7,
        metadata={"help": "the vision tower's patch side, in the processor and every model (7 with 56*56 pixels; "
                          "Qwen2-VL's own 14 with 112*112 gives the same 16 tokens 1.37x slower)"},
    )
    vocab_size: int = field(default=1024, metadata={"help": "size of the shared byte-level BPE vocabulary"})
    task_weights: dict = field(
        default_factory=lambda: {"colour": 3, "shape": 4, "count": 5, "background": 1, "sun": 0.25, "shadows": 0.25,
                                 "floating": 0.25, "blur": 0.25, "noise": 0.25, "compression": 0.25, "cast": 0.25,
                                 "crop": 0.25, "overlap": 0.25, "objects": 2, "describe": 1, "rubric": 1},
        metadata={"help": "relative sampling weight of each question type (`TASKS` and `rubric`)"},
    )
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    optimizer: str = field(
        default="muon",
        metadata={"help": "conversation stage: `adamw`, or `muon` (`training.optim.MuonAdamW`: Muon at `muon_lr` on "
                          "the weight matrices but the token embeddings and the LM head, AdamW at `lr` on the rest)"},
    )
    muon_lr: float = field(default=0.005, metadata={"help": "conversation stage: Muon's peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(
        default="cosine",
        metadata={"help": "transformers scheduler name; with one that ignores the total (constant_with_warmup), "
                          "k steps resumed to 2k equal a 2k-step run"},
    )
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    batch_size: int = field(default=32, metadata={"help": "rows (images) per step, over all processes"})
    questions_per_image: int = field(
        default=4, metadata={"help": "short questions asked about one image in one conversation (one row)"}
    )
    micro_batch_size: int = field(
        default=8, metadata={"help": "rows per forward pass; rows are sorted by length first, so each pads little"}
    )
    steps: int = field(
        default=1000, metadata={"help": "stage 1: optimizer steps per model (a model may set its own in `models`)"}
    )
    eval_every: int = field(default=500, metadata={"help": "steps between held-out evaluations (0: only at the end)"})
    eval_batch_size: int = field(default=64, metadata={"help": "sequences per forward pass in evaluation"})
    save_every: int = field(default=500, metadata={"help": "steps between training-state checkpoints"})
    checkpoints_total_limit: int | None = field(default=None, metadata={
        "help": "checkpoints kept per model and stage (oldest deleted first; none: all)"})
    log_every: int = field(default=10, metadata={"help": "steps between logged losses"})
    log_with: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker, or null for none"})
    seed: int = field(default=0, metadata={"help": "seed of weight init and of each step's batch"})
    resume: bool = field(default=False, metadata={
        "help": "continue each model from its newest complete checkpoint (none there: start it)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in a used <output_dir>: its checkpoints and metrics are deleted, its outputs replaced "
                "(without it, or --resume, a used <output_dir> is refused)"})
    vision: VisionStageConfig = field(
        default_factory=VisionStageConfig,
        metadata={"help": "stage 0, the vision tower alone (`training.vision_stage.VisionStageConfig`)"},
    )
    render_workers: int = field(
        default=2, metadata={"help": "processes rendering stage 0's image pool (1: in this process)"}
    )

    def __post_init__(self):
        check_patch_size(self)
        check_stage_settings(self)
        check_at_least(self, 1, "steps", "batch_size", "micro_batch_size", "questions_per_image", "save_every",
                       "log_every", "eval_batch_size", "checkpoints_total_limit", "num_train_images",
                       "num_eval_images")
        check_at_least(self, 0, "warmup_steps", "eval_every")


# ------------------------------------------------------------------------------------------------ conversations
def sample_batch(items, step: int, config: PretrainBaseConfig) -> list[tuple[int, list[tuple[str, str]]]]:
    """The rows of step `step`, a function of `(config.seed, step)` only: `(image index, [(question, answer)])`.

    A row is a conversation about one image (`questions.conversation`): a question type drawn by `task_weights`,
    then, unless it is one of `questions.ASKED_ALONE`, `questions_per_image - 1` further distinct types (one image
    encoding serves several answers).
    """
    rng = np.random.default_rng([config.seed, step])
    return [(index, conversation(items[index], config.task_weights, config.questions_per_image, rng))
            for index in rng.integers(len(items), size=config.batch_size).tolist()]


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def weighted_answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over answer tokens of `label_weights` × negative log-likelihood: the sum of each answer's mean NLL.

    Logits are computed only over the span of columns that hold answer tokens (the LM head is a fifth of the cost).
    """
    inputs = {key: value for key, value in batch.items() if key != "label_weights"}
    columns = (batch["label_weights"] > 0).any(dim=0).nonzero().squeeze(1)
    first, last = int(columns[0]), int(columns[-1])
    keep = torch.arange(first - 1, last, device=columns.device)  # the logits at t predict token t + 1
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits.float()  # (B, K, V)
    targets = batch["input_ids"][:, first : last + 1]  # (B, K)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, K)
    return (nll * batch["label_weights"][:, first : last + 1]).sum()


def train_step(model, encoder: ConversationEncoder, rows, accelerator: Accelerator,
               micro_batch_size: int) -> torch.Tensor:
    """Backpropagate the mean over the step's answers of each answer's mean token NLL; returns this process's share
    (detached; the mean over processes of the shares is the step's loss).

    `rows` are this process's rows of the step. Rows are sorted by length and run in micro-batches, each padded to
    its own longest row (the rubric's questions are three times longer than the others); gradients are
    synchronised once, after the last micro-batch. The mean is over the answers of every process (their count is
    summed first), so processes holding conversations of different lengths give the gradient of one process.
    """
    rows = sorted(rows, key=encoder.length)
    num_answers = torch.tensor(float(sum(len(turns) for _, turns in rows)), device=accelerator.device)
    # DDP averages gradients over processes: each process's sum / (all answers / number of processes)
    scale = accelerator.num_processes / accelerator.reduce(num_answers, "sum")
    total = torch.zeros((), device=accelerator.device)
    for start in range(0, len(rows), micro_batch_size):
        last = start + micro_batch_size >= len(rows)
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            batch = _to(encoder(rows[start : start + micro_batch_size]), accelerator.device)
            loss = weighted_answer_loss(model, batch) * scale
            accelerator.backward(loss)
        total += loss.detach()
    return total


@torch.no_grad()
def name_attributes(model, encoder: ConversationEncoder, indices: list[int], batch_size: int,
                    device=None) -> dict[str, list[str]]:
    """The answer the model gives for each attribute of `EVAL_CANDIDATES` on images `indices` of `encoder.images`:
    the candidate of highest log-likelihood.

    Every candidate is a single token, so its log-likelihood is read from the next-token distribution after the
    question (one forward pass per image and attribute).
    """
    device = device or next(model.parameters()).device
    answers = {}
    for attribute, candidates in EVAL_CANDIDATES.items():
        question = evaluated_question(attribute)
        candidate_ids = [encoder.single_token_id(candidate) for candidate in candidates]
        answers[attribute] = []
        for start in range(0, len(indices), batch_size):
            rows = indices[start : start + batch_size]
            batch = _to(encoder([(i, [(question, None)]) for i in rows]), device)
            logits = model(**{k: v for k, v in batch.items() if k != "label_weights"}, use_cache=False).logits
            last = batch["attention_mask"].sum(dim=1) - 1  # the read position of each right-padded row
            scores = logits[torch.arange(len(rows)), last][:, candidate_ids]  # (B, C); softmax keeps the argmax
            answers[attribute] += [candidates[p] for p in scores.argmax(dim=1).tolist()]
    return answers


@torch.no_grad()
def evaluate(model, encoder: ConversationEncoder, indices: list[int], scenes: list[Scene], accelerator: Accelerator,
             batch_size: int) -> dict[str, float]:
    """Held-out accuracy of naming each attribute in `EVAL_CANDIDATES` (`name_attributes`).

    `indices` are image indices into `encoder.images`, `scenes` their true scenes; processes split the images. Keys
    `<attribute>` cover all images, `<attribute>_clean` the undegraded ones (`is_clean`).
    """
    model.eval()
    local = list(range(accelerator.process_index, len(indices), accelerator.num_processes))
    clean = torch.tensor([is_clean(scenes[i]) for i in local], dtype=torch.bool)
    answers = name_attributes(model, encoder, [indices[i] for i in local], batch_size, accelerator.device)
    accuracies = {}
    for attribute in EVAL_CANDIDATES:
        correct = torch.tensor([answer == true_answer(attribute, scenes[i])
                                for answer, i in zip(answers[attribute], local, strict=True)], dtype=torch.bool)
        counts = torch.tensor([correct.sum(), len(local), correct[clean].sum(), clean.sum()])
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").tolist()
        accuracies[attribute] = counts[0] / counts[1]
        accuracies[f"{attribute}_clean"] = counts[2] / max(counts[3], 1)
    model.train()
    return accuracies


# ------------------------------------------------------------------------------------------------ models
def build_tokenizer(items, vocab_size: int):
    """The tokenizer shared by every base model (distillation compares their distributions token by token)."""
    return build_tiny_tokenizer(FAMILY, vocab_size=vocab_size, extra_corpus=corpus(items))


def build_processor(tokenizer, config: PretrainBaseConfig):
    """The tiny Qwen2-VL processor around `tokenizer`, with the config's image size limits."""
    processor = tiny_processor(FAMILY, tokenizer)
    processor.image_processor = Qwen2VLImageProcessor(min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                                                      patch_size=config.patch_size)
    return processor


def build_model(tokenizer, overrides: dict, seed: int):
    """A randomly initialised Qwen2-VL: the tiny config of `testing.tiny_config` with `overrides` applied."""
    config = tiny_config(FAMILY, tokenizer).to_dict()
    unknown = sorted(set(overrides) - {"text_config", "vision_config"})
    unknown += sorted(f"{part}.{key}" for part in ("text_config", "vision_config")
                      for key in set(overrides.get(part, {})) - set(config[part]))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}")
    text = dict(config["text_config"], **overrides.get("text_config", {}))
    if "num_hidden_layers" in overrides.get("text_config", {}):
        text.pop("layer_types")  # recomputed for the new depth
    # Qwen2-VL's text attention uses hidden_size / num_attention_heads as the head width, its rotary embedding uses
    # head_dim, and M-RoPE splits half of it into (temporal, height, width) sections.
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if head_dim != text["head_dim"] or 2 * sum(text["rope_parameters"]["mrope_section"]) != head_dim:
        raise ValueError(
            "`text_config` must have head_dim == hidden_size / num_attention_heads == 2 * sum(mrope_section), got "
            f"{text['head_dim']}, {head_dim}, {2 * sum(text['rope_parameters']['mrope_section'])}"
        )
    vision = dict(config["vision_config"], **overrides.get("vision_config", {}))
    if vision["hidden_size"] != text["hidden_size"] and "hidden_size" in overrides.get("vision_config", {}):
        raise ValueError("`vision_config.hidden_size` (the merger's output) must equal `text_config.hidden_size`")
    vision["hidden_size"] = text["hidden_size"]
    config = Qwen2VLConfig.from_dict(dict(config, text_config=text, vision_config=vision))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config)


# ------------------------------------------------------------------------------------------------ training
def model_steps(name: str, key: str, steps) -> int:
    """A model's `key` (`vision_steps`, `steps`: its own in `models`, else the config's), checked."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`{key}` of model {name!r} must be a non-negative integer, got {steps!r}")
    return steps


def model_overrides(name: str, overrides: dict, config: PretrainBaseConfig) -> tuple[dict, int, int]:
    """A model's config overrides (with the processor's patch size), its stage-0 steps and its stage-1 steps (its own
    `vision_steps` and `steps` in `models`, else the config's)."""
    overrides = dict(overrides)
    vision_steps = model_steps(name, "vision_steps", overrides.pop("vision_steps", config.vision.steps))
    steps = model_steps(name, "steps", overrides.pop("steps", config.steps))
    overrides["vision_config"] = dict(overrides.get("vision_config", {}), patch_size=config.patch_size)
    return overrides, vision_steps, steps


def vision_groups(models: dict, steps: dict[str, int], shared: bool) -> list[list[str]]:
    """The models that take part in stage 0 (`steps` > 0), grouped: with `shared`, models whose vision towers have
    the same config (but for the merger's output width) and the same steps train one shared trunk; else alone."""
    groups: dict[tuple, list[str]] = {}
    for name, model in models.items():
        if not steps[name]:
            continue
        tower = {k: v for k, v in model.config.vision_config.to_dict().items() if k not in ("hidden_size",)}
        key = (json.dumps(tower, sort_keys=True, default=str), steps[name]) if shared else (name,)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def run_vision_stage(group: list[str], models: dict, steps: int, config: PretrainBaseConfig, accelerator: Accelerator,
                     encoder: ConversationEncoder, vision_pool, eval_indices: list[int],
                     eval_scenes: list[Scene]) -> dict:
    """Stage 0 (`training.vision_stage`) for one group of models sharing a trunk; returns `{name: its summary}`.

    A resumed run whose models all have a conversation-stage state does not repeat it (that state holds the whole
    model): the summaries written at the end of the stage are read back.
    """
    checkpoints = Path(config.output_dir) / "checkpoints"
    if config.resume and all(latest_checkpoint(checkpoints / name) for name in group):
        return {name: json.loads((checkpoints / f"{name}-vision.json").read_text()) for name in group}
    if len(group) > 1:
        logger.info("stage 0: %s share one vision trunk", ", ".join(group))
    stage = replace(config, vision=replace(config.vision, steps=steps))
    result = train_vision({name: models[name] for name in group}, stage, accelerator, encoder.transform, *vision_pool,
                          encoder.images[eval_indices], eval_scenes, checkpoints / f"{'+'.join(group)}-vision")
    summaries = {}
    for name in group:
        summaries[name] = dict(probe_accuracy=result["probe_accuracy"][name], train_seconds=result["train_seconds"],
                               steps=steps, loss_curve=result["loss_curve"],
                               shared_with=[other for other in group if other != name])
        if accelerator.is_main_process:  # kept for the metrics of a resumed run
            path = checkpoints / f"{name}-vision.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text(json.dumps(summaries[name]))
            path.with_suffix(".tmp").replace(path)  # atomic
    return summaries


def train_model(name: str, model, config: PretrainBaseConfig, accelerator: Accelerator, processor,
                encoder: ConversationEncoder, train_items, eval_indices: list[int], eval_scenes: list[Scene],
                vision: dict | None = None) -> dict:
    """Train `model` (built by `build_model`, its tower through stage 0 if `vision`, that stage's summary) on the
    conversations, save it to `<output_dir>/<name>`; returns its metrics and its step losses (all steps, resumed runs
    included; `metrics.json` keeps a `loss_curve` of window means for plots).

    `train_seconds` is the wall-clock time of the training loop, held-out evaluations and checkpoints included
    (summed over resumed runs); stage 0's time is in `vision_stage`.
    """
    output_dir = Path(config.output_dir)
    state_dir = output_dir / "checkpoints" / name
    num_parameters = sum(p.numel() for p in model.parameters())
    model, optimizer, scheduler, checkpoints, progress = start_or_resume(
        model, config.lr, config.steps, config, accelerator, state_dir,
        muon_lr=config.muon_lr if config.optimizer == "muon" else None, muon_exclude=MUON_EXCLUDE)
    start_step, train_seconds, extra = progress.step, progress.train_seconds, progress.extra

    rank, world = accelerator.process_index, accelerator.num_processes
    losses, accuracy = list(extra.get("losses", [])), {}
    progress = tqdm(range(start_step, config.steps), desc=name, disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    for step in progress:
        rows = sample_batch(train_items, step, config)[rank::world]
        loss = train_step(model, encoder, rows, accelerator, config.micro_batch_size)
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(loss, "mean").item())
        done = step + 1
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
        if done % config.log_every == 0:
            accelerator.log({f"{name}/loss": losses[-1], f"{name}/lr": scheduler.get_last_lr()[0]}, step=done)
        if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
            accuracy = evaluate(model, encoder, eval_indices, eval_scenes, accelerator, config.eval_batch_size)
            accelerator.log({f"{name}/eval/{key}": value for key, value in accuracy.items()}, step=done)
            logger.info("%s step %d: held-out accuracy %s", name, done, accuracy)
        if done % config.save_every == 0 or done == config.steps:
            elapsed = train_seconds + time.perf_counter() - started
            checkpoints.save(Progress(done, elapsed, {"losses": losses}))
    train_seconds += time.perf_counter() - started
    if not accuracy:  # nothing left to train after a resume
        accuracy = evaluate(model, encoder, eval_indices, eval_scenes, accelerator, config.eval_batch_size)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write(temporary: Path) -> None:
            unwrapped.save_pretrained(temporary)
            processor.save_pretrained(temporary)

        save_directory(output_dir / name, write, overwrite=config.overwrite)
    accelerator.free_memory(model, optimizer, scheduler)
    metrics = dict(held_out_accuracy=accuracy, train_seconds=round(train_seconds, 1), steps=config.steps,
                   resumed_from_step=start_step,
                   parameters=num_parameters, world_groups=world_groups(config, vision is not None),
                   loss_curve=loss_curve(losses))
    if vision is not None:
        metrics["vision_stage"] = vision
    return dict(metrics, losses=losses)


# ------------------------------------------------------------------------------------------------ world data
def render_pool(seed: int, image_size: int, start_group: int, num_images: int,
                workers: int = 1) -> tuple[torch.Tensor, list[Scene]]:
    """Stage 0's pool: `render_world` without the items, images `(N, H, W, 3)` uint8 and their scenes."""
    images, scenes = render_world(seed, image_size, start_group, num_images, workers, items=False,
                                  desc="stage-0 images")
    return torch.from_numpy(images), scenes


def pool_from_train(config: PretrainBaseConfig, num_train_images: int) -> int:
    """How many of stage 0's `vision.num_images` are the conversations' training images (the first ones)."""
    return min(num_train_images, config.vision.num_images) if config.vision.pool_from_train else 0


def world_groups(config: PretrainBaseConfig, stage_0: bool) -> dict:
    """The world groups a model's run used, `[first, end)` per part (and `world_seed`), so that benchmarks can hold
    out others (`benchmarks/base_models.py` checks). `stage_0` holds the groups of stage 0's own images, after the
    held-out ones; its pool's training images (`vision.pool_from_train`) are in `train`."""
    group_size = WorldConfig(image_size=config.image_size).group_size
    train = math.ceil(config.num_train_images / group_size)
    held_out = train + math.ceil(config.num_eval_images / group_size)
    used = dict(world_seed=config.world_seed, train=[0, train], held_out=[train, held_out])
    if stage_0:
        own = config.vision.num_images - pool_from_train(config, config.num_train_images)
        used["stage_0"] = [held_out, held_out + math.ceil(own / group_size)]
    return used


# ------------------------------------------------------------------------------------------------ config checks
def check_patch_size(config: PretrainBaseConfig) -> None:
    """`patch_size` is a positive integer that no model's `vision_config` contradicts (the processor is shared)."""
    if isinstance(config.patch_size, bool) or not isinstance(config.patch_size, int) or config.patch_size < 1:
        raise ValueError(f"`patch_size` must be a positive integer, got {config.patch_size!r}")
    for name, overrides in config.models.items():
        own = overrides.get("vision_config", {}).get("patch_size", config.patch_size)
        if own != config.patch_size:
            raise ValueError(f"model {name!r}: `vision_config.patch_size` {own} differs from the processor's "
                             f"`patch_size` {config.patch_size}")


# Left to AdamW by the conversation stage's Muon: the token embeddings and the output head (Jordan et al. 2024)
MUON_EXCLUDE = ("model.language_model.embed_tokens", "lm_head")


def check_stage_settings(config: PretrainBaseConfig) -> None:
    """The conversation stage's optimizer and Muon learning rate and `render_workers` are valid (stage 0's settings
    check themselves: `VisionStageConfig`)."""
    check_choice(config, "optimizer", OPTIMIZERS)
    check_non_negative(config, "muon_lr")
    check_render_workers(config.render_workers)


# ------------------------------------------------------------------------------------------------ entry point
def pretrain(config: PretrainBaseConfig) -> dict[str, dict]:
    """Build the data and tokenizer, train every model of `config.models`; returns `{name: metrics + losses}`."""
    accelerator = Accelerator(log_with=config.log_with, project_dir=config.output_dir)
    prepare_output_dir(config.output_dir, config, accelerator)
    world = SyntheticWorld(config.world_seed, WorldConfig(image_size=config.image_size))
    group_size = world.config.group_size
    num_train_groups = math.ceil(config.num_train_images / group_size)
    num_eval_groups = math.ceil(config.num_eval_images / group_size)
    started = time.perf_counter()
    train_items = render_world(config.world_seed, config.image_size, 0, config.num_train_images,
                               config.render_workers, desc="training images")
    eval_items = [item for group in world.groups(num_eval_groups, start=num_train_groups) for item in group.items]
    eval_items = eval_items[: config.num_eval_images]
    data_seconds = time.perf_counter() - started
    images = torch.from_numpy(np.stack([item.image for item in train_items + eval_items]))  # (N, H, W, 3) uint8
    eval_indices = list(range(len(train_items), len(images)))
    eval_scenes = [item.scene for item in eval_items]

    built = {name: model_overrides(name, overrides, config) for name, overrides in config.models.items()}
    vision_pool = None
    if any(steps for _, steps, _ in built.values()):
        # stage 0's pool: the training images (`vision.pool_from_train`), then world groups after the held-out ones
        reused = pool_from_train(config, len(train_items))
        own_images, own_scenes = render_pool(config.world_seed, config.image_size, num_train_groups + num_eval_groups,
                                             config.vision.num_images - reused, config.render_workers)
        vision_pool = (torch.cat([images[:reused], own_images]), [item.scene for item in train_items[:reused]]
                       + own_scenes)
        del own_images
        data_seconds = time.perf_counter() - started

    processor = build_processor(build_tokenizer(train_items, config.vocab_size), config)
    encoder = ConversationEncoder(processor, images)
    logger.info("world: %d training and %d held-out images in %.1f s; vocabulary %d", len(train_items),
                len(eval_items), data_seconds, len(processor.tokenizer))
    if config.log_with:
        accelerator.init_trackers("pretrain_base", config=scalar_fields(config))  # `vision.steps` and so on

    models = {name: build_model(processor.tokenizer, built[name][0], config.seed) for name in built}
    steps = {name: vision_steps for name, (_, vision_steps, _) in built.items()}
    vision = {}
    for group in vision_groups(models, steps, config.vision.shared):
        vision.update(run_vision_stage(group, models, steps[group[0]], config, accelerator, encoder, vision_pool,
                                       eval_indices, eval_scenes))
    vision_pool = None  # stage 1 does not need it: 1.5 GB back
    results = {}
    metrics_path = Path(config.output_dir) / METRICS_FILE
    for name in config.models:
        results[name] = train_model(name, models.pop(name), replace(config, steps=built[name][2]), accelerator,
                                    processor, encoder, train_items, eval_indices, eval_scenes, vision.get(name))
        if accelerator.is_main_process:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
            metrics[name] = {key: value for key, value in results[name].items() if key != "losses"}
            write_text_atomic(metrics_path, json.dumps(metrics, indent=2))
    accelerator.end_training()
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_args(PretrainBaseConfig, argv)
    results = pretrain(config)
    for name, result in results.items():
        logger.info("%s: %s in %.0f s", name, result["held_out_accuracy"], result["train_seconds"])


if __name__ == "__main__":
    main()
