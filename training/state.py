"""Training state on disk: atomic directory writes and exact resume for every `training/` entry point.

A state directory holds the weights, the optimizer's moments and the torch RNG in safetensors, and the step, the
optimizer's param groups, the scheduler and free-form metadata in JSON — nothing is pickled. Every loop draws its
batches as a function of `(seed, step)` (and seeds its sampling the same way), so restoring this state and going
on gives the same losses as an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "training_state.safetensors"
STATE_META_FILE = "training_state.json"


def replace_directory(final: Path, write: Callable[[Path], None]) -> None:
    """Write a directory through `write(temporary)`, then swap it in by renames (never a half-written `final`)."""
    final = Path(final)
    temporary, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    temporary.mkdir(parents=True)
    write(temporary)
    if final.exists():
        final.rename(old)
    temporary.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def has_training_state(directory: Path) -> bool:
    return (Path(directory) / STATE_FILE).exists() and (Path(directory) / STATE_META_FILE).exists()


def save_training_state(directory: Path, model, optimizer, scheduler, step: int, train_seconds: float,
                        extra: dict | None = None) -> None:
    """Weights (`model.state_dict()`), AdamW moments, torch RNG in safetensors; the rest in JSON.

    `extra` is JSON-serialisable metadata a loop wants back on resume (e.g. its step losses so far).
    """
    optimizer_state = optimizer.state_dict()
    tensors = {f"model.{name}": value.detach().contiguous() for name, value in model.state_dict().items()}
    for index, state in optimizer_state["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value for key, value in state.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(step=step, train_seconds=train_seconds, param_groups=optimizer_state["param_groups"],
                scheduler=scheduler.state_dict(), extra=extra or {})

    def write(temporary: Path) -> None:
        save_file(tensors, temporary / STATE_FILE)
        (temporary / STATE_META_FILE).write_text(json.dumps(meta))

    replace_directory(Path(directory), write)


def load_training_state(directory: Path, model, optimizer, scheduler) -> tuple[int, float, dict]:
    """Restore what `save_training_state` wrote; returns `(step, train_seconds, extra)`."""
    directory = Path(directory)
    tensors = load_file(directory / STATE_FILE)
    meta = json.loads((directory / STATE_META_FILE).read_text())
    model.load_state_dict({name[6:]: value for name, value in tensors.items() if name.startswith("model.")})
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["step"], meta["train_seconds"], meta.get("extra", {})


def start_or_resume(module, lr: float, steps: int, config, accelerator, state_dir: Path,
                    muon_lr: float | None = None, muon_exclude: tuple[str, ...] = ()):
    """AdamW on `module` (weight decay `config.weight_decay`) and `config.lr_scheduler` with `config.warmup_steps`
    over `steps`; restored from `state_dir` when `config.resume` and a state is there; then `accelerator.prepare`d.

    With `muon_lr`, the optimizer is `training.optim.MuonAdamW`: Muon at peak `muon_lr` on the 2-D weights whose
    names do not start with a prefix in `muon_exclude`, AdamW at `lr` on the rest (the schedule scales both).

    Returns `(module, optimizer, scheduler, start_step, train_seconds, extra)`.
    """
    from transformers import get_scheduler

    if muon_lr is None:
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=config.weight_decay)
    else:
        from .optim import MuonAdamW, muon_parameters

        optimizer = MuonAdamW(*muon_parameters(module, muon_exclude), muon_lr=muon_lr, lr=lr,
                              weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=steps)
    start_step, train_seconds, extra = 0, 0.0, {}
    if config.resume and has_training_state(state_dir):
        start_step, train_seconds, extra = load_training_state(state_dir, module, optimizer, scheduler)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    module.train()
    return module, optimizer, scheduler, start_step, train_seconds, extra


def loss_curve(losses: list[float], points: int = 200) -> list[list[float]]:
    """`[step, mean loss]` over about `points` equal windows of per-step losses (what metrics files keep for plots).

    >>> loss_curve([4.0, 2.0, 3.0, 1.0], points=2)
    [[2, 3.0], [4, 2.0]]
    """
    window = max(1, len(losses) // points)
    return [[start + window, float(np.mean(losses[start:start + window]))] for start in range(0, len(losses), window)]
