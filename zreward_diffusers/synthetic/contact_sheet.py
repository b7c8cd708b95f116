"""A contact sheet of the world: sample images with their prompts and the panel's score histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..optional import import_optional
from .annotators import LEVELS
from .oracle import DIMENSIONS
from .world import SyntheticItem

_SHORT = {"alignment": "align", "aesthetics": "aesth", "realism": "real", "physical_plausibility": "phys"}


def contact_sheet(items: list[SyntheticItem], path: str | Path, columns: int = 4) -> Path:
    """Draw `items` (image, prompt, per-dimension panel histogram and consensus label) into a PNG at `path`."""
    import_optional("matplotlib").use("Agg")
    plt = import_optional("matplotlib.pyplot")

    rows = -(-len(items) // columns)
    figure = plt.figure(figsize=(4.2 * columns, 2.5 * rows), dpi=110)
    grid = figure.add_gridspec(rows, 2 * columns, width_ratios=[1.0, 1.25] * columns, hspace=0.75, wspace=0.35)
    for index, item in enumerate(items):
        row, column = divmod(index, columns)
        axis_image = figure.add_subplot(grid[row, 2 * column])
        axis_image.imshow(item.image, interpolation="nearest")
        axis_image.set_xticks([])
        axis_image.set_yticks([])
        axis_image.set_title(_wrap(item.prompt, 26), fontsize=7.5, loc="left")
        axis_hist = figure.add_subplot(grid[row, 2 * column + 1])
        counts = item.histograms / item.histograms.sum(axis=1, keepdims=True)  # (D, K)
        for d, dimension in enumerate(DIMENSIONS):
            axis_hist.scatter(LEVELS, np.full(len(LEVELS), d), s=counts[d] * 140, color=f"C{d}", alpha=0.8)
            axis_hist.text(5.35, d, f"{item.labels[dimension]:.1f}", va="center", fontsize=7)
        axis_hist.set_yticks(range(len(DIMENSIONS)), [_SHORT[d] for d in DIMENSIONS], fontsize=7)
        axis_hist.set_xticks([1, 2, 3, 4, 5], ["1", "2", "3", "4", "5"], fontsize=7)
        axis_hist.set_xlim(0.7, 5.8)
        axis_hist.set_ylim(-0.6, len(DIMENSIONS) - 0.4)
        axis_hist.invert_yaxis()
        axis_hist.grid(axis="x", alpha=0.3)
        if row == 0:
            axis_hist.set_title("panel votes → label", fontsize=7.5)
    figure.suptitle(
        "Synthetic world: images, prompts, the annotator panel's votes per level (dot size) and the consensus label",
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
