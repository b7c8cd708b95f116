"""The reward-hacking benchmark: the aggressive DRaFT setting that collapses the world's oracle, with each guard alone
and combined, over seeds; a table and a frontier figure (student-reward gain against oracle gain).

The setting: DRaFT-1 LoRA tuning of the world's shipped generator (`world/generator`) with the shipped RISD student
(`world/student_risd`) as the reward, at lr 1e-3 for 400 steps (`pipelines/configs/draft_tiny.yaml` otherwise), where
the student's score keeps rising while the oracle's falls. The fixed protocol: every 25 steps the tuned generator is
judged on 64 validation prompts (the student's μ and the world's pixel oracle, fixed seeds), the LoRA of the best
validated oracle score is kept (`best_lora`), and the good-same-bad comparison against the base is made on test
prompts disjoint from the validation and training prompts (`pipelines.judging --skip_prompts 64 --prompt_seed
<seed>`), with a bootstrap interval over prompts.

Guards (`GUARDS`): `none`; `kappa` (κ = 1, uncertainty aversion); `cvar` (CVaR at α = 0.25 per dimension);
`softmin` (soft minimum over dimensions, τ = 0.05); `velocity_l2` (velocity-space L2 to the base, weight 1);
`redistill` (online re-distillation from the teacher every 100 steps on 16 fresh samples); `combined` (all of
them).

    python -m benchmarks.reward_hacking --out runs/benchmarks/reward_hacking --seeds 0 1 2 \\
        --teacher runs/demo/teacher_gdso/model --lanes 2

Each (guard, seed) is a `pipelines.reward_finetune` run then a `pipelines.judging` run in `<out>/<guard>/seed<s>`,
skipped when its results exist (an interrupted benchmark resumes). `--lanes` runs that many at once, one thread
each. At the end `table.md`, `results.json` and `frontier.png` are written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "pipelines" / "configs" / "draft_tiny.yaml"
AGGRESSIVE = {"pretrained": str(ROOT / "world" / "generator"), "reward": str(ROOT / "world" / "student_risd"),
              "lr": 1e-3, "steps": 400, "batch_size": 4, "eval_prompts": 64, "eval_every": 25,
              "early_stopping_patience": 0, "save_every": 50, "log_with": "none"}
REDISTILL = {"redistill_every": 100, "redistill_samples": 16}  # 4 refreshes x 16 images x 4 dimensions x 4 chains
GUARDS = {
    "none": {},
    "kappa": {"kappa": 1.0},
    "cvar": {"reward_statistic": "cvar", "reward_alpha": 0.25, "normalize_reward": False},
    "softmin": {"reward_combine": "softmin", "reward_temperature": 0.05},
    "velocity_l2": {"velocity_l2_weight": 1.0},
    "redistill": dict(REDISTILL),
    "combined": {"kappa": 1.0, "reward_statistic": "cvar", "reward_alpha": 0.25, "normalize_reward": False,
                 "reward_combine": "softmin", "reward_temperature": 0.05, "velocity_l2_weight": 1.0, **REDISTILL},
}
TEST_PROMPTS, SEEDS_PER_PROMPT = 64, 2


def run_commands(guard: str, seed: int, out: Path, teacher: str | None, steps: int | None = None
                 ) -> list[tuple[list[str], Path]]:
    """The two commands of one (guard, seed) run, each with the file whose existence marks it done."""
    settings = {**AGGRESSIVE, **GUARDS[guard], "seed": seed, "output_dir": str(out), "resume": True}
    if steps is not None:
        settings["steps"] = steps
    if "redistill_every" in settings:
        if teacher is None:
            raise ValueError(f"guard {guard!r} re-distils from a teacher: pass --teacher (a make demo run's "
                             "teacher_gdso/model)")
        settings["redistill_teacher"] = teacher
    tune = [sys.executable, "-m", "pipelines.reward_finetune", "--config", str(BASE_CONFIG)]
    for key, value in settings.items():
        tune += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    judge = [sys.executable, "-m", "pipelines.judging", "--a", AGGRESSIVE["pretrained"],
             "--b", AGGRESSIVE["pretrained"], "--lora_b", str(out / "best_lora"), "--judge", "oracle",
             "--skip_prompts", str(AGGRESSIVE["eval_prompts"]), "--num_prompts", str(TEST_PROMPTS),
             "--seeds_per_prompt", str(SEEDS_PER_PROMPT), "--prompt_seed", str(seed), "--guidance_scale", "3.0",
             "--out", str(out / "gsb.json")]
    return [(tune, out / "metrics.json"), (judge, out / "gsb.json")]


def _run(commands: list[tuple[list[str], Path]], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    log.parent.mkdir(parents=True, exist_ok=True)
    for command, done in commands:
        if done.exists():
            continue
        with open(log, "a") as file:
            subprocess.run(command, cwd=ROOT, env=env, stdout=file, stderr=subprocess.STDOUT, check=True)


def summarise(metrics: dict, gsb: dict | None) -> dict:
    """One run's numbers: the validation curves' gains (end and worst), the selected step, the test GSB."""
    evaluations = metrics["evaluations"]
    mu = np.array([e["eval_expected_score"] for e in evaluations])
    oracle = np.array([e["eval_judge_score"] for e in evaluations])
    # best_lora is the best evaluation after step 0 (the training loop compares the evaluations it makes itself)
    best = int(np.argmax(oracle[1:])) + 1 if len(oracle) > 1 else 0
    summary = {"student_gain": float(mu[-1] - mu[0]), "oracle_gain": float(oracle[-1] - oracle[0]),
               "oracle_worst_drop": float(min(0.0, (oracle[1:] - oracle[0]).min())) if len(oracle) > 1 else 0.0,
               "oracle_never_below_base": bool((oracle[1:] >= oracle[0]).all()),
               "student_rises": bool(mu[-1] > mu[0]), "best_step": int(evaluations[best]["step"]),
               "train_seconds": metrics["train_seconds"], "curve_steps": [e["step"] for e in evaluations],
               "curve_student": mu.tolist(), "curve_oracle": oracle.tolist()}
    if "redistill_seconds" in metrics:
        summary["redistill_seconds"] = metrics["redistill_seconds"]
    if gsb is not None:
        summary.update(gsb_net=gsb["net"], gsb_lower=gsb["net_lower"], gsb_upper=gsb["net_upper"],
                       gsb_judgements=gsb["num_judgements"])
    return summary


def aggregate(runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Per guard: mean and sample std over seeds of each gain, how many seeds kept the oracle at or above the base
    while the student rose, and each seed's test GSB with its interval."""
    table = {}
    for guard, by_seed in runs.items():
        seeds = sorted(by_seed)
        row = {"seeds": seeds}
        for key in ("student_gain", "oracle_gain", "oracle_worst_drop", "gsb_net"):
            values = np.array([by_seed[s][key] for s in seeds if key in by_seed[s]], dtype=float)
            row[key] = float(values.mean()) if len(values) else None
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        row["goal_seeds"] = sum(by_seed[s]["oracle_never_below_base"] and by_seed[s]["student_rises"]
                                and by_seed[s].get("gsb_lower", -1.0) > 0 for s in seeds)
        row["gsb"] = {s: (by_seed[s].get("gsb_net"), by_seed[s].get("gsb_lower"), by_seed[s].get("gsb_upper"))
                      for s in seeds}
        table[guard] = row
    return table


