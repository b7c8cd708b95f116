"""Accuracy on unseen images against pretraining time, for the base-model configs measured so far (issue 3).

    python benchmarks/base_frontier.py --out benchmarks/figures/base_frontier.png

Reads `benchmarks/base_models_frontier.csv`: one row per run and model, with the minutes both bases took on this
machine (2 CPU cores) and their colour / shape / count accuracy on the 2,048 images of world groups from 1,000,000
and 2,000,000, which no run trained on (`benchmarks/base_models.py`; each row names its JSON). Plots each model's
lowest of the three against the minutes, with the 95% goal; the bars are the binomial 95% interval of an accuracy
over 2,048 images (about ±0.009 at 0.95).
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


def plot(rows: list[dict], out: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for model, marker, shift in (("teacher", "s", -0.4), ("student", "o", 0.4)):  # shifted apart to show both bars
        points = [(row["minutes"], min(row[name] for name in ATTRIBUTES), row["run"]) for row in rows
                  if row["model"] == model]
        lowest = np.array([p[1] for p in points])
        axis.errorbar([p[0] + shift for p in points], lowest, yerr=1.96 * np.sqrt(lowest * (1 - lowest) / IMAGES),
                      fmt=marker, markersize=7, capsize=3, label=model, zorder=3)
        if model == "student":
            for minutes, lowest, run in points:
                axis.annotate(run, (minutes + shift, lowest), textcoords="offset points", xytext=(8, -3), fontsize=8)
    minutes = [row["minutes"] for row in rows]
    axis.set_xlim(min(minutes) - 3, max(minutes) + 12)  # room for the labels
    axis.margins(y=0.12)
    axis.axhline(GOAL, color="grey", linestyle="--", linewidth=1)
    axis.text(axis.get_xlim()[1], GOAL, "goal: 95% ", ha="right", va="bottom", fontsize=8, color="grey")
    axis.set_xlabel("pretraining both bases, minutes (2 CPU cores)")
    axis.set_ylabel("lowest of colour / shape / count\non 2,048 unseen images")
    axis.set_title("Base models: accuracy on unseen images against time")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/figures/base_frontier.png"))
    args = parser.parse_args(argv)
    plot(read_rows(args.table), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
