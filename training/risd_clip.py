"""RISD into a CLIP-sized student (`zreward_diffusers.clip_student.ClipStudentScorer`): the same loss as
`training.risd` — KL(q̄ ‖ p_S) + λ_g Huber on within-group gaps + λ_h KL(q_human ‖ p_S) (Z-Reward, arXiv 2606.09076,
eq. 13 as reconstructed in docs/method.md, 'Student: RISD') — from the same teacher cache, on open_clip towers with a
K-level head per dimension instead of a VLM's score tokens.

    python -m training.risd_clip --config training/configs/student_risd_clip_tiny.yaml

`init: tiny` builds a tiny open_clip CLIP from config (the world's default); `init: <arch>@<local weights file>`
(e.g. `ViT-B-32@/models/open_clip_vit_b32.bin`) starts from pretrained towers. The result is a checkpoint that
`ZRewardLoss.from_pretrained` loads like the VLM students. Under `accelerate launch` every process builds its share of
the teacher cache and trains on its share of each step's groups (one forward over all dimensions' heads a step, so
DDP sees one forward per backward); the losses are divided by global counts, so any number of processes gives the
same update for the same global batch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.clip_student import ClipStudentScorer
from zreward_diffusers.evaluation import evaluate_probs
from zreward_diffusers.rubric import Rubric

from .config import check_at_least, parse_args
from .data import DataSpec, ImageBank, load_split, step_rng
from .objectives import huber, kl_to_target, soft_target
from .risd import load_teacher_targets
from .state import CheckpointManager, Progress, prepare_output_dir, write_text_atomic

logger = logging.getLogger(__name__)


@dataclass
class RISDClipConfig:
    """RISD into a CLIP-sized student (open_clip towers with a K-level head per dimension).

    `python -m training.risd_clip --config training/configs/student_risd_clip_tiny.yaml`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("init", "teacher", "trust_remote_code"),
        "Data": ("train_data", "eval_data"),
        "Teacher cache": ("cache_dir", "num_samples", "target_samples", "teacher_temperature",
                          "teacher_max_new_tokens", "cache_chunk_size", "cache_seed"),
        "Objective": ("gap_weight", "human_weight", "huber_delta"),
        "Optimisation": ("steps", "groups_per_step", "lr", "seed"),
        "Checkpoints": ("output_dir", "save_every", "checkpoints_total_limit", "resume", "overwrite"),
    }

    init: str = field(default="tiny", metadata={"help": "tiny, or <open_clip arch>@<local weights file>"})
    teacher: str = field(default="runs/teacher/gdso/model", metadata={"help": "the teacher: a Z-Reward checkpoint"})
    output_dir: str = field(default="runs/student_risd_clip", metadata={"help": "checkpoints, model, metrics"})
    cache_dir: str = field(default="runs/teacher_cache", metadata={"help": "where teacher caches are kept"})
    train_data: dict = field(default_factory=lambda: asdict(DataSpec(start=0, num_groups=256)),
                             metadata={"help": "training split"})
    eval_data: dict = field(default_factory=lambda: asdict(DataSpec(start=100_000, num_groups=64)),
                            metadata={"help": "held-out split"})
    num_samples: int = field(default=8, metadata={"help": "M of the teacher cache"})
    target_samples: int | None = field(default=None, metadata={"help": "use the first m cached chains"})
    teacher_temperature: float = field(default=1.0, metadata={"help": "teacher sampling temperature"})
    teacher_max_new_tokens: int = field(default=96, metadata={"help": "teacher reasoning length limit"})
    cache_chunk_size: int = field(default=32, metadata={"help": "inputs per teacher generation call"})
    cache_seed: int = field(default=0, metadata={"help": "seed of the teacher's sampling"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom code of the teacher"})
    groups_per_step: int = field(default=8, metadata={"help": "prompt groups per step"})
    gap_weight: float = field(default=0.5, metadata={"help": "λ_g"})
    human_weight: float = field(default=0.1, metadata={"help": "λ_h"})
    huber_delta: float = field(default=0.5, metadata={"help": "δ"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    save_every: int = field(default=200, metadata={"help": "steps between training states"})
    checkpoints_total_limit: int | None = field(default=None, metadata={
        "help": "keep at most this many checkpoints in <output_dir>/checkpoints (oldest deleted first; none: all)"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest complete checkpoint in <output_dir>/checkpoints (none there: start)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in a used <output_dir>: its checkpoints and metrics are deleted, its outputs replaced "
                "(without it, or --resume, a used <output_dir> is refused)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batches"})

    def __post_init__(self):
        if self.init != "tiny" and "@" not in self.init:
            raise ValueError(f"`init` must be tiny or <open_clip arch>@<local weights file>, got {self.init!r}")
        check_at_least(self, 1, "steps", "save_every", "groups_per_step", "num_samples", "cache_chunk_size",
                       "teacher_max_new_tokens", "checkpoints_total_limit")


def build_student(init: str, seed: int) -> ClipStudentScorer:
    """The student `init` names (checked by `RISDClipConfig`): the tiny CLIP, or an open_clip architecture's towers."""
    if init == "tiny":
        return ClipStudentScorer.tiny(seed=seed)
    arch, weights = init.split("@", 1)
    return ClipStudentScorer.from_open_clip(arch, weights)


def train(config: RISDClipConfig) -> dict:
    """Build (or load) the teacher cache, train, export; returns the metrics (on every process)."""
    # a process's rows may not use every dimension's head, and open_clip's towers hold parameters the scorer does
    # not read (e.g. `logit_scale`): DDP must look for unused parameters
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out = Path(config.output_dir)
    prepare_output_dir(out, config, accelerator)
    torch.manual_seed(config.seed)
    student = build_student(config.init, config.seed)
    rubric: Rubric = student.rubric
    dimensions = rubric.dimension_names
    train_set, eval_set = load_split(config.train_data), load_split(config.eval_data)
    train_bank, eval_bank = ImageBank(train_set), ImageBank(eval_set)
    targets, _ = load_teacher_targets(config, train_set, train_bank, dimensions, rubric, accelerator)
    groups = [records for records in train_set.groups().values() if len(records) >= 2]
    units = [(records, d) for records in groups for d in dimensions]
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    checkpoints = CheckpointManager(accelerator, out / "checkpoints", config.checkpoints_total_limit)
    progress = (checkpoints.resume() if config.resume else None) or Progress()
    start, seconds, history = progress.step, progress.train_seconds, progress.extra.get("history", [])
    model.train()
    levels = student.levels.to(accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    started = time.perf_counter()
    for step in tqdm(range(start, config.steps), desc="risd_clip", initial=start, total=config.steps,
                     disable=not accelerator.is_local_main_process):
        rng = step_rng(config.seed, step)
        chosen = rng.choice(len(units), size=config.groups_per_step, replace=len(units) < config.groups_per_step)
        chosen_units = [units[i] for i in chosen.tolist()]
        num_rows = sum(len(records) for records, _ in chosen_units)  # over the global batch
        num_pairs = sum(len(records) * (len(records) - 1) // 2 for records, _ in chosen_units)
        local_units = chosen_units[rank::world]
        records = [r for group, _ in local_units for r in group]
        dimension_of_row = torch.tensor([rubric.dimension_index(d) for group, d in local_units for _ in group],
                                        device=accelerator.device)
        images = train_bank.images[[train_bank.index[r.record_id] for r in records]].to(accelerator.device)
        logits = model(images.permute(0, 3, 1, 2).float() / 255, [r.prompt for r in records]).logits  # (B, D, K)
        log_probs = logits[torch.arange(len(records), device=accelerator.device), dimension_of_row].log_softmax(-1)
        target = torch.stack([targets[r.record_id, d] for group, d in local_units for r in group]).to(log_probs)
        cpu_levels = rubric.levels_tensor()
        human = torch.stack([soft_target(r, d, cpu_levels) for group, d in local_units for r in group]).to(log_probs)
        distill = kl_to_target(target, log_probs).sum()
        human_kl = kl_to_target(human, log_probs).sum()
        mu_s, mu_t = (log_probs.exp() * levels).sum(-1), (target * levels).sum(-1)
        gap, offset = log_probs.new_zeros(()), 0
        for group, _ in local_units:
            first, second = torch.triu_indices(len(group), len(group), offset=1, device=log_probs.device) + offset
            error = (mu_s[first] - mu_s[second]) - (mu_t[first] - mu_t[second])
            gap = gap + huber(error, config.huber_delta).sum()
            offset += len(group)
        loss = (distill / num_rows + config.gap_weight * gap / max(num_pairs, 1)
                + config.human_weight * human_kl / num_rows)
        accelerator.backward(loss * world)  # DDP averages gradients over processes
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums = accelerator.reduce(torch.stack([loss.detach(), distill.detach() / num_rows,
                                               gap.detach() / max(num_pairs, 1), human_kl.detach() / num_rows]),
                                  "sum")
        history.append({"step": step + 1, **dict(zip(("loss", "distill", "gap", "human"), sums.tolist(),
                                                      strict=True))})
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            checkpoints.save(Progress(step + 1, seconds + time.perf_counter() - started, {"history": history}))
    seconds += time.perf_counter() - started
    student = accelerator.unwrap_model(model)
    student.eval()
    with torch.no_grad():
        probs = []
        for start_index in range(0, len(eval_set.records), 64):
            chunk = eval_set.records[start_index:start_index + 64]
            images = eval_bank.images[start_index:start_index + len(chunk)].permute(0, 3, 1, 2).float() / 255
            scored = student(images.to(accelerator.device), [r.prompt for r in chunk])
            probs.append(scored.probs.double().cpu().numpy())
    report = evaluate_probs(np.concatenate(probs), eval_set)
    per_dimension = {d: report[d]["pair_accuracy"]["accuracy"] for d in dimensions}
    metrics = {"trainer": "risd_clip", "steps": config.steps, "resumed_from_step": start,
               "train_seconds": round(seconds, 1),
               "preference_accuracy": float(np.mean(list(per_dimension.values()))), "per_dimension": per_dimension,
               "parameters": sum(p.numel() for p in student.parameters()), "history": history}
    if accelerator.is_main_process:
        ZRewardLoss(student).save_pretrained(out / "model", overwrite=config.overwrite)
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = train(parse_args(RISDClipConfig, argv))
    logger.info("risd_clip: held-out preference accuracy %.4f in %.0f s", metrics["preference_accuracy"],
                metrics["train_seconds"])
    return metrics


if __name__ == "__main__":
    main()
