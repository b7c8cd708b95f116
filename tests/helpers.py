"""Shared helpers of the tests: sharpened tiny scorers, smooth random images, `accelerate launch` on CPU processes."""

import collections
import functools
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from zreward_diffusers.testing import build_tiny_scorer


@functools.cache
def png_bytes(colour) -> bytes:
    """An 8 x 6 PNG of one colour, encoded (the bytes a parquet image column holds)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(directory, names):
    """8 x 6 PNGs at `directory / name`, each a different shade (folders made as needed)."""
    for index, name in enumerate(names):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (20 * index, 0, 0)).save(directory / name)


def sharp_scorer(family: str):
    """A tiny scorer whose score-token logits are scaled up, so its distributions are peaked and react to pixels.

    A randomly initialised tiny model gives near-uniform distributions, against which equality tests would be
    weak; scaling the score rows of the output head makes every comparison below sensitive.
    """
    scorer = build_tiny_scorer(family, seed=0)
    head = scorer.model.get_output_embeddings()
    with torch.no_grad():
        # Qwen2-VL ties nothing here; Gemma 3 ties the head to the input embeddings, so scale a copy.
        weight = head.weight.detach().clone()
        weight[scorer.score_token_ids] *= 40.0
        head.weight = torch.nn.Parameter(weight, requires_grad=False)
    return scorer


def random_images(batch_size: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: low-resolution noise upsampled, like decoded latents."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 3, max(2, height // 8), max(2, width // 8), generator=generator)
    up = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return up * 2 - 1


REPO = Path(__file__).resolve().parents[1]


def optimizer_state(checkpoint_dir: Path, index: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    """The per-parameter moments of optimizer `index` in the newest checkpoint under `checkpoint_dir` (read with
    `weights_only=True`, as accelerate reads it)."""
    from training.state import latest_checkpoint

    checkpoint = latest_checkpoint(checkpoint_dir)
    name = "optimizer.bin" if index == 0 else f"optimizer_{index}.bin"
    return torch.load(checkpoint / name, weights_only=True)["state"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a gloo rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_cpu(args: list[str], num_processes: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` of `args` (a script or `-m module` and its arguments) on `num_processes` CPU processes
    (gloo), from the repository root; fails the test on a non-zero exit.

    `accelerate launch --cpu --num_processes 2` starts one process (its single-process launcher ignores the
    count): several CPU processes need the multi-process launcher with `ACCELERATE_USE_CPU` set, which makes each
    process's `Accelerator` a `MULTI_CPU` one (`test_launch_cpu_starts_that_many_processes` checks it).
    """
    # a free rendezvous port: runs one after another may not reuse one at once
    launcher = ["--multi_gpu", "--main_process_port", str(free_port())] if num_processes > 1 else ["--cpu"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    # each rank's traceback, not only the last one's (a rank that crashed first shows why the others stopped)
    ranked = "\n".join(line for line in result.stderr.splitlines() if "[rank" in line)
    assert result.returncode == 0, (ranked or result.stderr)[-8000:]
    return result


def launch_recording_rows(module: str, args: list[str], num_processes: int, out: Path) -> list[dict[int, list]]:
    """`launch_cpu` of `module` through `tests/record_rows.py`; returns each rank's `{step: [[image, prompt,
    dimension], ...]}` of the rows its training steps encoded."""
    launch_cpu([str(REPO / "tests" / "record_rows.py"), str(out), module, *args], num_processes)
    ranks = []
    for rank in range(num_processes):
        recorded = json.loads((Path(out) / f"rows.{rank}.json").read_text())
        ranks.append({int(step): rows for step, rows in recorded.items()})
    return ranks


def assert_shards_partition_the_batch(one: dict[int, list], shards: list[dict[int, list]]) -> None:
    """Every step, the processes' rows together are the 1-process run's rows, as multisets (a row drawn twice for the
    global batch is trained twice): no process skips its share or takes another's, and each has one."""
    assert one and all(set(shard) == set(one) for shard in shards)
    for step, rows in one.items():
        together = collections.Counter()
        for shard in shards:
            assert shard[step], f"step {step}: a process trained on nothing"
            together.update(tuple(row) for row in shard[step])
        assert together == collections.Counter(tuple(row) for row in rows), f"step {step}"


LORA_SETTINGS = dict(lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}, gradient_checkpointing=True,
                     mixed_precision="bf16")


def check_lora_training(trainer, steps: int, export_dir: Path, images: torch.Tensor, prompts: list[str]) -> None:
    """What every real-scale config runs, on a tiny model: `trainer` built with `LORA_SETTINGS` runs `steps` steps
    under bf16 autocast with gradient checkpointing; every adapter (and extra head) parameter changes, every base
    parameter stays as it was, and the exported adapter reloads through `ZRewardLoss.from_pretrained` with the same
    scores as the trained model."""
    from zreward_diffusers import ZRewardLoss, ZRewardScorer

    model = trainer.unwrapped()
    assert trainer.accelerator.mixed_precision == "bf16" and model.is_gradient_checkpointing
    named = dict(model.named_parameters())
    for key, module in trainer.extra_modules.items():
        named.update({f"{key}.{n}": p for n, p in module.named_parameters()})
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n or n.split(".")[0] in trainer.extra_modules for n in trainable)
    before = {n: p.detach().clone() for n, p in named.items()}
    for step in range(steps):
        trainer.training_step(step)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    unchanged = [n for n in trainable if torch.equal(before[n], named[n])]
    if any(n.startswith("value_head") for n in trainable):  # a zero-initialised head gives LoRA-B no gradient at first
        unchanged = [n for n in unchanged if "lora_B" not in n]
    assert not unchanged, f"trainable parameters that did not change: {unchanged[:5]}"
    moved = [n for n in named if n not in trainable and not torch.equal(before[n], named[n])]
    assert not moved, f"frozen parameters that changed: {moved[:5]}"
    trainer.export(export_dir)
    assert (export_dir / "adapter_model.safetensors").is_file()
    loaded = ZRewardLoss.from_pretrained(export_dir)
    float32 = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)  # without the bf16 autocast
    with torch.no_grad():
        expected = ZRewardScorer(float32.eval(), trainer.processor, trainer.rubric)(images, prompts).probs
        torch.testing.assert_close(loaded.scorer(images, prompts).probs, expected, atol=1e-5, rtol=1e-4)
