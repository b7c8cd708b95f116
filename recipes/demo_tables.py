"""The teacher, student and DRaFT tables over training seeds, from `make demo` runs of several seeds.

    python -m recipes.demo --out runs/demo_seed1 --seed 1     # (and --seed 2; `make demo-seeds` runs both)
    python -m recipes.demo_tables runs/demo runs/demo_seed1 runs/demo_seed2

Each run is one `python -m recipes.demo` of the same profile and another `--seed` (the training seed of every reward
model: the bases, data, generator and DRaFT's prompt split are the same in all). Reads each run's `report.json` and
stage `metrics.json`; prints three markdown tables (mean ± sample standard deviation over seeds, the per-seed values,
the per-dimension means) and writes them, with the numbers, to `<out>/tables.md` and `<out>/tables.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from recipes.demo_report import STUDENT_ROWS, TEACHER_ROWS
from zreward_diffusers.synthetic.world import DIMENSIONS


def _profile(run: Path) -> tuple[str, int]:
    """`(profile, seed)` of a demo run, from its `profile.txt` (`demo`, `demo --seed 2`, ...)."""
    marker = run / "profile.txt"
    if not marker.exists():
        raise ValueError(f"{run} is not a demo run (no profile.txt)")
    words = marker.read_text().split()
    seed = int(words[words.index("--seed") + 1]) if "--seed" in words else 0
    return " ".join(w for i, w in enumerate(words) if w != "--seed" and (i == 0 or words[i - 1] != "--seed")), seed


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def gather(runs: list[Path]) -> dict:
    """The numbers of `runs` (finished demo runs of one profile, distinct seeds), by stage and by seed."""
    if not runs:
        raise ValueError("`runs` must name at least one finished demo run")
    profiles, seeds = {}, []
    for run in runs:
        profile, seed = _profile(run)
        profiles[str(run)] = profile
        seeds.append(seed)
        if not (run / "report.json").exists():
            raise ValueError(f"{run} has no report.json: the demo has not finished there")
    if len(set(profiles.values())) > 1:
        raise ValueError(f"`runs` must be demo runs of one profile, got {profiles}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"`runs` must have distinct seeds, got {dict(zip(map(str, runs), seeds, strict=True))}")
    rows = {}
    for stage, _ in (*TEACHER_ROWS, *STUDENT_ROWS):
        per_seed = []
        for run in runs:
            metrics = json.loads((run / stage / "metrics.json").read_text())
            per_dimension = metrics.get("per_dimension") or {}
            per_seed.append({"overall": metrics["preference_accuracy"],
                             **{d: per_dimension.get(d) for d in DIMENSIONS}})
        rows[stage] = per_seed
    gsb = [json.loads((run / "report.json").read_text())["gsb"] for run in runs]
    pooled = pooled_gsb([json.loads((run / "gsb.json").read_text()) for run in runs])
    draft = []
    for run in runs:
        evaluations = json.loads((run / "draft" / "metrics.json").read_text())["evaluations"]
        tuned = [e for e in evaluations if e["step"] > 0] or evaluations
        key = "eval_judge_score" if evaluations[0].get("eval_judge_score") is not None else "eval_expected_score"
        best = max(tuned, key=lambda e: e[key])
        base = evaluations[0]
        draft.append({"best_step": best["step"], "base_oracle": base.get("eval_judge_score"),
                      "best_oracle": best.get("eval_judge_score"), "base_reward": base["eval_expected_score"],
                      "best_reward": best["eval_expected_score"]})
    return {"profile": next(iter(profiles.values())), "runs": [str(r) for r in runs], "seeds": seeds,
            "accuracy": rows, "gsb": gsb, "gsb_pooled": pooled, "draft": draft}


def pooled_gsb(results: list[dict]) -> dict:
    """The GSB of every seed's tuned generator against the base at once: all seeds' judgements, their interval from
    a bootstrap over test prompts (a prompt's judgements of every seed are resampled together). The runs must have
    judged the same prompts."""
    from zreward_diffusers.metrics import gsb_with_ci

    prompts = [result["prompts"] for result in results]
    if any(p != prompts[0] for p in prompts):
        raise ValueError("the runs' GSB judged different test prompts: they cannot be pooled")
    judgements = [j for result in results for j in result["judgements"]]
    pooled = gsb_with_ci(judgements, groups=[prompt for run_prompts in prompts for prompt in run_prompts])
    return {key: pooled[key] for key in ("good", "same", "bad", "net", "net_lower", "net_upper")}


def _row(label: str, per_seed: list[dict], reference: float | None = None) -> str:
    mean, std = _mean_std([s["overall"] for s in per_seed])
    dims = [np.mean([s[d] for s in per_seed]) if all(s[d] is not None for s in per_seed) else None
            for d in DIMENSIONS]
    cells = [label, f"{mean:.3f} ± {std:.3f}", ", ".join(f"{s['overall']:.3f}" for s in per_seed),
             *("–" if v is None else f"{v:.3f}" for v in dims)]
    if reference is not None:
        cells.append(f"{100 * (mean - reference):+.1f} pts")
    return "| " + " | ".join(cells) + " |"


def tables(numbers: dict) -> str:
    """The three markdown tables of `gather`'s numbers."""
    seeds = ", ".join(map(str, numbers["seeds"]))
    dims = " | ".join(d.replace("_", " ") for d in DIMENSIONS)
    acc = numbers["accuracy"]
    teacher = [f"Teacher size (seeds {seeds}): held-out preference accuracy", "",
               f"| method | mean ± std | per seed | {dims} |", "|---" * (3 + len(DIMENSIONS)) + "|"]
    teacher += [_row(label, acc[stage]) for stage, label in TEACHER_ROWS]
    gdso, _ = _mean_std([s["overall"] for s in acc["teacher_gdso"]])
    student = [f"Student size (seeds {seeds}), against the GDSO teacher of the same seed ({gdso:.3f} on average)", "",
               f"| method | mean ± std | per seed | {dims} | vs teacher |", "|---" * (4 + len(DIMENSIONS)) + "|"]
    student += [_row(label, acc[stage], gdso) for stage, label in STUDENT_ROWS]
    gaps = [t["overall"] - s["overall"] for t, s in zip(acc["teacher_gdso"], acc["student_risd"], strict=True)]
    student += ["", "RISD minus its own seed's teacher: " + ", ".join(f"{-100 * g:+.1f}" for g in gaps) + " pts"]
    draft = [f"DRaFT-1 with each seed's RISD student (seeds {seeds}); GSB on test prompts disjoint from validation",
             "",
             "| seed | kept step | oracle, validation: base → kept | reward μ: base → kept | GSB net | 95% CI |",
             "|---|---:|---|---|---:|---|"]
    for seed, run, gsb in zip(numbers["seeds"], numbers["draft"], numbers["gsb"], strict=True):
        oracle = ("–" if run["base_oracle"] is None
                  else f"{run['base_oracle']:.3f} → {run['best_oracle']:.3f}")
        draft.append(f"| {seed} | {run['best_step']} | {oracle} | {run['base_reward']:.3f} → {run['best_reward']:.3f} "
                     f"| {gsb['net']:+.3f} | [{gsb['net_lower']:+.3f}, {gsb['net_upper']:+.3f}] |")
    net_mean, net_std = _mean_std([g["net"] for g in numbers["gsb"]])
    pooled = numbers["gsb_pooled"]
    draft += [f"| all seeds' judgements pooled | – | – | – | {pooled['net']:+.3f} | "
              f"[{pooled['net_lower']:+.3f}, {pooled['net_upper']:+.3f}] |",
              "", f"GSB net over seeds: {net_mean:+.3f} ± {net_std:.3f}; intervals above 0 in "
                  f"{sum(g['net_lower'] > 0 for g in numbers['gsb'])} of {len(numbers['gsb'])} seeds"]
    return "\n\n".join(["\n".join(teacher), "\n".join(student), "\n".join(draft)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_argument_group("Input")
    source.add_argument("runs", nargs="+", help="finished demo runs (their --out), one per seed")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default="runs/benchmarks/demo_tables",
                        help="where tables.md and tables.json go (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        numbers = gather([Path(run) for run in args.runs])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    text = tables(numbers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text + "\n")
    (out / "tables.json").write_text(json.dumps(numbers, indent=2))
    sys.stdout.write(text + "\n")
    return numbers


if __name__ == "__main__":
    main()
