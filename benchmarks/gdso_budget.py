"""GDSO's held-out preference accuracy against its RL budget, from one cold start: is the teacher short of steps?

Continues GDSO from a `make demo` run's cold start with that run's own GDSO settings (`<demo>/configs/
teacher_gdso.yaml`) and measures it at each budget of `--steps`. It is one run in segments: it trains to the first
budget, saves its training state and is evaluated, then resumes to the next. With the demo's constant learning rate
after warm-up and GDSO's per-step random streams, the segments are the same run as one of `max(--steps)` steps
measured on the way (tested), so the demo's own GDSO step count, as the first budget, reproduces its number. Each
point has a bootstrap 95% interval over held-out prompt groups; the demo's cold start, SFT only and scalar baselines
are drawn beside it.

    python -m benchmarks.gdso_budget --demo runs/demo --steps 40 120 360
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from training.config import load_config
from training.data import load_split
from training.gdso import GDSOConfig, GDSOTrainer
from zreward_diffusers.evaluation import preference_accuracy_ci

REFERENCES = (("teacher_sft", "cold start (GDSO's start)"), ("sft_only", "SFT only"),
              ("bradley_terry", "Bradley-Terry"), ("rewarddance", "RewardDance-style"))


def _interval(metrics: dict, eval_data: dict) -> dict:
    return preference_accuracy_ci(np.asarray(metrics["eval_scores"]), load_split(eval_data))


def budget_curve(demo: Path, steps: list[int], out: Path) -> list[dict]:
    """`[{"steps", "accuracy", "lower", "upper", "per_dimension", "train_seconds"}]`, one per budget in `steps`
    (sorted), GDSO continued from `demo`'s cold start in `<out>/run`; each finished budget is kept in
    `<out>/steps_<n>.json` and not trained again."""
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"`steps` must be positive integers, got {steps!r}")
    source = demo / "configs" / "teacher_gdso.yaml"
    if not source.exists():
        raise ValueError(f"`demo` must be a `python -m recipes.demo` run directory; {source} is missing")
    points = []
    for n in sorted(set(steps)):
        done = out / f"steps_{n}.json"
        if done.exists():
            points.append(json.loads(done.read_text()))
            continue
        config = load_config(GDSOConfig, source, {"output_dir": str(out / "run"), "steps": n, "save_every": n,
                                                  "eval_every": 0, "resume": True, "log_with": None})
        if config.lr_scheduler not in ("constant", "constant_with_warmup"):
            raise ValueError(f"{source} has lr_scheduler {config.lr_scheduler!r}: a run in segments equals one run "
                             "only with a constant learning rate (constant or constant_with_warmup)")
        metrics = GDSOTrainer(config).train()
        interval = _interval(metrics, config.eval_data)
        point = {"steps": n, "accuracy": metrics["preference_accuracy"], "lower": interval["lower"],
                 "upper": interval["upper"], "per_dimension": metrics["per_dimension"],
                 "train_seconds": metrics["train_seconds"]}
        staging = done.with_suffix(".json.tmp")
        staging.write_text(json.dumps(point, indent=2))
        os.replace(staging, done)
        points.append(point)
    return points


def references(demo: Path) -> dict[str, dict]:
    """The demo's cold start, SFT-only and scalar baselines: accuracy, interval and steps."""
    from recipes.demo_report import accuracy_intervals

    eval_groups = load_config(GDSOConfig, demo / "configs" / "teacher_gdso.yaml").eval_data["num_groups"]
    intervals = accuracy_intervals(demo, eval_groups)
    found = {}
    for stage, _ in REFERENCES:
        if stage in intervals:
            metrics = json.loads((demo / stage / "metrics.json").read_text())
            found[stage] = {"accuracy": metrics["preference_accuracy"], "lower": intervals[stage]["lower"],
                            "upper": intervals[stage]["upper"], "steps": metrics["steps"]}
    return found


def figure(points: list[dict], refs: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 3.8), dpi=110)
    x = np.array([p["steps"] for p in points])
    axis.plot(x, [p["accuracy"] for p in points], "o-", color="C0", label="GDSO")
    axis.fill_between(x, [p["lower"] for p in points], [p["upper"] for p in points], color="C0", alpha=0.2,
                      label="GDSO 95% interval")
    for i, (stage, label) in enumerate(REFERENCES):
        if stage in refs:
            axis.axhline(refs[stage]["accuracy"], color=f"C{i + 1}", linestyle="--", linewidth=1,
                         label=f"{label} ({refs[stage]['steps']} steps)")
    axis.set_xscale("log")
    axis.set_xticks(x, [str(n) for n in x])
    axis.minorticks_off()
    axis.set_xlabel("GDSO steps after the cold start")
    axis.set_ylabel("held-out preference accuracy")
    axis.set_title("GDSO against its RL budget (one cold start)", fontsize=10)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_argument_group("Input")
    source.add_argument("--demo", default="runs/demo", help="a finished demo run (default: %(default)s)")
    measurement = parser.add_argument_group("Measurement")
    measurement.add_argument("--steps", type=int, nargs="+", default=[40, 120, 360],
                             help="GDSO budgets after the cold start (default: %(default)s)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default="runs/benchmarks/gdso_budget",
                        help="runs, JSON and figure (default: %(default)s)")
    args = parser.parse_args(argv)
    demo, out = Path(args.demo), Path(args.out)
    try:
        points = budget_curve(demo, args.steps, out)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    refs = references(demo)
    dimensions = list(points[0]["per_dimension"])
    lines = ["| GDSO steps after the cold start | held-out preference accuracy | 95% CI | "
             + " | ".join(d.replace("_", " ") for d in dimensions) + " | training s |",
             "|---:|---:|---|" + "---:|" * len(dimensions) + "---:|"]
    for p in points:
        lines.append(f"| {p['steps']} | {p['accuracy']:.3f} | [{p['lower']:.3f}, {p['upper']:.3f}] | "
                     + " | ".join(f"{p['per_dimension'][d]:.3f}" for d in dimensions)
                     + f" | {p['train_seconds']:.0f} |")
    lines += ["", "| the same demo run | steps | held-out preference accuracy | 95% CI |", "|---|---:|---:|---|"]
    lines += [f"| {label} | {refs[s]['steps']} | {refs[s]['accuracy']:.3f} | [{refs[s]['lower']:.3f}, "
              f"{refs[s]['upper']:.3f}] |" for s, label in REFERENCES if s in refs]
    path = figure(points, refs, out / "gdso_budget.png")
    result = {"demo": str(demo), "points": points, "references": refs, "figure": str(path)}
    (out / "gdso_budget.json").write_text(json.dumps(result, indent=2))
    sys.stdout.write("\n".join(lines) + f"\n\nfigure: {path}\n")
    return result


if __name__ == "__main__":
    main()
