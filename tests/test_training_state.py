"""`training.state.CheckpointManager`: accelerate-native checkpoints that resume exactly (weights, optimizer moments,
scheduler position, every RNG stream), rotate, and survive a kill at any point of a save."""

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

import training.state as state
from training.state import CheckpointManager, Progress, latest_checkpoint


def build(accelerator: Accelerator):
    """A small net, AdamW and a warm-up schedule, prepared (the previous objects leave the accelerator first)."""
    accelerator.free_memory()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
    return accelerator.prepare(net, optimizer, scheduler)


def train_step(net, optimizer, scheduler) -> float:
    """A step whose batch comes from the global RNG streams (torch, numpy, python), so a resume that does not restore
    them draws other batches."""
    x = torch.randn(8, 4) + float(np.random.rand()) + random.random()
    loss = (net(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture
def accelerator():
    return Accelerator(cpu=True)


def test_resume_restores_moments_schedule_and_rng_and_continues_exactly(accelerator, tmp_path):
    net, optimizer, scheduler = build(accelerator)
    seed_everything(1)
    full = [train_step(net, optimizer, scheduler) for _ in range(3)]
    CheckpointManager(accelerator, tmp_path).save(Progress(step=3, train_seconds=1.5, extra={"losses": full}))
    saved_moments = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}
    saved_rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    full += [train_step(net, optimizer, scheduler) for _ in range(3)]
    final = [p.detach().clone() for p in net.parameters()]

    net, optimizer, scheduler = build(accelerator)
    seed_everything(99)  # whatever the streams are now, the resume puts them back
    progress = CheckpointManager(accelerator, tmp_path).resume()
    assert (progress.step, progress.train_seconds, progress.extra) == (3, 1.5, {"losses": full[:3]})
    assert scheduler.scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 4 / 5)
    for index, moments in optimizer.state_dict()["state"].items():
        for name, value in moments.items():
            torch.testing.assert_close(value, saved_moments[index][name], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), saved_rng[0])
    assert np.array_equal(np.random.get_state()[1], saved_rng[1]) and random.getstate() == saved_rng[2]
    resumed = [train_step(net, optimizer, scheduler) for _ in range(3)]
    assert resumed == full[3:]
    for a, b in zip(net.parameters(), final, strict=True):
        assert torch.equal(a, b)


def test_nothing_to_resume_from(accelerator, tmp_path):
    build(accelerator)
    assert CheckpointManager(accelerator, tmp_path / "none").resume() is None


def test_checkpoints_rotate_and_the_pointer_names_the_newest(accelerator, tmp_path):
    net, optimizer, scheduler = build(accelerator)
    manager = CheckpointManager(accelerator, tmp_path, total_limit=2)
    for step in (1, 2, 3):
        train_step(net, optimizer, scheduler)
        assert manager.save(Progress(step=step)) == tmp_path / f"checkpoint-{step}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3", "latest"]
    assert (tmp_path / "latest").read_text() == "checkpoint-3"
    assert json.loads((tmp_path / "checkpoint-3" / "progress.json").read_text())["step"] == 3
    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        CheckpointManager(accelerator, tmp_path, total_limit=0)


def test_a_stale_pointer_falls_back_to_the_newest_complete_checkpoint(accelerator, tmp_path, caplog):
    build(accelerator)
    manager = CheckpointManager(accelerator, tmp_path)
    for step in (2, 10):
        manager.save(Progress(step=step))
    (tmp_path / "latest").write_text("checkpoint-7")
    with caplog.at_level(logging.WARNING, logger="training.state"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 2: numeric, not by name
    assert "checkpoint-7" in caplog.text
    (tmp_path / "checkpoint-10" / "progress.json").unlink()  # not complete any more
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


class Killed(Exception):
    """Stands for the process dying at that instant."""


@pytest.mark.parametrize("point", ["save_state", "fsync", "rename", "pointer", "rotate"])
def test_a_kill_at_any_point_of_a_save_leaves_a_complete_state(accelerator, tmp_path, monkeypatch, point):
    net, optimizer, scheduler = build(accelerator)
    manager = CheckpointManager(accelerator, tmp_path, total_limit=1)
    train_step(net, optimizer, scheduler)
    manager.save(Progress(step=1))
    weights_at_1 = [p.detach().clone() for p in net.parameters()]
    train_step(net, optimizer, scheduler)

    def kill(*args, **kwargs):
        raise Killed(point)

    targets = {"save_state": (accelerator, "save_state"), "fsync": (state, "fsync_tree"),
               "rename": (Path, "rename"), "pointer": (os, "replace"), "rotate": (state.shutil, "rmtree")}
    monkeypatch.setattr(*targets[point], kill)
    with pytest.raises(Killed):
        manager.save(Progress(step=2))
    monkeypatch.undo()

    expected = 2 if point in ("pointer", "rotate") else 1  # the new checkpoint is complete once renamed
    assert latest_checkpoint(tmp_path) == tmp_path / f"checkpoint-{expected}"
    net, optimizer, scheduler = build(accelerator)
    assert CheckpointManager(accelerator, tmp_path).resume().step == expected
    if expected == 1:
        for a, b in zip(net.parameters(), weights_at_1, strict=True):
            assert torch.equal(a, b)
    # the next save clears what the killed one left behind
    manager.save(Progress(step=3))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-3", "latest"]
