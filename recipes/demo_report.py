"""The demo's report: `<out>/report.md` with its tables, and the figures under `<out>/figures/`.

Reads only what the stages wrote (`metrics.json` of each stage, `gsb.json`, `timings.json`), plus two things it
computes itself: the human-agreement ceiling on the same held-out prompt groups the reward models were evaluated on,
and the RISD student's distributions on a few held-out images (the sample figure).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from zreward_diffusers.synthetic.world import DIMENSIONS


def held_out_world():
    """The world of the reward trainers' held-out groups (`recipes.demo.EVAL`), and its first group index."""
    from zreward_diffusers.synthetic.world import SyntheticWorld, WorldConfig

    from .demo import EVAL

    return SyntheticWorld(EVAL["world_seed"], WorldConfig(image_size=EVAL["image_size"])), EVAL["start"]

TEACHER_ROWS = (  # (stage, label): teacher size, the cold start's steps + GDSO's
    ("sft_only", "SFT only (the cold start trained on)"),
    ("teacher_grpo", "GRPO (cold start + sampled score token)"),
    ("bradley_terry", "scalar Bradley-Terry"),
    ("rewarddance", "RewardDance-style P(yes)"),
    ("teacher_gdso", "**GDSO** (cold start + GDSO)"),
)
STUDENT_ROWS = (  # student size, RISD's steps, no reasoning
    ("direct", "trained on the panel's labels only"),
    ("student_opd", "OPD (on-policy distillation of the GDSO teacher)"),
    ("student_risd", "**RISD** (distils the GDSO teacher; the reward used for tuning)"),
)
NAMES = {"teacher_sft": "cold start", "sft_only": "SFT only", "teacher_grpo": "GRPO", "bradley_terry": "Bradley-Terry",
         "rewarddance": "RewardDance", "teacher_gdso": "GDSO", "direct": "labels only", "student_opd": "OPD",
         "student_risd": "RISD"}
REWARD_ROWS = (("teacher_sft", "cold start (SFT; where GRPO and GDSO begin)"), *TEACHER_ROWS, *STUDENT_ROWS)
SHORT_LABELS = {"teacher_sft": "cold\nstart", "sft_only": "SFT\nonly", "teacher_grpo": "GRPO",
                "bradley_terry": "Bradley-\nTerry", "rewarddance": "Reward-\nDance", "teacher_gdso": "GDSO",
                "direct": "labels\nonly", "student_opd": "OPD", "student_risd": "RISD"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values, window: int = 10) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


# ---------------------------------------------------------------------------------------------------------- tables
def base_table(out: Path, world: Path | None = None) -> str:
    """The base VLMs: trained by this run (`--from-scratch`), else the shipped ones as their manifest measured them
    on unseen images (the lower of its two sets of 1,024)."""
    lines = ["| base model | parameters | colour | shape | count | background | where from |",
             "|---|---|---|---|---|---|---|"]
    manifest = (_load(world / "manifest.json") or {}).get("models", {}) if world is not None else {}
    for stage, name in (("base_teacher", "teacher"), ("base_student", "student")):
        metrics = (_load(out / stage / "metrics.json") or {}).get(name)
        if metrics is not None:
            accuracy = metrics["held_out_accuracy"]
            source = f"trained by this run: {metrics['steps']} steps, {metrics['train_seconds']:.0f} s"
        elif stage in manifest:
            sets = manifest[stage]["colour_shape_count_on_unseen_images"].values()
            accuracy = {task: min(measured[task] for measured in sets) for task in next(iter(sets))}
            metrics = manifest[stage]
            source = f"shipped: world/{stage} (manifest, commit {metrics.get('commit')})"
        else:
            continue
        lines.append(f"| {name} | {metrics['parameters'] / 1e6:.2f} M | "
                     + " | ".join(_fmt(accuracy.get(task)) for task in ("colour", "shape", "count", "background"))
                     + f" | {source} |")
    return "\n".join(lines)


def accuracy_intervals(out: Path, eval_groups: int) -> dict[str, dict]:
    """Each reward stage's held-out preference accuracy with its bootstrap 95% interval over prompt groups,
    recomputed from the per-record scores the stage wrote (`eval_scores`) on the same held-out groups."""
    from training.data import load_split
    from zreward_diffusers.evaluation import preference_accuracy_ci

    from .demo import EVAL

    dataset = load_split(dict(EVAL, num_groups=eval_groups))
    intervals = {}
    for stage, _ in REWARD_ROWS:
        metrics = _load(out / stage / "metrics.json")
        if metrics is None or "eval_scores" not in metrics:
            continue
        intervals[stage] = preference_accuracy_ci(np.asarray(metrics["eval_scores"]), dataset)
    return intervals


