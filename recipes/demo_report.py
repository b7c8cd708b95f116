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

REWARD_ROWS = (  # (stage, label)
    ("bradley_terry", "baseline: scalar Bradley-Terry (student size)"),
    ("direct", "baseline: student trained on the panel's labels only"),
    ("teacher_sft", "teacher, cold-start SFT (reasons, then scores)"),
    ("teacher_gdso", "teacher, GDSO (reasons, then scores)"),
    ("student_risd", "**student, RISD** (no reasoning: the reward used for tuning)"),
)


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
def base_table(out: Path) -> str:
    lines = ["| base model | parameters | colour | shape | count | background | training |",
             "|---|---|---|---|---|---|---|"]
    for stage, name in (("base_teacher", "teacher"), ("base_student", "student")):
        metrics = (_load(out / stage / "metrics.json") or {}).get(name)
        if metrics is None:
            continue
        accuracy = metrics["held_out_accuracy"]
        lines.append(f"| {name} | {metrics['parameters'] / 1e6:.2f} M | "
                     + " | ".join(_fmt(accuracy.get(task)) for task in ("colour", "shape", "count", "background"))
                     + f" | {metrics['steps']} steps, {metrics['train_seconds']:.0f} s |")
    return "\n".join(lines)


def reward_table(out: Path, ceiling: dict) -> tuple[str, dict]:
    header = "| reward model | overall | " + " | ".join(d.replace("_", " ") for d in DIMENSIONS) + " | training |"
    lines = [header, "|---" * (len(DIMENSIONS) + 3) + "|"]
    accuracies = {}
    for stage, label in REWARD_ROWS:
        metrics = _load(out / stage / "metrics.json")
        if metrics is None:
            continue
        accuracies[stage] = metrics["preference_accuracy"]
        per_dimension = metrics.get("per_dimension") or {}
        lines.append(f"| {label} | {_fmt(metrics['preference_accuracy'])} | "
                     + " | ".join(_fmt(per_dimension.get(d)) for d in DIMENSIONS)
                     + f" | {metrics['steps']} steps, {metrics['train_seconds']:.0f} s |")
    for key, label in (("oracle", "ceiling: the oracle vs the panel"),
                       ("single_annotator", "ceiling: one annotator vs the rest of the panel")):
        lines.append(f"| {label} | {_fmt(ceiling['overall'][key])} | "
                     + " | ".join(_fmt(ceiling[d][key]) for d in DIMENSIONS) + " | – |")
    return "\n".join(lines), accuracies


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
    first, last = draft["evaluations"][0], draft["evaluations"][-1]
    lines = ["| measure | base | tuned |", "|---|---|---|",
             f"| student's expected score μ on held-out prompts | {_fmt(first['eval_expected_score'])} | "
             f"{_fmt(last['eval_expected_score'])} |",
             f"| oracle's score on held-out prompts | {_fmt(first.get('eval_judge_score'))} | "
             f"{_fmt(last.get('eval_judge_score'))} |",
             "",
             "| oracle GSB, tuned vs base | good | same | bad | net (G − B)/(G + S + B) | 95% bootstrap CI |",
             "|---|---|---|---|---|---|",
             f"| {gsb['num_judgements']} images (held-out prompts × seeds) | {gsb['good']:.3f} | {gsb['same']:.3f} | "
             f"{gsb['bad']:.3f} | **{gsb['net']:+.3f}** | [{gsb['net_lower']:+.3f}, {gsb['net_upper']:+.3f}] |"]
    return "\n".join(lines), gsb


