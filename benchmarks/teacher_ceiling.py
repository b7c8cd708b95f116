"""The teacher-forced ceiling: a reasoning teacher's held-out preference accuracy when it reads the world's true
rationale instead of its own sampled chains.

The teacher's accuracy (as every reward table measures it) comes from its own chains: it writes a rationale, then
reads its score distribution after it. Here each held-out (image, prompt, dimension) is given the rationale the
world wrote from the true scene (`record.rationales`, what the cold start trained on), and the score distribution
is read after that. The gap between the two is what better reasoning could still buy this teacher; a teacher whose
own accuracy is far below its ceiling loses at its chains (`benchmarks/teacher_chains.py` says how), not at reading a
score from good evidence.

    python -m benchmarks.teacher_ceiling --teacher runs/demo/teacher_gdso/model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from training.data import DataSpec, ImageBank, load_split
from training.sequences import Row, RowEncoder, forward_rows
from training.trainer import load_base
from zreward_diffusers.evaluation import evaluate_probs, preference_accuracy_ci


@torch.no_grad()
def true_rationale_probs(model, encoder: RowEncoder, dataset, dimensions, batch_size: int = 32) -> np.ndarray:
    """`(N, D, K)` score distributions read after each record's own rationale of each dimension."""
    rows = []
    for n, record in enumerate(dataset.records):
        for d, dimension in enumerate(dimensions):
            rationale = record.rationales.get(dimension)
            if not rationale:
                raise ValueError(f"record {record.record_id} has no rationale for {dimension!r}")
            rows.append((n, d, Row(n, record.prompt, dimension, rationale)))
    probs = np.zeros((len(dataset.records), len(dimensions), len(encoder.rubric.levels)))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out = forward_rows(model, encoder([row for _, _, row in chunk]), encoder.read_token_ids)
        for (n, d, _), p in zip(chunk, out.score_log_probs.exp().double().numpy(), strict=True):
            probs[n, d] = p
    return probs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_group = parser.add_argument_group("Model")
    model_group.add_argument("--teacher", required=True, help="a reasoning teacher (Z-Reward checkpoint directory)")
    data = parser.add_argument_group("Data")
    data.add_argument("--num_groups", type=int, default=64, help="held-out prompt groups (default: %(default)s)")
    data.add_argument("--start", type=int, default=100_000, help="their first group (default: %(default)s)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    model, processor, rubric = load_base(args.teacher)
    model.eval()
    dataset = load_split(DataSpec(start=args.start, num_groups=args.num_groups))
    encoder = RowEncoder(processor, rubric, ImageBank(dataset).images)
    dimensions = tuple(dataset.dimensions)
    probs = true_rationale_probs(model, encoder, dataset, dimensions)
    report = evaluate_probs(probs, dataset)
    per_dimension = {d: report[d]["pair_accuracy"]["accuracy"] for d in dimensions}
    interval = preference_accuracy_ci(probs @ np.asarray(rubric.levels, dtype=float), dataset)
    result = {"teacher": args.teacher, "true_rationale_accuracy": interval["estimate"],
              "ci": [interval["lower"], interval["upper"]], "per_dimension": per_dimension,
              "num_groups": args.num_groups}
    sys.stdout.write("| teacher | reads | held-out preference accuracy | 95% CI | "
                     + " | ".join(dimensions) + " |\n|---|---|---:|---|" + "---:|" * len(dimensions) + "\n"
                     f"| {args.teacher} | the world's true rationale | {interval['estimate']:.3f} | "
                     f"[{interval['lower']:.3f}, {interval['upper']:.3f}] | "
                     + " | ".join(f"{per_dimension[d]:.3f}" for d in dimensions) + " |\n")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
