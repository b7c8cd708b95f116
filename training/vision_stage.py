"""Stage 0 of base pretraining: the vision tower alone, trained to classify what the world's images show.

Real VLMs start from a vision encoder that was pretrained on its own (Qwen-VL's ViT comes from OpenCLIP, Bai et al.
2023, arXiv 2308.12966, §3; LLaVA aligns a frozen CLIP tower, Liu et al. 2023, arXiv 2304.08485), and only then learn
to talk about images. Our tiny towers, trained only through the language model's answers, learn slowly: measured
here, the teacher-size tower named the shape of held-out images 70% of the time after 1,000 description steps,
where the same tower with a direct classification loss reaches that in a few hundred steps
(docs/experiments/base-models.md). So `training.pretrain_base` first trains the tower (patch embedding, blocks and
merger) with linear heads on its output tokens, one head per attribute of the true scene (`TARGETS`); the heads are
then dropped, and the whole model is trained on conversations as before. The saved checkpoint is an ordinary Qwen2-VL.

Two choices make the tower learn faster per image (measured: docs/experiments/base-models.md):

- the heads read the image's output tokens side by side (`head="tokens"`), as the language model will, instead of
  their mean (`head="mean"`), which leaves the tower to squeeze where things are into every token;
- dense targets (`cell_weight > 0`): each output token also names the shape of the objects whose centres fall in its
  cell of the image, and how many there are (`cell_targets`). A dense per-location loss gives the tower a signal
  for every token rather than one per image, as in dense vision pretraining (e.g. DETR-style detection heads, Carion
  et al. 2020, arXiv 2005.12872; SigLIP 2's local losses, Tschannen et al. 2025, arXiv 2502.14786).

Models whose towers have the same config can share the stage (`SharedVisionClassifier`, `vision.shared` in the
base config, the default): one trunk (patch embedding and blocks) is trained for all of them, each with its own
merger and heads, at about the cost of one tower; afterwards every model holds the trained trunk. Real model families
share their vision encoder across sizes in the same way (Qwen2-VL's 2B and 7B, Wang et al. 2024, arXiv 2409.12191).

The optimizer is AdamW, or with `vision.optimizer: muon` Muon on the tower's and mergers' weight matrices and AdamW on
the rest (`training.optim.MuonAdamW`; Jordan et al. 2024): measured here, Muon names shape after 2,500 steps as well
as AdamW after about 8,000 (docs/experiments/base-models.md).

Each step's images are a function of `(seed, step)`; the stage saves a training state (tower, heads, optimizer moments,
scheduler, RNG) every `save_every` steps, so `--resume` continues it exactly. Its settings are `VisionStageConfig`,
the base config's `vision` field (`--vision.steps` and so on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from zreward_diffusers.preprocessing import QwenVLImageTransform
from zreward_diffusers.synthetic import Scene
from zreward_diffusers.synthetic.grammar import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES

from .config import check_at_least, check_choice, check_non_negative
from .optim import OPTIMIZERS
from .state import Progress, loss_curve, start_or_resume

logger = logging.getLogger(__name__)

SHADOWS = ("consistent", "wrong", "none")
MAX_COUNT = 6  # counts above it share the last class (the world draws at most 6 objects)

# The attributes the tower learns to classify: number of classes and the class of a scene.
TARGETS: dict[str, tuple[int, Callable[[Scene], int]]] = {
    "colour": (len(OBJECT_COLOURS), lambda s: OBJECT_COLOURS.index(s.colour)),
    "shape": (len(SHAPES), lambda s: SHAPES.index(s.shape)),
    "count": (MAX_COUNT + 1, lambda s: min(s.count, MAX_COUNT)),
    "background": (len(BACKGROUND_COLOURS), lambda s: BACKGROUND_COLOURS.index(s.background)),
    "sun": (2, lambda s: int(s.light == "right")),
    "shadows": (len(SHADOWS), lambda s: SHADOWS.index(s.shadows)),
    "floating": (MAX_COUNT + 1, lambda s: min(s.floating, MAX_COUNT)),
    "blur": (2, lambda s: int(s.blur > 0)),
    "noise": (2, lambda s: int(s.noise > 0)),
    "compression": (2, lambda s: int(s.compression > 0)),
    "cast": (2, lambda s: int(s.cast_strength > 0)),
    "crop": (2, lambda s: int(s.crop > 0)),
    "overlap": (2, lambda s: int(s.overlap)),
}
# Reported after the stage (the attributes the base models must name).
REPORTED = ("colour", "shape", "count")
HEADS = ("tokens", "mean")


@dataclass
class VisionStageConfig:
    """Stage 0 of base pretraining: the vision tower alone, trained to classify the scene's attributes before the
    conversations (`train_vision`). `PretrainBaseConfig.vision` holds it: `vision: {steps: 5000}` in the YAML file,
    `--vision.steps 5000` on the command line. The learning-rate schedule (`lr_scheduler`, `warmup_steps`), weight
    decay, gradient clipping, seed, checkpoints and logging are the base config's, shared with stage 1."""

    steps: int = field(
        default=5000, metadata={"help": "steps training the vision tower alone to classify the scene's attributes "
                                        "(`training.vision_stage`), before the conversations; 0 skips it (a model "
                                        "may set its own `vision_steps` in `models`)"}
    )
    head: str = field(
        default="tokens",
        metadata={"help": "the heads read the tower's output tokens side by side (`tokens`) or their `mean`"},
    )
    cell_weight: float = field(
        default=3.0,
        metadata={"help": "weight of the dense targets (each output token names the shape and number of the objects "
                          "centred in its cell of the image); 0 turns them off"},
    )
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate (the base config's `lr_scheduler`)"})
    optimizer: str = field(
        default="muon",
        metadata={"help": "`adamw`, or `muon` (`training.optim.MuonAdamW`: Muon on the tower's and mergers' weight "
                          "matrices at `vision.muon_lr`, AdamW at `vision.lr` on the rest)"},
    )
    muon_lr: float = field(default=0.02, metadata={"help": "Muon's peak learning rate"})
    batch_size: int = field(default=64, metadata={"help": "images per step, over all processes"})
    num_images: int = field(
        default=163840, metadata={"help": "images in its pool (1.54 GB of 56 px images per process): the "
                                          "conversations' training images if `vision.pool_from_train`, then world "
                                          "groups after the held-out ones"}
    )
    pool_from_train: bool = field(
        default=True, metadata={"help": "its pool starts with the conversations' training images (no second "
                                        "rendering of them); false: only world groups after the held-out ones"}
    )
    shared: bool = field(
        default=True,
        metadata={"help": "models whose vision towers have the same config and stage-0 steps train one shared trunk "
                          "(patch embedding and blocks), each with its own merger and heads"},
    )

    def __post_init__(self):
        check_at_least(self, 0, "steps", prefix="vision.")
        check_at_least(self, 1, "batch_size", "num_images", prefix="vision.")
        check_choice(self, "head", HEADS, prefix="vision.")
        check_choice(self, "optimizer", OPTIMIZERS, prefix="vision.")
        check_non_negative(self, "cell_weight", "muon_lr", prefix="vision.")


def scene_targets(scenes: list[Scene]) -> torch.Tensor:
    """`(N, len(TARGETS))` class indices of each scene's attributes."""
    return torch.tensor([[target(scene) for _, target in TARGETS.values()] for scene in scenes], dtype=torch.long)


MAX_CELL_COUNT = 3  # objects centred in one cell, capped (dense targets)


def cell_targets(scenes: list[Scene], grid: tuple[int, int]) -> torch.Tensor:
    """`(N, rows * columns, 2)` dense targets, one row per output token of an image.

    `grid` is `(rows, columns)` of the tower's output (merged) tokens, which Qwen2-VL's merger lays out row by row,
    each over an equal cell of the image. For each cell: the shape class of the objects whose centres fall in it
    (`len(SHAPES)` when there are none; a scene's objects share one shape) and their number, capped at
    `MAX_CELL_COUNT`. Object centres are mapped through the zoom-in crop, if any; those cropped out are in no cell.
    """
    rows, columns = grid
    out = np.zeros((len(scenes), rows * columns, 2), dtype=np.int64)
    for n, scene in enumerate(scenes):
        x0, y0, x1, y1 = scene.extra["crop_window"] if scene.crop > 0 else (0.0, 0.0, 1.0, 1.0)
        counts = np.zeros(rows * columns, dtype=np.int64)
        for obj in scene.objects:
            x, y = (obj.x - x0) / (x1 - x0), (obj.y - y0) / (y1 - y0)
            if 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:  # in view (`synthetic.scene`'s crop keeps these)
                counts[min(int(y * rows), rows - 1) * columns + min(int(x * columns), columns - 1)] += 1
        out[n, :, 0] = np.where(counts > 0, SHAPES.index(scene.shape), len(SHAPES))
        out[n, :, 1] = np.minimum(counts, MAX_CELL_COUNT)
    return torch.from_numpy(out)


class VisionClassifier(nn.Module):
    """A VLM's vision tower with one linear head per attribute on its output tokens.

    `tower` is the model's own module (shared, not copied): training this trains the VLM's tower; `None` leaves the
    heads alone, fed by `read` (`SharedVisionClassifier`). `head="tokens"` reads an image's `num_tokens` output
    tokens concatenated (every image must have that many), `head="mean"` their mean. With `cells`, two more linear
    heads classify each output token's cell (`cell_targets`): the outputs `"cell_shape"`
    `(B, num_tokens, len(SHAPES) + 1)` and `"cell_count"` `(B, num_tokens, MAX_CELL_COUNT + 1)`.
    """

    def __init__(self, tower: nn.Module | None, width: int, head: str = "mean", num_tokens: int | None = None,
                 cells: bool = False):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"`head` must be one of {HEADS}, got {head!r}")
        if (head == "tokens" or cells) and (not isinstance(num_tokens, int) or num_tokens < 1):
            raise ValueError(f"`num_tokens` must be a positive integer with head='tokens' or cells, got "
                             f"{num_tokens!r}")
        self.tower, self.head, self.num_tokens, self.cells = tower, head, num_tokens, cells
        features = width * num_tokens if head == "tokens" else width
        self.heads = nn.ModuleDict({name: nn.Linear(features, classes) for name, (classes, _) in TARGETS.items()})
        if cells:
            self.cell_heads = nn.ModuleDict({"cell_shape": nn.Linear(width, len(SHAPES) + 1),
                                             "cell_count": nn.Linear(width, MAX_CELL_COUNT + 1)})

    def reset_heads(self) -> None:
        for head in [*self.heads.values(), *(self.cell_heads.values() if self.cells else ())]:
            head.reset_parameters()

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.tower is None:
            raise ValueError("this classifier has no tower: call `read` with the output tokens")
        tokens = self.tower(pixel_values, grid_thw=image_grid_thw).pooler_output  # (sum of tokens, width)
        return self.read(tokens, tokens_per_image(image_grid_thw, self.tower.spatial_merge_size))

    def read(self, tokens: torch.Tensor, per_image: list[int]) -> dict[str, torch.Tensor]:
        """The heads' logits from the merged output tokens of a batch, `per_image[i]` of them for image `i`."""
        if self.head == "mean" and not self.cells:
            pooled = torch.stack([chunk.mean(dim=0) for chunk in tokens.split(per_image)])  # (B, width)
            return {name: head(pooled) for name, head in self.heads.items()}
        if any(n != self.num_tokens for n in per_image):
            raise ValueError(f"every image must give `num_tokens` = {self.num_tokens} output tokens, got {per_image}")
        grid = tokens.reshape(len(per_image), self.num_tokens, -1)  # (B, tokens, width)
        pooled = grid.flatten(1) if self.head == "tokens" else grid.mean(dim=1)
        logits = {name: head(pooled) for name, head in self.heads.items()}
        if self.cells:
            logits.update({name: head(grid) for name, head in self.cell_heads.items()})
        return logits


