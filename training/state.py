"""Training state on disk for every loop in `training/` and `pipelines/`: accelerate-native checkpoints, rotation, an
atomic "latest" pointer and exact resume.

Layout under a loop's checkpoint folder (diffusers' training scripts use the same names)::

    checkpoints/
        checkpoint-200/    accelerator.save_state: prepared models (safetensors), optimizers, schedulers, RNG of
                           every process; plus progress.json (step, seconds, the loop's own history)
        checkpoint-400/
        latest             the name of the newest complete checkpoint (for people and tools), replaced atomically

Why this shape:

- `accelerator.save_state` / `load_state` write and read each process's share (sharded optimizer states under
  FSDP or DeepSpeed ZeRO, every process's RNG), which a `state_dict()` taken on the main process cannot.
- A checkpoint is written into a hidden staging folder and renamed into place only when every file is on disk
  (fsynced), and the pointer is replaced after that: at any instant the newest complete checkpoint exists under its
  final name, so a kill at any point leaves a state to resume from (the highest complete step is taken, whatever
  the pointer says). Older checkpoints are deleted only after the pointer names the new one
  (`checkpoints_total_limit`).
- The loop's own counters go in `progress.json`, not through `accelerator.register_for_checkpointing`: accelerate
  unpickles registered objects with `weights_only=False`, and JSON needs no unpickling at all. (accelerate reads its
  own optimizer, scheduler and RNG files with `weights_only=True`.)

Every loop draws its batches and its sampling from `(seed, step)`, so restoring this state and going on gives the
same losses and weights as an uninterrupted run (tests compare them, on 1 and 2 processes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_scheduler

from zreward_diffusers.saving import fsync_directory, fsync_tree

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
LATEST_FILE = "latest"
PROGRESS_FILE = "progress.json"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class Progress:
    """Where a loop stands: optimizer steps done, training seconds so far, and JSON-serialisable `extra` the loop
    wants back on resume (its step losses, running statistics)."""

    step: int = 0
    train_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file in the same folder, fsynced, then `os.replace` it into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


class AppendLog:
    """JSON lines appended by each process to its own file in `directory`: `<stem>.jsonl` for process 0,
    `<stem>.<rank>.jsonl` for process `rank` (a process only ever writes, and cuts a torn line off, its own file, so
    none can cut a line another is still writing). `read()` returns the complete lines of every process's file, in
    file order; each `append` is flushed and fsynced, so an interrupted run keeps every line it finished. Used by
    the teacher cache (`training.teacher_cache`) and the annotator (`training.annotate`)."""

    def __init__(self, directory: str | os.PathLike, stem: str, rank: int = 0):
        self.directory = Path(directory)
        self.stem = stem
        self.path = self.directory / (f"{stem}.jsonl" if rank == 0 else f"{stem}.{rank}.jsonl")

    def read(self) -> list:
        values = []
        for path in sorted(self.directory.glob(f"{self.stem}*.jsonl")):
            good_bytes = 0
            with open(path, "rb") as file:
                for line in file:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        values.append(json.loads(line))
                    except json.JSONDecodeError:
                        break
                    good_bytes += len(line)
            if path == self.path and good_bytes != path.stat().st_size:  # our own interrupted write
                with open(path, "r+b") as file:
                    file.truncate(good_bytes)
        return values

    def append(self, values: list) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write("".join(json.dumps(value) + "\n" for value in values))
            file.flush()
            os.fsync(file.fileno())


def prepare_output_dir(output_dir: str | os.PathLike, config, accelerator) -> None:
    """Refuse to start a run over a previous one unless `config` says what to do with it.

    A non-empty `output_dir` holds a previous run (its checkpoints, model, metrics): with `config.resume` the run
    continues from its newest checkpoint; with `config.overwrite` the previous run's checkpoints and metrics are
    deleted now (by the main process) and its exported model is replaced at the end; with neither it is an error
    naming both, so that rerunning a command never destroys a finished run. Call it before writing anything.
    """
    if config.resume and config.overwrite:
        raise ValueError("`resume` and `overwrite` exclude each other: continue the run in `output_dir`, or start "
                         "it over")
    output_dir = Path(output_dir)
    previous = output_dir.is_dir() and any(output_dir.iterdir())
    if previous and not (config.resume or config.overwrite):
        raise ValueError(f"`output_dir` {output_dir} holds a previous run; pass --resume to continue it, or "
                         "--overwrite to start over (its checkpoints and metrics are deleted, its model replaced)")
    if previous and config.overwrite:
        if accelerator.is_main_process:
            logger.warning("--overwrite: deleting the previous run's checkpoints and metrics in %s", output_dir)
            found = [path for path in output_dir.rglob("checkpoints") if path.is_dir()]
            for path in found:
                shutil.rmtree(path, ignore_errors=True)  # one may lie inside another
            for path in output_dir.rglob("metrics.json"):
                path.unlink()
        accelerator.wait_for_everyone()


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name, else None."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def complete_checkpoints(directory: Path) -> list[Path]:
    """The complete checkpoints under `directory` (a `checkpoint-<step>` folder holding `progress.json`), oldest
    first. Staging folders are hidden and never match."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir()
             if checkpoint_step(path) is not None and (path / PROGRESS_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under `directory` (highest step), else None.

    The `latest` pointer names the same one after every finished save; after a kill between the rename and the
    pointer update it names the one before, so the folders, not the pointer, decide (and a mismatch is logged).
    """
    directory = Path(directory)
    found = complete_checkpoints(directory)
    if not found:
        return None
    pointer = directory / LATEST_FILE
    if pointer.is_file() and pointer.read_text().strip() != found[-1].name:
        logger.warning("%s names %s; the newest complete checkpoint is %s", pointer, pointer.read_text().strip(),
                       found[-1].name)
    return found[-1]


def read_progress(checkpoint: Path) -> Progress:
    data = json.loads((Path(checkpoint) / PROGRESS_FILE).read_text())
    return Progress(step=int(data["step"]), train_seconds=float(data["train_seconds"]), extra=data.get("extra", {}))


class CheckpointManager:
    """Save and restore a loop's training state through its `Accelerator` (see the module docstring).

    Everything the loop passed to `accelerator.prepare` is saved; call `resume()` after `prepare`, and `save()` on
    every process (each writes its own share).

    Args:
        accelerator: the loop's `Accelerator`.
        directory: the loop's checkpoint folder (e.g. `<output_dir>/checkpoints`).
        total_limit: keep at most this many checkpoints (the oldest go first); None keeps all.
    """

    def __init__(self, accelerator, directory: str | os.PathLike, total_limit: int | None = None):
        if total_limit is not None and total_limit < 1:
            raise ValueError(f"`checkpoints_total_limit` must be at least 1 or None, got {total_limit}")
        self.accelerator = accelerator
        self.directory = Path(directory)
        self.total_limit = total_limit

    def latest(self) -> Path | None:
        return latest_checkpoint(self.directory)

    def resume(self) -> Progress | None:
        """Load the newest complete checkpoint into the prepared objects (and every process's RNG); returns its
        `Progress`, or None when there is none."""
        checkpoint = self.latest()
        if checkpoint is None:
            logger.warning("resume: no complete checkpoint in %s; starting from step 0", self.directory)
            return None
        self.accelerator.load_state(str(checkpoint))
        progress = read_progress(checkpoint)
        logger.info("resumed from %s (step %d)", checkpoint, progress.step)
        return progress

    def save(self, progress: Progress) -> Path:
        """Write `checkpoint-<progress.step>` (all processes take part), point `latest` at it, rotate; returns it."""
        accelerator = self.accelerator
        final = self.directory / f"{CHECKPOINT_PREFIX}{progress.step}"
        staging = self.directory / f".{final.name}.staging"
        if accelerator.is_main_process:
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in self.directory.glob(f".{CHECKPOINT_PREFIX}*.staging"):  # from a killed save
                shutil.rmtree(leftover)
            staging.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            payload = dict(step=progress.step, train_seconds=progress.train_seconds, extra=progress.extra)
            (staging / PROGRESS_FILE).write_text(json.dumps(payload))
            fsync_tree(staging)
            if final.exists():  # the same step saved again (a finished run resumed): the newer copy wins
                shutil.rmtree(final)
            staging.rename(final)
            fsync_directory(self.directory)
            write_text_atomic(self.directory / LATEST_FILE, final.name)
            self._rotate(keep=final)
        accelerator.wait_for_everyone()
        return final

    def _rotate(self, keep: Path) -> None:
        if self.total_limit is None:
            return
        found = [path for path in complete_checkpoints(self.directory) if path != keep]
        for old in found[:max(0, len(found) + 1 - self.total_limit)]:
            shutil.rmtree(old)


def loss_curve(losses: list[float], points: int = 200) -> list[list[float]]:
    """`[step, mean loss]` over about `points` equal windows of per-step losses (what metrics files keep for plots).

    >>> loss_curve([4.0, 2.0, 3.0, 1.0], points=2)
    [[2, 3.0], [4, 2.0]]
    """
    window = max(1, len(losses) // points)
    return [[start + window, float(np.mean(losses[start:start + window]))] for start in range(0, len(losses), window)]


def start_or_resume(module, lr: float, steps: int, config, accelerator, checkpoint_dir: Path,
                    muon_lr: float | None = None, muon_exclude: tuple[str, ...] = ()):
    """`build_optimizer`, `accelerator.prepare`, then the newest checkpoint in `checkpoint_dir` restored when
    `config.resume` (`config.checkpoints_total_limit` sets the rotation).

    Returns `(module, optimizer, scheduler, checkpoints, progress)`: the prepared objects, their `CheckpointManager`
    and the `Progress` resumed from (step 0 when starting).
    """
    optimizer, scheduler = build_optimizer(module, lr, steps, config, muon_lr, muon_exclude)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    checkpoints = CheckpointManager(accelerator, checkpoint_dir, config.checkpoints_total_limit)
    progress = (checkpoints.resume() if config.resume else None) or Progress()
    module.train()
    return module, optimizer, scheduler, checkpoints, progress


def build_optimizer(module, lr: float, steps: int, config, muon_lr: float | None = None,
                    muon_exclude: tuple[str, ...] = ()):
    """AdamW on `module` (weight decay `config.weight_decay`) and `config.lr_scheduler` with `config.warmup_steps`
    over `steps`; returns `(optimizer, scheduler)`.

    With `muon_lr`, the optimizer is `training.optim.MuonAdamW`: Muon at peak `muon_lr` on the 2-D weights whose
    names do not start with a prefix in `muon_exclude`, AdamW at `lr` on the rest (the schedule scales both).
    """
    if muon_lr is None:
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=config.weight_decay)
    else:
        from .optim import MuonAdamW, muon_parameters

        optimizer = MuonAdamW(*muon_parameters(module, muon_exclude), muon_lr=muon_lr, lr=lr,
                              weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=steps)
    return optimizer, scheduler