def timing_table(timings: dict) -> str:
    lines = ["| stage | wall time |", "|---|---|"]
    for name, seconds in timings.items():
        lines.append(f"| {name} | {seconds / 60:.1f} min |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- figures
def samples_figure(out: Path, path: Path, count: int) -> Path | None:
    """Held-out images, each with the student's predicted distribution per dimension next to the panel's histogram."""
    import torch

    from zreward_diffusers import ZRewardLoss

    model = out / "student_risd" / "model"
    if not model.exists():
        return None
    loss_fn = ZRewardLoss.from_pretrained(model)
    world, start = held_out_world()
    items = [group.items[i % len(group.items)] for i, group in enumerate(world.groups(count, start=start))]
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
    figure.suptitle("Training curves of every demo stage (moving averages)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def accuracy_figure(accuracies: dict, ceiling: dict, path: Path) -> Path:
    plt = _plt()
    labels = {"bradley_terry": "Bradley-Terry\n(scalar)", "direct": "student on\nlabels only",
              "teacher_sft": "teacher\nSFT", "teacher_gdso": "teacher\nGDSO", "student_risd": "student\nRISD"}
    names = [name for name in labels if name in accuracies]
    figure, axis = plt.subplots(figsize=(8.5, 3.6), dpi=110)
    colours = ["0.6" if name in ("bradley_terry", "direct") else "C0" for name in names]
    bars = axis.bar([labels[n] for n in names], [accuracies[n] for n in names], color=colours)
    for bar, name in zip(bars, names, strict=True):
        axis.text(bar.get_x() + bar.get_width() / 2, accuracies[name] + 0.005, f"{accuracies[name]:.3f}",
                  ha="center", fontsize=8)
    axis.axhline(0.5, color="black", linewidth=0.8, linestyle=":", label="chance")
    axis.axhline(ceiling["overall"]["single_annotator"], color="C3", linestyle="--", linewidth=1,
                 label="one annotator (human ceiling)")
    axis.axhline(ceiling["overall"]["oracle"], color="C2", linestyle="--", linewidth=1, label="oracle")
    axis.set_ylim(0.4, 1.0)
    axis.set_ylabel("held-out preference accuracy")
    axis.set_title("Reward models on held-out prompt groups (grey: baselines)", fontsize=10)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------------- report
def write_report(out: Path, profile: str, timings: dict, settings: dict) -> dict:
    """Write `<out>/report.md` and the figures; returns `{"summary": str, "figures": {...}, "numbers": {...}}`."""
    from zreward_diffusers.evaluation import reliability_diagram
    from zreward_diffusers.synthetic.ceiling import human_ceiling

    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    world, start = held_out_world()
    ceiling = human_ceiling(world.groups(settings["eval_groups"], start=start))
    rewards, accuracies = reward_table(out, ceiling)
    tuning, gsb = tuning_table(out)
    paths = {"training_curves": curves_figure(out, figures / "training_curves.png"),
             "preference_accuracy": accuracy_figure(accuracies, ceiling, figures / "preference_accuracy.png")}
    samples = samples_figure(out, figures / "samples.png", settings["samples"])
    if samples:
        paths["samples"] = samples
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
{base_table(out)}

## Reward models: held-out pairwise preference accuracy
{rewards}

{figure("preference_accuracy", "Held-out preference accuracy of each reward model, chance and the human ceiling.")}
## Score distributions against the panel's histograms (held-out images, mean over dimensions)
{distribution_table(out)}

{figure("samples", "The RISD student's predicted score distributions next to the panel's histograms.")}
{figure("reliability", "Reliability diagram of the RISD student (equal-mass bins).")}
## Reward tuning: DRaFT-1 LoRA with the student, judged by the oracle
{tuning}

{figure("before_after", "Held-out prompts, same seeds: base (top) and tuned (bottom), the oracle's verdict below.")}
## Training curves
{figure("training_curves", "Training curves of every stage.")}
## Stage wall times (this machine, stages in two parallel lanes)
{timing_table(timings)}
"""
    (out / "report.md").write_text(text)
    student_acc = accuracies.get("student_risd")
    summary = ("demo summary: teacher SFT {} -> GDSO {}; student RISD {} (baselines: Bradley-Terry {}, labels only {};"
               " one annotator {}); DRaFT GSB net {} [{}, {}]").format(
        _fmt(accuracies.get("teacher_sft")), _fmt(accuracies.get("teacher_gdso")), _fmt(student_acc),
        _fmt(accuracies.get("bradley_terry")), _fmt(accuracies.get("direct")),
        _fmt(ceiling["overall"]["single_annotator"]), _fmt(gsb.get("net")), _fmt(gsb.get("net_lower")),
        _fmt(gsb.get("net_upper")))
    numbers = {"accuracy": accuracies, "ceiling": {k: ceiling["overall"][k] for k in ("oracle", "single_annotator")},
               "gsb": {k: gsb[k] for k in ("good", "same", "bad", "net", "net_lower", "net_upper")} if gsb else {},
               "timings": timings}
    (out / "report.json").write_text(json.dumps(numbers, indent=2))
    return {"summary": summary, "figures": {k: str(v) for k, v in paths.items()}, "numbers": numbers}
