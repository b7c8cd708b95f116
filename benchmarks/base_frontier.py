"""Accuracy on unseen images against pretraining time, for the base-model configs measured so far (issue 3).

    python -m benchmarks.base_frontier --out benchmarks/figures/base_frontier.png

Reads `benchmarks/base_models_frontier.csv`: one row per run and model, with the minutes both bases took on this
machine (2 CPU cores) and their colour / shape / count accuracy on the 2,048 images of world groups from 1,000,000
and 2,000,000, which no run trained on (`benchmarks/base_models.py`; each row names its JSON). Plots each model's
lowest of the three against the minutes, with the 95% goal, for every run and, in a second panel, for those under 25
minutes; the bars are the binomial 95% interval of an accuracy over 2,048 images (about ±0.009 at 0.95).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TABLE = Path(__file__).resolve().parent / "base_models_frontier.csv"
ATTRIBUTES = ("colour", "shape", "count")
GOAL = 0.95
CLOSE = 25.0  # minutes: the right panel's runs
IMAGES = 2048  # unseen images behind each accuracy: the bars are 95% binomial intervals over them


def read_rows(path: Path) -> list[dict]:
    """The table's rows, numbers parsed; a row missing a column or with a bad number names its line."""
    rows = []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                row["minutes"] = float(row["minutes"])
                for name in ATTRIBUTES:
                    row[name] = float(row[name])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}, line {line}: {error}") from error
            rows.append(row)
    return rows


def label_runs(axis, rows: list[dict], shift: float) -> None:
    """Name each run once, beside its student's point (its teacher's if it has none), by the short name before its
    ":" (the shipped run in bold); a label that would cover an earlier one moves down until it does not."""
    figure = axis.figure
    figure.canvas.draw()  # fixes the axes' limits, so data map to pixels
    placed: list[tuple[float, float, float, float]] = []  # pixel boxes: left, bottom, right, top
    points = {}
    for row in rows:
        if row["run"] not in points or row["model"] == "student":
            points[row["run"]] = (row["minutes"] + (shift if row["model"] == "student" else -shift),
                                  min(row[name] for name in ATTRIBUTES))
    scale = figure.dpi / 72  # pixels per point
    for run, (x, y) in sorted(points.items(), key=lambda item: item[1]):
        name = run.split(":")[0]
        px, py = axis.transData.transform((x, y))
        width, height, offset = 5.2 * len(name) * scale, 10 * scale, -3.0
        while True:
            left, bottom = px + 8 * scale, py + (offset - 4) * scale
            box = (left, bottom, left + width, bottom + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
            offset -= 10
        placed.append(box)
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(8, offset), fontsize=8,
                      fontweight="bold" if "shipped" in run else "normal", zorder=4,
                      bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85),
                      arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.5) if offset < -3 else None)


def draw(axis, rows: list[dict], shift: float, xlim: tuple[float, float], ylim: tuple[float, float],
         label_from: float = 0.0) -> None:
    """Each model's lowest accuracy against the minutes, teacher and student `shift` minutes apart to show both
    bars, on `rows` whose minutes fall in `xlim`; runs of `label_from` minutes or more are named."""
    rows = [row for row in rows if xlim[0] <= row["minutes"] <= xlim[1]]
    for model, marker, side in (("teacher", "s", -1), ("student", "o", 1)):
        points = [(row["minutes"], min(row[name] for name in ATTRIBUTES)) for row in rows if row["model"] == model]
        lowest = np.array([p[1] for p in points])
        axis.errorbar([p[0] + side * shift for p in points], lowest,
                      yerr=1.96 * np.sqrt(lowest * (1 - lowest) / IMAGES), fmt=marker, markersize=6, capsize=3,
                      label=model, zorder=3, color=f"C{(side + 1) // 2}")
    axis.set_xlim(*xlim)
    axis.set_ylim(*ylim)
    label_runs(axis, [row for row in rows if row["minutes"] >= label_from], shift)
    axis.axhline(GOAL, color="grey", linestyle="--", linewidth=1)
    axis.text(axis.get_xlim()[1], GOAL, "goal: 95% ", ha="right", va="bottom", fontsize=8, color="grey")
    axis.set_xlabel("pretraining both bases, minutes (2 CPU cores)")
    axis.grid(alpha=0.3)


def plot(rows: list[dict], out: Path) -> None:
    """All runs on the left; on the right, a closer look at the runs under 25 minutes."""
    figure, (whole, close) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw=dict(width_ratios=[1.2, 1]))
    minutes = [row["minutes"] for row in rows]
    draw(whole, rows, 0.4, (min(minutes) - 3, max(minutes) + 12), (0.925, 0.98), label_from=CLOSE)  # room for labels
    draw(close, rows, 0.06, (min(minutes) - 0.6, CLOSE), (0.94, 0.975))
    whole.set_ylabel("lowest of colour / shape / count\non 2,048 unseen images")
    whole.set_title("every measured config")
    close.set_title(f"under {CLOSE:.0f} minutes (named here only)")
    whole.legend(loc="upper left")
    figure.suptitle("Base models: accuracy on unseen images against pretraining time")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    recorded = parser.add_argument_group("Input")
    output = parser.add_argument_group("Output")
    recorded.add_argument("--table", type=Path, default=TABLE)
    output.add_argument("--out", type=Path, default=Path("benchmarks/figures/base_frontier.png"))
    args = parser.parse_args(argv)
    plot(read_rows(args.table), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