def _interval(interval: dict | None) -> str:
    return "–" if interval is None else f"[{interval['lower']:.3f}, {interval['upper']:.3f}]"


def reward_table(out: Path, ceiling: dict, intervals: dict) -> tuple[str, dict]:
    """Two tables (teacher size, student size), each row with its overall accuracy, 95% interval and
    per-dimension accuracies; then the ceilings."""
    header = ("| reward model | overall | 95% CI | " + " | ".join(d.replace("_", " ") for d in DIMENSIONS)
              + " | training |")
    rule = "|---" * (len(DIMENSIONS) + 4) + "|"
    accuracies, blocks = {}, []
    for title, rows in (("Teacher size (one backbone, the same data and steps)",
                         (REWARD_ROWS[0], *TEACHER_ROWS)),
                        ("Student size, no reasoning (one backbone, the same data and steps)", STUDENT_ROWS)):
        lines = [f"**{title}**", "", header, rule]
        for stage, label in rows:
            metrics = _load(out / stage / "metrics.json")
            if metrics is None:
                continue
            accuracies[stage] = metrics["preference_accuracy"]
            per_dimension = metrics.get("per_dimension") or {}
            lines.append(f"| {label} | {_fmt(metrics['preference_accuracy'])} | {_interval(intervals.get(stage))} | "
                         + " | ".join(_fmt(per_dimension.get(d)) for d in DIMENSIONS)
                         + f" | {metrics['steps']} steps, {metrics['train_seconds']:.0f} s |")
        blocks.append("\n".join(lines))
    lines = ["| ceiling | overall | 95% CI | " + " | ".join(d.replace("_", " ") for d in DIMENSIONS) + " | |", rule]
    for key, label in (("oracle", "the oracle vs the panel"), ("single_annotator", "one annotator vs the rest")):
        lines.append(f"| {label} | {_fmt(ceiling['overall'][key])} | – | "
                     + " | ".join(_fmt(ceiling[d][key]) for d in DIMENSIONS) + " | – |")
    blocks.append("\n".join(lines))
    return "\n\n".join(blocks), accuracies


def distribution_table(out: Path) -> str:
    lines = ["| reward model | NLL ↓ | EMD ↓ | ECE ↓ | pairwise ECE ↓ | Spearman within prompt ↑ |",
             "|---|---|---|---|---|---|"]
    for stage, label in REWARD_ROWS:
        report = (_load(out / stage / "metrics.json") or {}).get("report")
        if not report or "nll" not in report.get(DIMENSIONS[0], {}):
            continue

        def mean(getter, report=report):
            return float(np.mean([getter(report[d]) for d in DIMENSIONS]))

        lines.append(f"| {label} | {_fmt(mean(lambda r: r['nll']))} | {_fmt(mean(lambda r: r['emd']))} | "
                     f"{_fmt(mean(lambda r: r['ece']['ece']))} | {_fmt(mean(lambda r: r['pairwise_ece']['ece']))} | "
                     f"{_fmt(report['overall']['correlations']['group_spearman'])} |")
    return "\n".join(lines)


def tuning_table(out: Path) -> tuple[str, dict]:
    draft, gsb = _load(out / "draft" / "metrics.json"), _load(out / "gsb.json")
    if draft is None or gsb is None:
        return "(the tuning stages did not run)", {}
    evaluations = draft["evaluations"]
    first, last = evaluations[0], evaluations[-1]
    tuned = [e for e in evaluations if e["step"] > 0]
    key = "eval_judge_score" if first.get("eval_judge_score") is not None else "eval_expected_score"
    best = max(tuned, key=lambda e: e[key]) if tuned else last  # the step whose LoRA `best_lora` holds
    lines = [f"| measure, validation prompts | base | best step ({best['step']}: the LoRA kept) | last step "
             f"({last['step']}) |", "|---|---|---|---|",
             f"| student's expected score μ (the reward) | {_fmt(first['eval_expected_score'])} | "
             f"{_fmt(best['eval_expected_score'])} | {_fmt(last['eval_expected_score'])} |",
             f"| oracle's score | {_fmt(first.get('eval_judge_score'))} | {_fmt(best.get('eval_judge_score'))} | "
             f"{_fmt(last.get('eval_judge_score'))} |",
             "",
             "| oracle GSB, tuned vs base, test prompts | good | same | bad | net (G − B)/(G + S + B) | "
             "95% bootstrap CI |",
             "|---|---|---|---|---|---|",
             f"| {gsb['num_judgements']} images (prompts disjoint from validation × seeds) | {gsb['good']:.3f} | "
             f"{gsb['same']:.3f} | {gsb['bad']:.3f} | **{gsb['net']:+.3f}** | "
             f"[{gsb['net_lower']:+.3f}, {gsb['net_upper']:+.3f}] |"]
    return "\n".join(lines), gsb