def tokens_per_image(image_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """Merged output tokens of each image of a batch."""
    return (image_grid_thw.prod(dim=1) // merge_size**2).tolist()


TRUNK = ("patch_embed", "blocks")  # a Qwen2-VL tower's modules before its merger (the rotary embedding has no weights)


class SharedVisionClassifier(nn.Module):
    """The vision towers of several VLMs trained as one: they share a trunk, each keeps its merger and heads.

    `towers` maps model names to their towers, whose configs must be the same but for the merger's output width
    (`widths`, the language model's). The first tower's trunk (patch embedding and blocks) runs once per batch;
    every model's merger reads its output, and that model's `VisionClassifier` heads read the merger's tokens. So
    the trunk learns from every model's heads, at the cost of one tower plus a merger per further model. After
    training, `copy_trunk` gives every tower the trained trunk: the models then start from one pretrained vision
    encoder, each with its own projection into its language model, as Qwen2-VL's 2B and 7B models share one 675M ViT
    (Wang et al. 2024, arXiv 2409.12191, section 2.1). With one tower this is that tower's `VisionClassifier`.

    `forward` returns `{model name: its heads' logits}`.
    """

    def __init__(self, towers: dict[str, nn.Module], widths: dict[str, int], head: str = "mean",
                 num_tokens: int | None = None, cells: bool = False):
        super().__init__()
        if not towers or set(widths) != set(towers):
            raise ValueError(f"`widths` must name the same models as `towers`, got {sorted(widths)} and "
                             f"{sorted(towers)}")
        self.names = list(towers)
        self.tower = towers[self.names[0]]
        self.mergers = nn.ModuleDict({name: towers[name].merger for name in self.names[1:]})
        self.classifiers = nn.ModuleDict({name: VisionClassifier(None, widths[name], head, num_tokens, cells)
                                          for name in self.names})

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        out = self.tower(pixel_values, grid_thw=image_grid_thw)
        per_image = tokens_per_image(image_grid_thw, self.tower.spatial_merge_size)
        return {name: self.classifiers[name].read(
                    out.pooler_output if name == self.names[0] else self.mergers[name](out.last_hidden_state),
                    per_image)
                for name in self.names}

    def copy_trunk(self, towers: dict[str, nn.Module]) -> None:
        """Load the shared trunk's weights into every tower of `towers` (those trained through their merger only)."""
        for tower in towers.values():
            if tower is not self.tower:
                for part in TRUNK:
                    getattr(tower, part).load_state_dict(getattr(self.tower, part).state_dict())


def classification_loss(logits: dict[str, torch.Tensor], targets: torch.Tensor, cells: torch.Tensor | None = None,
                        cell_weight: float = 0.0) -> torch.Tensor:
    """Sum over attributes of the mean cross-entropy; with `cells` (`cell_targets` rows), plus `cell_weight` times
    the mean cross-entropy of each token's cell shape and cell count."""
    loss = sum(nn.functional.cross_entropy(logits[name], targets[:, i]) for i, name in enumerate(TARGETS))
    if cells is not None and cell_weight:
        for j, name in enumerate(("cell_shape", "cell_count")):
            cross_entropy = nn.functional.cross_entropy(logits[name].flatten(0, 1), cells[..., j].flatten())
            loss = loss + cell_weight * cross_entropy
    return loss


def sample_indices(num_images: int, step: int, seed: int, batch_size: int) -> list[int]:
    """The images of stage-0 step `step`: a function of `(seed, step)` only."""
    return np.random.default_rng([seed, 0, step]).integers(num_images, size=batch_size).tolist()


@torch.no_grad()
def probe_accuracy(classifier: SharedVisionClassifier, transform: QwenVLImageTransform, images: torch.Tensor,
                   targets: torch.Tensor, accelerator: Accelerator,
                   batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Held-out accuracy of each model's heads on `REPORTED` attributes (images split over processes)."""
    classifier.eval()
    local = list(range(accelerator.process_index, len(images), accelerator.num_processes))
    names, models = list(TARGETS), classifier.names
    correct = torch.zeros(len(models), len(REPORTED) + 1, device=accelerator.device)
    for start in range(0, len(local), batch_size):
        rows = local[start : start + batch_size]
        pixels = transform(images[rows].permute(0, 3, 1, 2).float() / 255.0)
        logits = classifier(**{k: v.to(accelerator.device) for k, v in pixels.items()})
        for m, model in enumerate(models):
            for j, name in enumerate(REPORTED):
                predicted = logits[model][name].argmax(dim=1).cpu()
                correct[m, j] += (predicted == targets[rows, names.index(name)]).sum()
            correct[m, -1] += len(rows)
    correct = accelerator.reduce(correct, "sum").tolist()
    classifier.train()
    return {model: {name: correct[m][j] / correct[m][-1] for j, name in enumerate(REPORTED)}
            for m, model in enumerate(models)}


def train_vision(models: dict[str, nn.Module], config, accelerator: Accelerator, transform: QwenVLImageTransform,
                 images: torch.Tensor, scenes: list[Scene], eval_images: torch.Tensor, eval_scenes: list[Scene],
                 state_dir: Path) -> dict:
    """Run stage 0 for `config.vision.steps` steps on the towers of `models` (name -> VLM), which share one trunk
    (`SharedVisionClassifier`; a single model trains its own tower); returns the probe accuracy of each model's
    heads (`probe_accuracy`: name -> attribute -> accuracy) and the stage's step losses (summed over the models).

    `images` (N, H, W, 3) uint8 and their `scenes` are the training pool; `config` is a `PretrainBaseConfig`: its
    `vision` (`VisionStageConfig`) settings, and its schedule, seed, checkpoint and logging ones. At the end every
    model's tower holds the trained trunk and its own trained merger.
    """
    towers = {name: model.model.visual for name, model in models.items()}
    first = next(iter(towers.values()))
    grid = transform(images[:1].permute(0, 3, 1, 2).float() / 255.0)["image_grid_thw"][0].tolist()
    merge = first.spatial_merge_size
    rows, columns = grid[1] // merge, grid[2] // merge
    stage = config.vision
    cells = stage.cell_weight > 0
    classifier = SharedVisionClassifier(
        towers, {name: model.config.text_config.hidden_size for name, model in models.items()},
        head=stage.head, num_tokens=grid[0] * rows * columns, cells=cells)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for heads in classifier.classifiers.values():
            heads.reset_heads()
    label = "+".join(models)
    prepared, optimizer, scheduler, checkpoints, progress = start_or_resume(
        classifier, stage.lr, stage.steps, config, accelerator, state_dir,
        muon_lr=stage.muon_lr if stage.optimizer == "muon" else None,
        muon_exclude=("classifiers.",))  # the heads: AdamW
    start_step, train_seconds, extra = progress.step, progress.train_seconds, progress.extra
    targets = scene_targets(scenes)
    dense = cell_targets(scenes, (rows, columns)) if cells else None
    rank, world = accelerator.process_index, accelerator.num_processes
    losses = list(extra.get("losses", []))
    progress = tqdm(range(start_step, stage.steps), desc=f"{label} (vision)",
                    disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    for step in progress:
        rows = sample_indices(len(images), step, config.seed, stage.batch_size)[rank::world]
        pixels = transform(images[rows].permute(0, 3, 1, 2).float() / 255.0)
        logits = prepared(**{k: v.to(accelerator.device) for k, v in pixels.items()})
        step_targets = targets[rows].to(accelerator.device)
        step_cells = dense[rows].to(accelerator.device) if cells else None
        loss = sum(classification_loss(model_logits, step_targets, step_cells, stage.cell_weight)
                   for model_logits in logits.values())
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(prepared.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(loss.detach(), "mean").item())
        done = step + 1
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
        if done % config.log_every == 0:
            accelerator.log({f"{label}/vision/loss": losses[-1]}, step=done)
        if done % config.save_every == 0 or done == stage.steps:
            elapsed = train_seconds + time.perf_counter() - started
            checkpoints.save(Progress(done, elapsed, {"losses": losses}))
    train_seconds += time.perf_counter() - started
    unwrapped = accelerator.unwrap_model(prepared)
    accuracy = probe_accuracy(unwrapped, transform, eval_images, scene_targets(eval_scenes), accelerator)
    logger.info("%s vision stage: held-out probe accuracy %s", label, accuracy)
    unwrapped.copy_trunk(towers)
    accelerator.free_memory(prepared, optimizer, scheduler)
    return dict(probe_accuracy=accuracy, train_seconds=round(train_seconds, 1), steps=stage.steps,
                loss_curve=loss_curve(losses), losses=losses)
