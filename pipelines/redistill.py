"""Online re-distillation during reward fine-tuning (docs/method.md, section 7, 'Online re-distillation').

Every `redistill_every` steps of `pipelines.reward_finetune`, the reasoning teacher scores a batch of the tuned
generator's own samples and the student — the reward being optimised — is refreshed by RISD on them, so the reward
follows the generator off the distribution it was distilled on. Refresh r (after step r · `redistill_every`):

1. Sample `redistill_samples` images with the current generator, without gradients, through the evaluation sampler
   (the full chain): prompts drawn from the training prompts by `(seed, r)`, the noise of each chunk of
   `eval_batch_size` images by `(seed, r, chunk)`. Processes split the chunks and all-reduce the uint8 pixels, so
   every process holds the same images whatever the number of processes.
2. Fill the teacher cache `<output_dir>/redistill_cache/<fingerprint>` (`training.teacher_cache`) for every
   (image, rewarded dimension): M = `redistill_chains` reasoning chains each, q̄ the average of the distributions
   the teacher reads after them. Inputs are keyed by their pixels' hash, so a resumed run never samples the
   teacher again for an image it already scored; processes fill the chunks `rank::world_size`, then a barrier,
   then all read the cache. The teacher is loaded only by a process that has uncached inputs, and freed after.
3. `redistill_steps` AdamW steps (`redistill_lr`, no weight decay, gradients clipped at `max_grad_norm`) on the
   student's weights (its LoRA adapter when it is a PEFT checkpoint, else every weight) minimising the mean over
   the batch's (image, dimension) inputs of KL(q̄ ‖ p_S) on the K score levels, p_S read without reasoning exactly as
   the reward reads it (`loss.scorer(images in [0, 1], prompts, dimensions)`, the pixels the teacher saw). Step j
   takes `redistill_batch_size` of the refresh's images by `(seed, r, j)`, split over processes; the gradients are
   summed by all-reduce, so every process makes the same update (checked after each refresh: a per-parameter sum of
   the weights is compared across processes). The student's weights are trainable only inside the refresh; the
   reward stays frozen for the generator's steps.

The running statistics of `normalize_reward` are kept as they are across a refresh (their EMA follows the refreshed
student's μ at the loss's momentum); nothing is reset.

Compute budget: refreshes R = ⌊steps / redistill_every⌋; teacher chains = R × samples × dimensions × M (each at
most `redistill_max_new_tokens` generated tokens, then one forward pass); student rows (forward and backward)
R × redistill_steps × min(batch, samples) × dimensions, plus 2 × R × samples × dimensions forward rows for the KL
before and after; generator samples R × samples. The run logs this plan at the start, and `metrics.json` holds
each refresh's seconds (sampling, teacher, student), their total and their share of the run's training time.

Resumability: the student's trained weights (safetensors) and its optimizer state (a tensors-only `torch.save`,
read back with `weights_only=True`) are written into every training-state checkpoint by an accelerate save hook
and restored by a load hook (`training.state.CheckpointManager` runs `accelerator.save_state` / `load_state`), and
the refresh log goes in the checkpoint's progress; a run killed at any point and resumed equals the uninterrupted
one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from training.objectives import kl_to_target
from training.teacher_cache import CacheSettings, TeacherCache, build_teacher_cache, input_key, teacher_fingerprint
from training.trainer import load_base
from zreward_diffusers.checkpoint import CONFIG_NAME, read_config
from zreward_diffusers.data import Record, RewardDataset
from zreward_diffusers.rubric import Rubric

from .methods import sample

logger = logging.getLogger(__name__)

CACHE_DIR = "redistill_cache"
STUDENT_FILE = "redistill_student.safetensors"
OPTIMIZER_FILE = "redistill_optimizer.bin"
TINY_TEACHER = "tiny"
TIMES = ("sample_seconds", "teacher_seconds", "student_seconds")


def teacher_directory(name: str, output_dir: Path, accelerator) -> Path:
    """The teacher checkpoint's directory; `tiny` writes (once) a random tiny qwen2_vl teacher with the default rubric
    under `<output_dir>/redistill_cache/tiny_teacher` (for tests)."""
    if name == TINY_TEACHER:
        directory = Path(output_dir) / CACHE_DIR / "tiny_teacher"
        if accelerator.is_main_process and not (directory / CONFIG_NAME).is_file():
            from zreward_diffusers.testing import create_tiny_checkpoint

            create_tiny_checkpoint(directory, "qwen2_vl", seed=1)
        accelerator.wait_for_everyone()
        return directory
    directory = Path(name)
    if not (directory / CONFIG_NAME).is_file():
        raise ValueError(f"`redistill_teacher` {name!r} is not a Z-Reward checkpoint directory ({CONFIG_NAME} is "
                         "missing): give the teacher's saved model (e.g. runs/demo/teacher_gdso/model), or tiny")
    return directory


def check_teacher(teacher: Rubric, reward) -> None:
    """The student is distilled on the teacher's K score levels of the rewarded dimensions: both must agree."""
    if tuple(teacher.levels) != tuple(reward.rubric.levels):
        raise ValueError(f"the `redistill_teacher`'s rubric levels {teacher.levels} differ from the `reward`'s "
                         f"{reward.rubric.levels}: re-distillation needs a teacher on the student's score levels")
    missing = [d for d in reward.dimensions if d not in teacher.dimension_names]
    if missing:
        raise ValueError(f"the `redistill_teacher`'s rubric lacks the rewarded dimensions {missing} "
                         f"(`reward_dimensions`; the teacher has {list(teacher.dimension_names)})")