def orderings(accuracies: dict, intervals: dict, gsb: dict) -> list[tuple[str, str, str]]:
    """The paper's three claims against this run: `(claim, "holds" / "does not hold" / "not measured", evidence)`.
    A claim holds on the point estimates; the evidence says whether the 95% intervals separate."""
    def acc(stage):
        return accuracies.get(stage)

    def vs(a, b):
        if a not in intervals or b not in intervals:
            return ""
        apart = intervals[a]["lower"] > intervals[b]["upper"] or intervals[b]["lower"] > intervals[a]["upper"]
        return "" if apart else " (intervals overlap)"

    claims = []
    rivals = [s for s in ("sft_only", "teacher_grpo", "bradley_terry", "rewarddance") if acc(s) is not None]
    if acc("teacher_gdso") is None or not rivals:
        claims.append(("GDSO above SFT, GRPO and the scalar baselines", "not measured", "–"))
    else:
        beaten = [s for s in rivals if acc("teacher_gdso") > acc(s)]
        evidence = f"GDSO {_fmt(acc('teacher_gdso'))} against " + ", ".join(
            f"{NAMES[s]} {_fmt(acc(s))}{vs('teacher_gdso', s)}" for s in rivals)
        claims.append(("GDSO above SFT, GRPO and the scalar baselines",
                       "holds" if len(beaten) == len(rivals) else "does not hold", evidence))
    if acc("student_risd") is None or acc("teacher_gdso") is None or acc("student_opd") is None:
        claims.append(("the RISD student within 2 points of its teacher and above OPD", "not measured", "–"))
    else:
        gap = acc("teacher_gdso") - acc("student_risd")
        holds = gap <= 0.02 and acc("student_risd") > acc("student_opd")
        claims.append(("the RISD student within 2 points of its teacher and above OPD",
                       "holds" if holds else "does not hold",
                       f"RISD {_fmt(acc('student_risd'))}, its teacher {_fmt(acc('teacher_gdso'))} (gap "
                       f"{100 * gap:+.1f} points), OPD {_fmt(acc('student_opd'))}{vs('student_risd', 'student_opd')}"))
    if not gsb:
        claims.append(("reward tuning with the student judged better by the oracle", "not measured", "–"))
    else:
        verdict = "holds" if gsb["net_lower"] > 0 else "does not hold"
        claims.append(("reward tuning with the student judged better by the oracle", verdict,
                       f"GSB net {gsb['net']:+.3f}, 95% CI [{gsb['net_lower']:+.3f}, {gsb['net_upper']:+.3f}] "
                       f"(holds only if the interval is above 0)"))
    return claims


def orderings_table(claims: list[tuple[str, str, str]]) -> str:
    lines = ["| claim | this run | evidence |", "|---|---|---|"]
    lines += [f"| {claim} | **{verdict}** | {evidence} |" for claim, verdict, evidence in claims]
    return "\n".join(lines)


