"""What does serving the reward from another process cost, against a local `ZRewardLoss`, at equal compute?

    python -m benchmarks.remote_reward [--quick] [--out runs/benchmarks/remote_reward.json]

One training step's share of the reward, `loss(images, prompts).backward()` from float images in [-1, 1] with
`requires_grad`, with a local `ZRewardLoss` against a `RemoteReward` whose server (`serve_reward`) runs in another
process on the same machine: the images and prompts go over a TCP connection to 127.0.0.1, the server computes R and
dR/dpixels (forward + backward), and the gradient comes back through the autograd function. Both sides use one torch
thread (`torch.set_num_threads(1)` in each process), so the compute is the same and only one of the two processes
computes at a time; what differs is the transport (encoding, copies, the socket round trip) and the server's loop.
Goal: remote / local <= 1.2.

Backbones, as in `loss_overhead.py`: the tiny test Qwen2-VL (56x56 images, where fixed costs are most visible; also
fed 224x224 images, which it resizes to 112x112 inside, to show the cost of carrying larger pixels) and a small
Qwen2-VL (text 512 wide x 8 layers, vision 256 wide x 8 blocks, 224x224 images, 64 image tokens each), where the
backbone dominates as with real checkpoints.

Timing: `time.perf_counter`, warm-up first, then interleaved repeats (local, remote, local, ...), median reported
with the minimum alongside, and the CPU stall share (Linux PSI) over the timed rounds; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from benchmarks.loss_overhead import (
    PROMPTS,
    Repeats,
    build_small_scorer,
    count_parameters,
    machine_info,
    percent,
    summary,
    time_interleaved,
)
from zreward_diffusers import ZRewardLoss
from zreward_diffusers.remote import RemoteReward, serve_reward
from zreward_diffusers.testing import build_tiny_scorer

GOAL = 1.2
CASES = [  # name, backbone, batch size, image size
    ("tiny qwen2_vl (tests)", "tiny", 4, 56),
    ("tiny qwen2_vl (tests)", "tiny", 4, 224),
    ("small qwen2_vl", "small", 4, 224),
]


def build_scorer(backbone: str):
    return build_tiny_scorer("qwen2_vl", seed=0) if backbone == "tiny" else build_small_scorer(seed=0)


def _serve(backbone: str, connection) -> None:
    """The reward process: one thread, the same scorer as the local side, served until terminated."""
    torch.set_num_threads(1)
    logging.getLogger("zreward_diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    serve_reward(ZRewardLoss(build_scorer(backbone)), on_ready=connection.send)


def measure(name: str, backbone: str, batch_size: int, size: int, settings: Repeats) -> dict:
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(backbone, child), daemon=True)
    server.start()
    try:
        loss_fn = ZRewardLoss(build_scorer(backbone))
        if not parent.poll(600):
            raise RuntimeError("the reward server did not start")
        host, port = parent.recv()
        remote = RemoteReward(f"{host}:{port}", timeout=600)
        generator = torch.Generator().manual_seed(0)
        images = (torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1).requires_grad_(True)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]

        def local_step() -> torch.Tensor:
            images.grad = None
            loss = loss_fn(images, prompts)
            loss.backward()
            return loss.detach()

        def remote_step() -> torch.Tensor:
            images.grad = None
            loss = remote.loss(images, prompts)
            loss.backward()
            return loss.detach()

        # the two sides compute the same thing: equal losses and image gradients
        local_loss, local_grad = local_step(), images.grad.clone()
        remote_loss, remote_grad = remote_step(), images.grad.clone()
        times, stall = time_interleaved({"local": local_step, "remote": remote_step}, settings)
        stats = remote.server_stats()
        remote.close()
    finally:
        server.terminate()
        server.join(10)
    local, remote_summary = summary(times["local"]), summary(times["remote"])
    ratio = remote_summary["median_ms"] / local["median_ms"]
    return {
        "name": name,
        "batch_size": batch_size,
        "image_size": [size, size],
        "backbone_parameters": count_parameters(loss_fn.scorer.model),
        "payload_mb_each_way": batch_size * 3 * size * size * 4 / 1e6,
        "max_loss_diff": float((local_loss - remote_loss).abs()),
        "max_grad_diff": float((local_grad - remote_grad).abs().max()),
        "local": local,
        "remote": remote_summary,
        "ratio": ratio,
        "ratio_of_minima": remote_summary["min_ms"] / local["min_ms"],
        "overhead_ms": remote_summary["median_ms"] - local["median_ms"],
        "server_stats": stats,
        "cpu_stall_share": stall,
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
    }


def markdown(results: dict) -> str:
    lines = [
        "| backbone | params | batch | image | local (ms) | remote (ms) | ratio | ratio of minima | overhead (ms) | "
        f"pixels each way | CPU stall | goal <= {GOAL:.1f}x |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["cases"]:
        lines.append(
            f"| {r['name']} | {r['backbone_parameters'] / 1e6:.2f}M | {r['batch_size']} | "
            f"{r['image_size'][0]}x{r['image_size'][1]} | {r['local']['median_ms']:.1f} | "
            f"{r['remote']['median_ms']:.1f} | {r['ratio']:.3f}x | {r['ratio_of_minima']:.3f}x | "
            f"{r['overhead_ms']:.1f} | {r['payload_mb_each_way']:.2f} MB | {percent(r['cpu_stall_share'])} | "
            f"{'met' if r['goal_met'] else 'missed'} |"
        )
    lines += [
        "",
        "local: `ZRewardLoss(images, prompts).backward()`; remote: `RemoteReward.loss(images, prompts).backward()` "
        "with the server in another process on 127.0.0.1; one torch thread each; medians of interleaved repeats.",
    ]
    return "\n".join(lines) + "\n"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, the tiny backbone only (noisy)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats on the small backbone (default 7; "
                        "5x that on the tiny one)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/remote_reward.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("zreward_diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    repeats = args.repeats or (2 if args.quick else 7)
    results = {"machine": machine_info(), "commit": commit(), "quick": args.quick, "cases": []}
    for name, backbone, batch_size, size in CASES:
        if args.quick and backbone != "tiny":
            continue
        settings = Repeats(warmup=2, repeats=repeats) if backbone == "small" else Repeats(5, 5 * repeats)
        results["cases"].append(measure(name, backbone, batch_size, size, settings))
    machine = results["machine"]
    sys.stdout.write(
        f"{machine['date']} | commit {results['commit']} | {machine['processor']} | {machine['cpu_count']} CPUs, "
        f"1 torch thread per process | torch {machine['torch']} | transformers {machine['transformers']}\n\n"
        f"{markdown(results)}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(f"\nwrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
