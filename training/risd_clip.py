"""RISD into a CLIP-sized student (`zreward_diffusers.clip_student.ClipStudentScorer`): the same loss as
`training.risd` — KL(q̄ ‖ p_S) + λ_g Huber on within-group gaps + λ_h KL(q_human ‖ p_S), METHOD eq. 13 — from the same
teacher cache, on open_clip towers with a K-level head per dimension instead of a VLM's score tokens.

    python -m training.risd_clip --config training/configs/student_risd_clip_tiny.yaml

`init: tiny` builds a tiny open_clip CLIP from config (the world's default); `init: <arch>@<local weights file>`
(e.g. `ViT-B-32@/models/open_clip_vit_b32.bin`) starts from pretrained towers. The result is a checkpoint that
`ZRewardLoss.from_pretrained` loads like the VLM students. Under `accelerate launch` every process builds its share of
the teacher cache; the main process alone trains the (small) student, and the others return.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.clip_student import ClipStudentScorer
from zreward_diffusers.evaluation import evaluate_probs
from zreward_diffusers.rubric import Rubric

from .config import parse_args
from .data import DataSpec, ImageBank, load_split, step_rng
from .objectives import huber, kl_to_target, soft_target
from .risd import load_teacher_targets
from .state import has_training_state, load_training_state, save_training_state

logger = logging.getLogger(__name__)


@dataclass
class RISDClipConfig:
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
    resume: bool = field(default=False, metadata={"help": "continue from <output_dir>/checkpoint"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batches"})


def build_student(init: str, seed: int) -> ClipStudentScorer:
    if init == "tiny":
        return ClipStudentScorer.tiny(seed=seed)
    if "@" not in init:
        raise ValueError(f"`init` must be tiny or <open_clip arch>@<local weights file>, got {init!r}")
    arch, weights = init.split("@", 1)
    return ClipStudentScorer.from_open_clip(arch, weights)


def train(config: RISDClipConfig) -> dict:
    """Build (or load) the teacher cache, train, export; returns the metrics (empty on processes other than the
    main one)."""
    accelerator = Accelerator()
    out = Path(config.output_dir)
    torch.manual_seed(config.seed)
    student = build_student(config.init, config.seed)
    rubric: Rubric = student.rubric
    dimensions = rubric.dimension_names
    train_set, eval_set = load_split(config.train_data), load_split(config.eval_data)
    train_bank, eval_bank = ImageBank(train_set), ImageBank(eval_set)
    targets, _ = load_teacher_targets(config, train_set, train_bank, dimensions, rubric, accelerator)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        # the CLIP student is small: every process helps build the teacher cache, the main process alone trains
        return {}
    groups = [records for records in train_set.groups().values() if len(records) >= 2]
    units = [(records, d) for records in groups for d in dimensions]
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    start, seconds, extra = 0, 0.0, {}
    if config.resume and has_training_state(out / "checkpoint"):
        start, seconds, extra = load_training_state(out / "checkpoint", student, optimizer, scheduler)
    history = extra.get("history", [])
    student.train()
    levels = student.levels
    started = time.perf_counter()
    for step in tqdm(range(start, config.steps), desc="risd_clip", initial=start, total=config.steps):
        rng = step_rng(config.seed, step)
        chosen = rng.choice(len(units), size=config.groups_per_step, replace=len(units) < config.groups_per_step)
        by_dimension: dict[str, list] = {}
        for i in chosen.tolist():
            records, dimension = units[i]
            by_dimension.setdefault(dimension, []).append(records)
        loss_terms, logs = [], {"distill": 0.0, "gap": 0.0, "human": 0.0}
        num_rows = sum(len(r) for rs in by_dimension.values() for r in rs)
        num_pairs = sum(len(r) * (len(r) - 1) // 2 for rs in by_dimension.values() for r in rs)
        for dimension, group_list in by_dimension.items():
            records = [r for group in group_list for r in group]
            images = train_bank.images[[train_bank.index[r.record_id] for r in records]]
            out_scores = student(images.permute(0, 3, 1, 2).float() / 255, [r.prompt for r in records], [dimension])
            log_probs = out_scores.logits[:, 0].log_softmax(-1)
            target = torch.stack([targets[r.record_id, dimension] for r in records])
            human = torch.stack([soft_target(r, dimension, levels) for r in records])
            distill = kl_to_target(target, log_probs).sum()
            human_kl = kl_to_target(human, log_probs).sum()
            mu_s, mu_t = (log_probs.exp() * levels).sum(-1), (target * levels).sum(-1)
            gap, offset = torch.zeros(()), 0
            for group in group_list:
                first, second = torch.triu_indices(len(group), len(group), offset=1) + offset
                error = (mu_s[first] - mu_s[second]) - (mu_t[first] - mu_t[second])
                gap = gap + huber(error, config.huber_delta).sum()
                offset += len(group)
            loss_terms.append(distill / num_rows + config.gap_weight * gap / max(num_pairs, 1)
                              + config.human_weight * human_kl / num_rows)
            logs["distill"] += float(distill) / num_rows
            logs["gap"] += float(gap) / max(num_pairs, 1)
            logs["human"] += float(human_kl) / num_rows
        loss = sum(loss_terms)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": float(loss), **logs})
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            save_training_state(out / "checkpoint", student, optimizer, scheduler, step + 1,
                                seconds + time.perf_counter() - started, extra={"history": history})
    seconds += time.perf_counter() - started
    student.eval()
    with torch.no_grad():
        probs = []
        for start_index in range(0, len(eval_set.records), 64):
            records = eval_set.records[start_index:start_index + 64]
            images = eval_bank.images[start_index:start_index + len(records)].permute(0, 3, 1, 2).float() / 255
            probs.append(student(images, [r.prompt for r in records]).probs.double().numpy())
    report = evaluate_probs(np.concatenate(probs), eval_set)
    per_dimension = {d: report[d]["pair_accuracy"]["accuracy"] for d in dimensions}
    metrics = {"trainer": "risd_clip", "steps": config.steps, "train_seconds": round(seconds, 1),
               "preference_accuracy": float(np.mean(list(per_dimension.values()))), "per_dimension": per_dimension,
               "parameters": sum(p.numel() for p in student.parameters()), "history": history}
    ZRewardLoss(student).save_pretrained(out / "model")
    (out / "metrics.json.tmp").write_text(json.dumps(metrics, indent=2))
    (out / "metrics.json.tmp").replace(out / "metrics.json")  # atomic
    return metrics


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = train(parse_args(RISDClipConfig, argv))
    if not metrics:  # a helper process under `accelerate launch`
        return metrics
    logger.info("risd_clip: held-out preference accuracy %.4f in %.0f s", metrics["preference_accuracy"],
                metrics["train_seconds"])
    return metrics


if __name__ == "__main__":
    main()