def timing_table(timings: dict) -> str:
    lines = ["| stage | wall time |", "|---|---|"]
    for name, seconds in timings.items():
        lines.append(f"| {name} | {seconds / 60:.1f} min |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- figures
def _student_and_held_out_items(out: Path, count: int):
    """`(the run's RISD student, one held-out item from each of the first `count` groups)`, or None before RISD."""
    from zreward_diffusers import ZRewardLoss

    model = out / "student_risd" / "model"
    if not model.exists():
        return None
    world, start = held_out_world()
    items = [group.items[i % len(group.items)] for i, group in enumerate(world.groups(count, start=start))]
    return ZRewardLoss.from_pretrained(model), items


def samples_figure(out: Path, path: Path, count: int) -> Path | None:
    """Held-out images, each with the student's predicted distribution per dimension next to the panel's histogram."""
    import torch

    loaded = _student_and_held_out_items(out, count)
    if loaded is None:
        return None
    loss_fn, items = loaded
    images = torch.from_numpy(np.stack([item.image for item in items])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        scores = loss_fn.score(images, [item.prompt for item in items])
    levels = np.asarray(loss_fn.rubric.levels, dtype=float)
    plt = _plt()
    figure, axes = plt.subplots(count, len(DIMENSIONS) + 1, figsize=(2.3 * (len(DIMENSIONS) + 1), 1.9 * count),
                                dpi=100, gridspec_kw={"width_ratios": [1.1] + [1.6] * len(DIMENSIONS)})
    axes = np.atleast_2d(axes)
    for row, item in enumerate(items):
        axes[row, 0].imshow(item.image, interpolation="nearest")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        words = item.prompt.split()
        axes[row, 0].set_title("\n".join(" ".join(words[i:i + 4]) for i in range(0, len(words), 4)), fontsize=6.5)
        for d, dimension in enumerate(DIMENSIONS):
            axis = axes[row, d + 1]
            panel = np.asarray(item.histograms[d], dtype=float)
            panel = panel / panel.sum()
            predicted = scores.probs[row, scores.dimensions.index(dimension)].numpy()
            axis.bar(levels - 0.2, panel, width=0.4, color="0.6", label="panel")
            axis.bar(levels + 0.2, predicted, width=0.4, color="C0", label="student")
            axis.set_ylim(0, 1)
            axis.set_xticks(levels)
            axis.tick_params(labelsize=6)
            axis.set_title(f"{dimension.replace('_', ' ')}: label {item.labels[dimension]:.1f}, "
                           f"μ {float(scores.expected[row, scores.dimensions.index(dimension)]):.2f}", fontsize=7)
            if row == 0 and d == 0:
                axis.legend(fontsize=6, loc="upper left")
    figure.suptitle("Held-out images: the RISD student's score distribution (blue) vs the annotator panel's "
                    "histogram (grey), per rubric dimension", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def attribution_map_figure(out: Path, path: Path, count: int) -> Path | None:
    """Held-out images with the RISD student's ∂E[score_d]/∂pixels per dimension (`zreward_diffusers.attribution`)."""
    import torch

    from zreward_diffusers.attribution import attribution_figure, attribution_maps

    loaded = _student_and_held_out_items(out, count)
    if loaded is None:
        return None
    loss_fn, items = loaded
    images = torch.from_numpy(np.stack([item.image for item in items])).permute(0, 3, 1, 2).float() / 255
    prompts = [item.prompt for item in items]
    attribution = attribution_maps(loss_fn, images, prompts)
    return attribution_figure(images, attribution, prompts, path, title="Where the RISD student looks: "
                              "|∂E[score_d]/∂pixels| per dimension, each map scaled to its maximum")


def curves_figure(out: Path, path: Path) -> Path:
    plt = _plt()
    figure, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=100)
    axes = axes.ravel()

    axis = axes[0]
    for stage, name in (("base_teacher", "teacher"), ("base_student", "student")):
        metrics = (_load(out / stage / "metrics.json") or {}).get(name)
        if metrics and metrics.get("loss_curve"):
            steps, losses = zip(*metrics["loss_curve"], strict=True)
            axis.plot(steps, losses, label=f"{name}-size base")
    axis.set_title("1. base VLMs: describing the world's images", fontsize=9)
    axis.set_ylabel("answer cross-entropy")

    def history_plot(axis, stage, keys, title, ylabel):
        metrics = _load(out / stage / "metrics.json")
        if not metrics:
            return
        history = metrics.get("history") or []
        for key, label in keys:
            values = [h[key] for h in history if key in h]
            if values:
                window = max(1, min(10, len(values) // 10))
                axis.plot(np.arange(len(_smooth(values, window))) + window, _smooth(values, window), label=label)
        axis.set_title(title, fontsize=9)
        axis.set_ylabel(ylabel)

    history_plot(axes[1], "teacher_sft", [("ce", "rationale CE"), ("kl", "score-slot KL")],
                 "2. teacher cold start (SFT)", "loss")
    history_plot(axes[2], "teacher_gdso", [("expected_abs_error", "|E[s] − label|"),
                                           ("expected_rollout_std", "std of E[s] over rollouts")],
                 "3. teacher GDSO (training groups)", "score points")
    history_plot(axes[3], "student_risd", [("distill", "KL to the teacher"), ("human", "KL to the panel")],
                 "4. student RISD", "loss")
    generator = _load(out / "generator" / "metrics.json")
    if generator and generator.get("unet_loss_curve"):
        for key, label in (("vae_loss_curve", "VAE reconstruction"), ("unet_loss_curve", "UNet ε-prediction")):
            steps, losses = zip(*generator[key], strict=True)
            axes[4].plot(steps, losses, label=label)
    axes[4].set_title("5. tiny generator", fontsize=9)
    axes[4].set_ylabel("loss")
    draft = _load(out / "draft" / "metrics.json")
    if draft:
        evaluations = draft["evaluations"]
        steps = [e["step"] for e in evaluations]
        axes[5].plot(steps, [e["eval_expected_score"] for e in evaluations], marker="o", label="student μ (reward)")
        if evaluations[0].get("eval_judge_score") is not None:
            axes[5].plot(steps, [e["eval_judge_score"] for e in evaluations], marker="s", label="oracle score")
    axes[5].set_title("6. DRaFT LoRA tuning: held-out prompts", fontsize=9)
    axes[5].set_ylabel("score (rubric scale 1-5)")
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
        elif axis in (axes[0], axes[4]):  # the shipped bases: trained by `make world-bases`, not by this run
            axis.text(0.5, 0.5, "shipped in world/\n(not trained by this run)", ha="center", va="center",
                      transform=axis.transAxes, fontsize=9, color="0.4")
    figure.suptitle("Training curves of every demo stage (moving averages)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def accuracy_figure(accuracies: dict, intervals: dict, ceiling: dict, path: Path) -> Path:
    plt = _plt()
    names = [stage for stage, _ in REWARD_ROWS if stage in accuracies]
    student = {stage for stage, _ in STUDENT_ROWS}
    ours = {"teacher_gdso", "student_risd"}
    figure, axis = plt.subplots(figsize=(10, 3.8), dpi=110)
    x = np.arange(len(names)) + np.array([0.6 if name in student else 0.0 for name in names])
    colours = ["C0" if name in ours else "0.6" for name in names]
    values = np.array([accuracies[n] for n in names])
    errors = np.array([[values[i] - intervals[n]["lower"], intervals[n]["upper"] - values[i]] if n in intervals
                       else [0.0, 0.0] for i, n in enumerate(names)]).T
    axis.bar(x, values, color=colours, yerr=errors, capsize=3, error_kw={"linewidth": 0.8})
    for xi, value in zip(x, values, strict=True):
        axis.text(xi, 0.41, f"{value:.3f}", ha="center", fontsize=7, color="white")
    axis.set_xticks(x, [SHORT_LABELS[n] for n in names], fontsize=8)
    axis.axhline(0.5, color="black", linewidth=0.8, linestyle=":", label="chance")
    axis.axhline(ceiling["overall"]["single_annotator"], color="C3", linestyle="--", linewidth=1,
                 label="one annotator (human ceiling)")
    axis.axhline(ceiling["overall"]["oracle"], color="C2", linestyle="--", linewidth=1, label="oracle")
    if any(n in student for n in names) and any(n not in student for n in names):
        split = (x[[n not in student for n in names]].max() + x[[n in student for n in names]].min()) / 2
        axis.axvline(split, color="0.3", linewidth=0.6)
        axis.text(split - 0.1, 0.97, "teacher size", ha="right", va="top", fontsize=8)
        axis.text(split + 0.1, 0.97, "student size", ha="left", va="top", fontsize=8)
    axis.set_ylim(0.4, 1.0)
    axis.set_ylabel("held-out preference accuracy")
    axis.set_title("Reward models on held-out prompt groups, 95% bootstrap intervals (blue: ours, grey: baselines)",
                   fontsize=10)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------------- report
def write_report(out: Path, profile: str, timings: dict, settings: dict, world_dir: Path | None = None) -> dict:
    """Write `<out>/report.md` and the figures (`world_dir`: where the shipped bases came from, for their table);
    returns `{"summary": str, "figures": {...}, "numbers": {...}}`."""
    from zreward_diffusers.evaluation import reliability_diagram
    from zreward_diffusers.synthetic.ceiling import human_ceiling

    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    world, start = held_out_world()
    ceiling = human_ceiling(world.groups(settings["eval_groups"], start=start))
    intervals = accuracy_intervals(out, settings["eval_groups"])
    rewards, accuracies = reward_table(out, ceiling, intervals)
    tuning, gsb = tuning_table(out)
    claims = orderings(accuracies, intervals, gsb)
    paths = {"training_curves": curves_figure(out, figures / "training_curves.png"),
             "preference_accuracy": accuracy_figure(accuracies, intervals, ceiling,
                                                    figures / "preference_accuracy.png")}
    samples = samples_figure(out, figures / "samples.png", settings["samples"])
    if samples:
        paths["samples"] = samples
    attribution = attribution_map_figure(out, figures / "attribution.png", settings["samples"])
    if attribution:
        paths["attribution"] = attribution
    student = _load(out / "student_risd" / "metrics.json")
    if student and student.get("report"):
        paths["reliability"] = reliability_diagram(
            student["report"], list(DIMENSIONS), figures / "reliability.png",
            "RISD student, held-out images: is its top level right as often as it is confident?")
    for name in ("before_after", "contact_sheet"):
        if (figures / f"{name}.png").exists():
            paths[name] = figures / f"{name}.png"

    def figure(name: str, caption: str) -> str:
        return f"![{caption}](figures/{name}.png)\n\n*{caption}*\n" if name in paths else ""

    text = f"""# Z-Reward demo report (profile `{profile}`)

The whole method in miniature on the synthetic world (docs/design.md, 'The synthetic world'): base VLMs → teacher
(cold-start SFT, then GDSO) → student (RISD) → DRaFT LoRA tuning of a tiny Stable Diffusion pipeline with the student
as the reward → judged by the world's oracle. Every number below was measured by this run; the stages' configs are in
`configs/`, their logs in `logs/`. Held-out preference accuracy: pairs of images of the same prompt, the panel's
majority preference, ties excluded, predicted ties count ½ ({settings['eval_groups']} held-out prompt groups).

## The data
{figure("contact_sheet", "Sample images of the synthetic world with their prompts and the panel's histograms.")}
## Base models (they describe the world's held-out images: accuracy of the answer)
{base_table(out, world_dir)}

## The paper's three orderings, as this run measured them
{orderings_table(claims)}

## Reward models: held-out pairwise preference accuracy
{rewards}

{figure("preference_accuracy", "Held-out preference accuracy of each reward model, chance and the human ceiling.")}
## Score distributions against the panel's histograms (held-out images, mean over dimensions)
{distribution_table(out)}

{figure("samples", "The RISD student's predicted score distributions next to the panel's histograms.")}
{figure("reliability", "Reliability diagram of the RISD student (equal-mass bins).")}
{figure("attribution", "Which pixels the RISD student wants changed: the gradient of each expected score.")}
## Reward tuning: DRaFT-1 LoRA with the student, judged by the oracle
{tuning}

{figure("before_after", "Held-out prompts, same seeds: base (top) and tuned (bottom), the oracle's verdict below.")}
## Training curves
{figure("training_curves", "Training curves of every stage.")}
## Stage wall times (this machine, stages in two parallel lanes)
{timing_table(timings)}
"""
    (out / "report.md").write_text(text)
    summary = "demo summary: " + "; ".join(
        f"{name} {_fmt(accuracies.get(stage))}" for stage, name in
        (("teacher_gdso", "GDSO"), ("sft_only", "SFT only"), ("teacher_grpo", "GRPO"), ("bradley_terry", "BT"),
         ("rewarddance", "RewardDance"), ("student_risd", "RISD"), ("student_opd", "OPD"), ("direct", "labels only"))
    ) + " (held-out preference accuracy); DRaFT GSB net {} [{}, {}]; orderings: {}".format(
        _fmt(gsb.get("net")), _fmt(gsb.get("net_lower")), _fmt(gsb.get("net_upper")),
        ", ".join(f"({i}) {verdict}" for i, (_, verdict, _) in enumerate(claims, 1)))
    numbers = {"accuracy": accuracies, "accuracy_ci": intervals, "orderings": [
                   {"claim": claim, "verdict": verdict, "evidence": evidence} for claim, verdict, evidence in claims],
               "ceiling": {k: ceiling["overall"][k] for k in ("oracle", "single_annotator")},
               "gsb": {k: gsb[k] for k in ("good", "same", "bad", "net", "net_lower", "net_upper")} if gsb else {},
               "timings": timings}
    (out / "report.json").write_text(json.dumps(numbers, indent=2))
    return {"summary": summary, "figures": {k: str(v) for k, v in paths.items()}, "numbers": numbers}
