"""Peak memory and time per step of reward backpropagation through the sampler against K (the number of final
steps with gradients; K = T is the full chain, as AlignProp), with and without gradient checkpointing.

Each configuration runs in a fresh subprocess and reports the bytes autograd saves for backward (the memory that
backpropagation through the chain costs) and the peak memory growth over the loaded models (resident memory on CPU,
`ru_maxrss`; allocated memory on a GPU), on a tiny SD1.5-class pipeline built from config and the tiny Z-Reward
student. The goal (issue: pipelines): with checkpointing, the full chain costs at most 1.5x the memory of K = 1.

    python -m benchmarks.draft_memory --steps 20 --size 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(k: int, steps: int, size: int, checkpoint: bool, repeats: int) -> dict:
    import numpy as np
    import torch

    from pipelines.lora import add_lora
    from pipelines.methods import sample
    from pipelines.rollout import rollout_for
    from pipelines.tiny import build_tiny_pipeline
    from zreward_diffusers import ZRewardLoss
    from zreward_diffusers.testing import build_tiny_scorer

    torch.manual_seed(0)
    pipe = build_tiny_pipeline("sd15")
    params = add_lora(pipe, rank=4)
    reward = ZRewardLoss(build_tiny_scorer("qwen2_vl"))
    rollout = rollout_for(pipe, size, size)
    prompts = ["two red circles on a blue background"] * 2
    cuda = torch.cuda.is_available()
    if cuda:
        pipe.to("cuda")
        reward.to("cuda")
    seconds, saved = [], [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        saved[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = sample(rollout, prompts, steps, "draft", k=k, generator=torch.Generator().manual_seed(repeat),
                            rng=np.random.default_rng(0), use_checkpoint=checkpoint)
            loss = reward(result.images, prompts)
        loss.backward()
        for p in params:
            p.grad = None
        if repeat:
            seconds.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline)
    return {"k": k, "checkpoint": checkpoint, "peak_mib": round(peak, 1), "saved_mib": round(saved[0] / 2**20, 1),
            "seconds": round(float(np.mean(seconds)), 3), "device": "cuda" if cuda else "cpu"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measured = parser.add_argument_group("Measurement")
    measured.add_argument("--steps", type=int, default=20)
    measured.add_argument("--size", type=int, default=64)
    measured.add_argument("--ks", type=int, nargs="+", default=None)
    measured.add_argument("--repeats", type=int, default=2)
    measured.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one configuration
        k, checkpoint = args.one.split(",")
        print(json.dumps(measure(int(k), args.steps, args.size, checkpoint == "1", args.repeats)))
        return
    ks = args.ks or sorted({1, 2, args.steps // 4, args.steps // 2, args.steps})
    rows = []
    for checkpoint in (False, True):
        for k in ks:
            out = subprocess.run([sys.executable, "-m", "benchmarks.draft_memory", "--steps", str(args.steps),
                                  "--size", str(args.size), "--repeats", str(args.repeats),
                                  "--one", f"{k},{int(checkpoint)}"],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    base = {r["checkpoint"]: r for r in rows if r["k"] == 1}
    print(f"\nT = {args.steps} steps, {args.size} px, batch 2, device {rows[0]['device']}\n")
    print("| K | checkpointing | tensors saved for backward (MiB) | vs K = 1 | peak memory growth (MiB) | vs K = 1 "
          "| s / step |\n|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        b = base[r["checkpoint"]]
        print(f"| {r['k']} | {'yes' if r['checkpoint'] else 'no'} | {r['saved_mib']} | "
              f"{r['saved_mib'] / b['saved_mib']:.2f}x | {r['peak_mib']} | "
              f"{r['peak_mib'] / max(b['peak_mib'], 1e-9):.2f}x | {r['seconds']} |")


if __name__ == "__main__":
    main()