def student_parameters(reward) -> list[tuple[str, torch.nn.Parameter]]:
    """The student's weights a refresh trains: its LoRA adapter for a PEFT backbone, else every floating weight."""
    named = list(reward.scorer.named_parameters())
    if hasattr(getattr(reward.scorer, "model", None), "peft_config"):
        named = [(name, p) for name, p in named if "lora_" in name]
    return [(name, p) for name, p in named if p.is_floating_point()]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Decoded images `(B, 3, H, W)` in [-1, 1] as uint8 pixels `(B, H, W, 3)` (as diffusers' post-processing)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def plan(config, num_dimensions: int) -> dict[str, int]:
    """The run's re-distillation cost (module docstring, 'Compute budget')."""
    refreshes = config.steps // config.redistill_every
    samples, batch = config.redistill_samples, min(config.redistill_batch_size, config.redistill_samples)
    chains = refreshes * samples * num_dimensions * config.redistill_chains
    return {"refreshes": refreshes, "generator_samples": refreshes * samples, "teacher_chains": chains,
            "teacher_tokens_at_most": chains * config.redistill_max_new_tokens,
            "student_train_rows": refreshes * config.redistill_steps * batch * num_dimensions,
            "student_eval_rows": 2 * refreshes * samples * num_dimensions}


class Redistiller:
    """The refreshes of one `RewardFinetuner` (module docstring). Build it before the finetuner resumes: it
    registers the checkpoint hooks that save and restore the student."""

    def __init__(self, finetuner):
        self.finetuner = finetuner
        self.config = config = finetuner.config
        self.accelerator = finetuner.accelerator
        self.reward = finetuner.reward
        self.teacher_dir = teacher_directory(config.redistill_teacher, finetuner.output_dir, self.accelerator)
        check_teacher(Rubric.from_dict(read_config(self.teacher_dir)["rubric"]), self.reward)
        self.settings = CacheSettings(num_samples=config.redistill_chains, temperature=1.0, top_p=1.0,
                                      max_new_tokens=config.redistill_max_new_tokens,
                                      chunk_size=config.redistill_batch_size, seed=config.seed)
        self.cache_dir = Path(finetuner.output_dir) / CACHE_DIR
        self.cache: TeacherCache | None = None  # opened at the first refresh (the fingerprint reads the weights)
        self.named = student_parameters(self.reward)
        if not self.named:
            raise ValueError("the `reward` has no floating-point weights to re-distil")
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=config.redistill_lr, weight_decay=0.0)
        self.log: list[dict] = []
        self.restored_student = False
        self.budget = plan(config, len(self.reward.dimensions))
        self.accelerator.register_save_state_pre_hook(self._save_hook)
        self.accelerator.register_load_state_pre_hook(self._load_hook)
        logger.info("online re-distillation: %s", self.budget)

    # ------------------------------------------------------------------------------------------------ a refresh
    def refresh(self, index: int, step: int) -> dict:
        """Refresh `index` (1, 2, ...) after step `step`: sample, teach, distil; returns (and logs) its entry."""
        started = time.perf_counter()
        images, prompts = self.sample_images(index)
        sampled = time.perf_counter()
        targets, new_inputs = self.teacher_targets(index, images, prompts)
        taught = time.perf_counter()
        kl_before = self.kl(images, prompts, targets)
        self.distill(index, images, prompts, targets)
        kl_after = self.kl(images, prompts, targets)
        self.check_identical()
        ended = time.perf_counter()
        entry = {"refresh": index, "step": step, "images": len(prompts), "teacher_inputs": new_inputs,
                 "teacher_chains": new_inputs * self.settings.num_samples, "kl_before": kl_before,
                 "kl_after": kl_after, "sample_seconds": round(sampled - started, 3),
                 "teacher_seconds": round(taught - sampled, 3), "student_seconds": round(ended - taught, 3)}
        self.log.append(entry)
        self.accelerator.log({f"redistill/{key}": value for key, value in entry.items() if key != "step"}, step=step)
        logger.info("re-distillation %d (step %d): KL(q̄ ‖ p_S) %.4f -> %.4f; %d new teacher inputs; seconds: "
                    "sample %.1f, teacher %.1f, student %.1f", index, step, kl_before, kl_after, new_inputs,
                    entry["sample_seconds"], entry["teacher_seconds"], entry["student_seconds"])
        return entry

    @torch.no_grad()
    def sample_images(self, index: int) -> tuple[torch.Tensor, list[str]]:
        """`(pixels (S, H, W, 3) uint8 on the CPU, prompts)` of refresh `index`, the same on every process."""
        finetuner, config, accelerator = self.finetuner, self.config, self.accelerator
        count = config.redistill_samples
        rng = np.random.default_rng([config.seed, index, 5])
        chosen = rng.choice(len(finetuner.train_prompts), size=count, replace=count > len(finetuner.train_prompts))
        prompts = [finetuner.train_prompts[i] for i in chosen]
        size = config.eval_batch_size or config.batch_size
        rank, world = accelerator.process_index, accelerator.num_processes
        pixels = torch.zeros((count, config.height, config.width, 3), dtype=torch.uint8, device=accelerator.device)
        for chunk, start in enumerate(range(0, count, size)):
            if chunk % world != rank:
                continue
            out = sample(finetuner.rollout, prompts[start:start + size], config.num_inference_steps, "draft", k=1,
                         generator=finetuner.generator(index, 1000 + chunk), rng=np.random.default_rng(0))
            pixels[start:start + size] = to_uint8(out.images).to(pixels.device)
        if world > 1:  # every other process left this chunk at zero
            pixels = accelerator.reduce(pixels, "sum")
        return pixels.cpu(), prompts

    def teacher_targets(self, index: int, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, int]:
        """`(q̄ (S, D, K), inputs the teacher scored now over all processes)`; cached inputs are not resampled."""
        accelerator = self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        dimensions = list(self.reward.dimensions)
        if self.cache is None:
            fingerprint = teacher_fingerprint(self.teacher_dir, self.settings)
            self.cache = TeacherCache(self.cache_dir, fingerprint, self.settings, rank=rank)
        keys = [[input_key(images[n], prompt, d) for d in dimensions] for n, prompt in enumerate(prompts)]
        flat = [key for row in keys for key in row]  # build_teacher_cache's input order: records, then dimensions
        cached = self.cache.load()
        size = self.settings.chunk_size
        mine = [flat[start:start + size] for start in range(0, len(flat), size) if (start // size) % world == rank]
        missing = sum(key not in cached for chunk in mine for key in chunk)
        if missing:
            teacher, processor, rubric = load_base(str(self.teacher_dir))
            teacher.to(accelerator.device)
            records = [Record(f"redistill-{index}-{n}", prompt, Image.fromarray(images[n].numpy()), f"p{n}")
                       for n, prompt in enumerate(prompts)]
            dataset = RewardDataset(records, dimensions=rubric.dimension_names, levels=rubric.levels)
            build_teacher_cache(teacher, processor, rubric, dataset, dimensions, self.cache, accelerator.device,
                                progress=False, rank=rank, world_size=world)
            del teacher
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        accelerator.wait_for_everyone()
        entries = self.cache.load()
        targets = torch.tensor([[entries[key]["mean"] for key in row] for row in keys], dtype=torch.float32)
        if world > 1:
            missing = int(accelerator.reduce(torch.tensor(missing, device=accelerator.device), "sum"))
        return targets / targets.sum(-1, keepdim=True), missing

    def student_kl(self, images: torch.Tensor, prompts: list[str], targets: torch.Tensor, rows: list[int]):
        """Σ over `rows` and the rewarded dimensions of KL(q̄ ‖ p_S), p_S as the reward reads it (differentiable)."""
        device = next(self.reward.scorer.parameters()).device
        unit = images[rows].permute(0, 3, 1, 2).float().div(255.0).to(device)
        output = self.reward.scorer(unit, [prompts[i] for i in rows], dimensions=self.reward.dimensions)
        log_probs = (output.logits.float().log_softmax(-1) if output.logits is not None
                     else output.probs.float().clamp_min(1e-38).log())
        return kl_to_target(targets[rows].to(log_probs), log_probs).sum()

    @torch.no_grad()
    def kl(self, images: torch.Tensor, prompts: list[str], targets: torch.Tensor) -> float:
        """The mean KL(q̄ ‖ p_S) over the refresh's (image, dimension) inputs (processes split the images)."""
        accelerator, size = self.accelerator, self.config.redistill_batch_size
        mine = list(range(accelerator.process_index, len(prompts), accelerator.num_processes))
        total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for start in range(0, len(mine), size):
            total += self.student_kl(images, prompts, targets, mine[start:start + size]).double().to(total.device)
        if accelerator.num_processes > 1:
            total = accelerator.reduce(total, "sum")
        return float(total) / (len(prompts) * len(self.reward.dimensions))

    def distill(self, index: int, images: torch.Tensor, prompts: list[str], targets: torch.Tensor) -> None:
        """`redistill_steps` optimizer steps on the student (module docstring, step 3)."""
        config, accelerator = self.config, self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        parameters = [p for _, p in self.named]
        batch = min(config.redistill_batch_size, len(prompts))
        for p in parameters:
            p.requires_grad_(True)
        try:
            for step in range(config.redistill_steps):
                chosen = np.random.default_rng([config.seed, index, step, 6]).choice(len(prompts), batch,
                                                                                     replace=False)
                rows = chosen[rank::world].tolist()
                if rows:  # the mean over the step's whole batch: local sums over the global count
                    kl = self.student_kl(images, prompts, targets, rows)
                    (kl / (batch * len(self.reward.dimensions))).backward()
                for p in parameters:
                    if p.grad is None:  # the same update rule on every process, whatever its rows reached
                        p.grad = torch.zeros_like(p)
                    if world > 1:
                        p.grad.copy_(accelerator.reduce(p.grad.to(accelerator.device), "sum"))
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        finally:
            for p in parameters:
                p.requires_grad_(False)
                p.grad = None

    @torch.no_grad()
    def check_identical(self) -> None:
        """Every process holds the same student (per-parameter sums and sums of squares compared exactly)."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return
        sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for _, p in self.named])
        gathered = accelerator.gather(sums.flatten()[None].to(accelerator.device))
        if not bool((gathered == gathered[0]).all()):
            raise RuntimeError("the processes' copies of the student differ after a re-distillation refresh")

    # ------------------------------------------------------------------------------------------------ state
    def _save_hook(self, models, weights, output_dir) -> None:
        """Write the student and its optimizer into the checkpoint being saved (nothing before the first refresh:
        the student is then the loaded reward and the optimizer has no state)."""
        if not self.log or not self.accelerator.is_main_process:
            return
        weights = {name: p.detach().contiguous().cpu() for name, p in self.named}
        save_file(weights, str(Path(output_dir) / STUDENT_FILE))
        torch.save(self.optimizer.state_dict(), Path(output_dir) / OPTIMIZER_FILE)

    def _load_hook(self, models, input_dir) -> None:
        path = Path(input_dir) / STUDENT_FILE
        if not path.is_file():
            return
        state = load_file(str(path))
        names = {name for name, _ in self.named}
        if set(state) != names:
            raise ValueError(f"{path} does not hold this reward's student weights (missing "
                             f"{sorted(names - set(state))[:5]}, unexpected {sorted(set(state) - names)[:5]})")
        with torch.no_grad():
            for name, p in self.named:
                p.copy_(state[name].to(p))
        self.optimizer.load_state_dict(torch.load(Path(input_dir) / OPTIMIZER_FILE, map_location="cpu",
                                                  weights_only=True))
        self.restored_student = True

    def state(self) -> dict:
        return {"redistill": self.log}

    def restore(self, extra: dict) -> None:
        """After the checkpoint's load: its refresh log (the hooks restored the student)."""
        self.log = list(extra.get("redistill", []))
        if bool(self.log) != self.restored_student:
            raise ValueError("the checkpoint's re-distillation state is incomplete: it has "
                             f"{len(self.log)} refreshes logged but {'a' if self.restored_student else 'no'} saved "
                             "student (was it written with another `redistill_every`?)")

    def metrics(self, train_seconds: float) -> dict:
        seconds = sum(entry[key] for entry in self.log for key in TIMES)
        return {"redistill": self.log, "redistill_budget": self.budget, "redistill_seconds": round(seconds, 1),
                "redistill_share": round(seconds / train_seconds, 4) if train_seconds > 0 else None}

    def save_reward(self, directory: Path) -> None:
        """The refreshed reward as a Z-Reward checkpoint (`ZRewardLoss.from_pretrained(directory)`); main process."""
        self.reward.save_pretrained(directory, overwrite=self.config.overwrite)
