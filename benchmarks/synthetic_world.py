"""The synthetic world in numbers: generation rate, a random model's and the oracle's accuracy, the human ceiling.

    python -m benchmarks.synthetic_world [--n 20000] [--eval-limit N]

1. `python -m training.make_synthetic --n N` wall time (goal: 20,000 images in under a minute here);
2. `zreward eval` of a `zreward create-tiny` checkpoint over the dataset (a random model: accuracy should be ≈ 50%);
3. the oracle's own scores evaluated the same way (one-hot distributions at the oracle's score), against the
   panel's consensus labels and pair preferences;
4. the human-agreement ceiling on held-out groups (`synthetic.ceiling.human_ceiling`): the oracle's and a single
   (leave-one-out) annotator's accuracy against the panel's preferences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from zreward_diffusers.data import RewardDataset
from zreward_diffusers.evaluation import _jsonable, evaluate_probs
from zreward_diffusers.synthetic import DIMENSIONS, SyntheticWorld
from zreward_diffusers.synthetic.ceiling import human_ceiling


def _run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measured = parser.add_argument_group("Measurement")
    output = parser.add_argument_group("Output")
    measured.add_argument("--n", type=int, default=20000)
    measured.add_argument("--eval-limit", type=int, default=None, help="evaluate the random model on fewer images")
    output.add_argument("--out", default="runs/benchmarks/synthetic_world")
    measured.add_argument("--reuse-eval", action="store_true", help="keep an existing eval report of the random model")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data, tiny, report_dir = out / "data", out / "tiny", out / "eval-tiny"

    shutil.rmtree(data, ignore_errors=True)  # time writing a new dataset, not deleting the last one
    seconds = _run(["training.make_synthetic", "--out", str(data), "--n", str(args.n), "--seed", "0"])
    eval_seconds = None
    if not (args.reuse_eval and (report_dir / "metrics.json").is_file()):
        _run(["zreward_diffusers.cli", "create-tiny", str(tiny)])
        eval_args = ["zreward_diffusers.cli", "eval", "--model", str(tiny), "--data", str(data),
                     "--out", str(report_dir)]
        eval_seconds = _run(eval_args + (["--limit", str(args.eval_limit)] if args.eval_limit else []))
    tiny_report = json.loads((report_dir / "metrics.json").read_text())

    dataset = RewardDataset.load(data)
    oracle = np.array([[r.meta["oracle"][d] for d in DIMENSIONS] for r in dataset.records])
    index = np.abs(oracle[..., None] - np.asarray(dataset.levels)).argmin(-1)
    oracle_report = evaluate_probs(np.eye(len(dataset.levels))[index], dataset)
    ceiling = human_ceiling(SyntheticWorld(seed=1).groups(1000))  # held out: another seed

    rows = ["| model | " + " | ".join([*DIMENSIONS, "overall"]) + " |", "|---" * 6 + "|"]
    for name, report in (("random tiny student (create-tiny)", tiny_report), ("oracle", oracle_report)):
        cells = [f"{report[d]['pairwise_accuracy']['accuracy']:.3f}" for d in [*DIMENSIONS, "overall"]]
        rows.append(f"| {name}: acc vs consensus labels | " + " | ".join(cells) + " |")
        cells = [f"{report[d]['pair_accuracy']['accuracy']:.3f}" for d in [*DIMENSIONS, "overall"]]
        rows.append(f"| {name}: acc vs panel pairs | " + " | ".join(cells) + " |")
    for key, label in (("oracle", "ceiling: oracle vs panel (held out)"),
                       ("single_annotator", "ceiling: one annotator vs the others (held out)")):
        rows.append(f"| {label} | " + " | ".join(f"{ceiling[c][key]:.3f}" for c in [*DIMENSIONS, "overall"]) + " |")
    result = {
        "n": args.n,
        "make_synthetic_seconds": round(seconds, 1),
        "images_per_second": round(args.n / seconds, 1),
        "eval_images": tiny_report["num_records"],
        "eval_seconds": None if eval_seconds is None else round(eval_seconds, 1),
        "tiny": tiny_report,
        "oracle": oracle_report,
        "ceiling": ceiling,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    sys.stdout.write(
        f"make_synthetic: {args.n} images in {seconds:.1f} s ({args.n / seconds:.0f} images/s, including "
        f"interpreter start-up)\nzreward eval of the random tiny model: {tiny_report['num_records']} images"
        + (f" in {eval_seconds:.1f} s" if eval_seconds is not None else " (report reused)")
        + "\n\n" + "\n".join(rows) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