def _mean_std(row: dict, key: str) -> str:
    if row[key] is None:
        return "–"
    spread = f" ± {row[f'{key}_std']:.3f}" if row[f"{key}_std"] is not None else ""
    return f"{row[key]:+.3f}{spread}"


def markdown(table: dict[str, dict]) -> str:
    lines = ["| guard | seeds | student μ gain (end) | oracle gain (end) | worst oracle drop | test GSB net per seed "
             "[95% CI] | goal met (seeds) |", "|---|---:|---:|---:|---:|---|---:|"]
    for guard, row in table.items():
        gsb = "; ".join(f"{net:+.3f} [{low:+.3f}, {high:+.3f}]" if net is not None else "–"
                        for net, low, high in row["gsb"].values())
        lines.append(f"| {guard} | {len(row['seeds'])} | {_mean_std(row, 'student_gain')} | "
                     f"{_mean_std(row, 'oracle_gain')} | {_mean_std(row, 'oracle_worst_drop')} | {gsb} | "
                     f"{row['goal_seeds']}/{len(row['seeds'])} |")
    return "\n".join(lines) + "\n"


def frontier_figure(runs: dict[str, dict[int, dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for index, (guard, by_seed) in enumerate(runs.items()):
        colour = f"C{index % 10}"
        x = [run["student_gain"] for run in by_seed.values()]
        y = [run["oracle_gain"] for run in by_seed.values()]
        left.scatter(x, y, color=colour, label=guard, s=28)
        for run in by_seed.values():
            right.plot(np.array(run["curve_student"]) - run["curve_student"][0],
                       np.array(run["curve_oracle"]) - run["curve_oracle"][0], color=colour, alpha=0.6, lw=1)
    for axis in (left, right):
        axis.axhline(0, color="0.5", lw=0.8)
        axis.axvline(0, color="0.5", lw=0.8)
        axis.set_xlabel("student μ gain on validation prompts")
        axis.set_ylabel("oracle gain on validation prompts")
    left.set_title("end of each run (one point per seed)")
    right.set_title("the way there (every 25 steps)")
    left.legend(fontsize=7)
    figure.suptitle("Reward hacking at lr 1e-3, 400 DRaFT-1 steps: up and right is a real improvement", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def collect(out: Path, guards: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    runs = {}
    for guard in guards:
        for seed in seeds:
            directory = out / guard / f"seed{seed}"
            if not (directory / "metrics.json").exists():
                continue
            gsb_path = directory / "gsb.json"
            gsb = json.loads(gsb_path.read_text()) if gsb_path.exists() else None
            runs.setdefault(guard, {})[seed] = summarise(json.loads((directory / "metrics.json").read_text()), gsb)
    return runs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run = parser.add_argument_group("Run")
    run.add_argument("--guards", nargs="+", default=list(GUARDS), choices=list(GUARDS), help="guards to run")
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="tuning seeds (default 0 1 2)")
    run.add_argument("--teacher", default=None, help="the teacher re-distillation reads (redistill, combined)")
    run.add_argument("--lanes", type=int, default=1, help="runs at once, one thread each (default 1)")
    run.add_argument("--steps", type=int, default=None, help="override the 400 steps (smoke tests only)")
    run.add_argument("--collect_only", action="store_true", help="only tabulate the runs that exist")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default="runs/benchmarks/reward_hacking", help="runs and results")
    args = parser.parse_args(argv)
    if args.lanes < 1:
        raise SystemExit(f"--lanes must be at least 1, got {args.lanes}")
    out = Path(args.out)
    if not args.collect_only:
        jobs = [(guard, seed) for seed in args.seeds for guard in args.guards]
        plans = {job: run_commands(job[0], job[1], out / job[0] / f"seed{job[1]}", args.teacher, args.steps)
                 for job in jobs}  # every plan is checked before anything runs
        with ThreadPoolExecutor(args.lanes) as pool:
            futures = {job: pool.submit(_run, plans[job], out / job[0] / f"seed{job[1]}" / "log.txt")
                       for job in jobs}
        failed = [f"{guard} seed {seed}: {future.exception()}" for (guard, seed), future in futures.items()
                  if future.exception() is not None]
        for line in failed:  # the others are tabulated; a rerun resumes the failed ones from their checkpoints
            sys.stderr.write(f"reward_hacking: failed: {line}\n")
    runs = collect(out, args.guards, args.seeds)
    table = aggregate(runs)
    text = markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"runs": {g: {str(s): r for s, r in by.items()}
                                                           for g, by in runs.items()}, "table": table}, indent=2))
    if runs:
        frontier_figure(runs, out / "frontier.png")
    sys.stdout.write(text)
    return table


if __name__ == "__main__":
    main()
