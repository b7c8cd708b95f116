"""How well does the oracle judge images from their pixels alone (`zreward_diffusers.synthetic.estimator`)?

    python -m benchmarks.oracle_judge [--num-items 2000] [--quick] [--out runs/benchmarks/oracle_judge.json]

On `SyntheticWorld(seed=123).generate(N)` (each item carries its true scene and true oracle scores) we compare
`estimate_scene(item.image)` with `item.scene` and `judge(item.image, item.prompt)` with `item.oracle`, under three
conditions:

- **56 px**: the world's images as rendered (56x56; all the world's degradations included);
- **128 px**: the same world rendered at 128x128 (`WorldConfig(image_size=128)`);
- **degraded**: the 56 px images blurred again (gaussian sigma 1 px) and given gaussian noise (sigma 8 levels),
  rounded and clipped, roughly what a small diffusion generator trained on the world produces. The image then no
  longer matches `item.scene` for blur and noise, so for the continuous errors and the realism score a second,
  "adjusted" truth is reported too: the scene with blur sqrt(blur^2 + 1) and noise sqrt((0.28 noise)^2 + 8^2)
  (the extra blur divides the original white noise by 2 sqrt(pi) sigma = 3.5). Its JPEG blocks are blurred away
  too; the adjusted truth keeps the compression.

Reported per condition: accuracy of each attribute the oracle reads (count exact, object colour, shape, background,
sun side, shadow state consistent/wrong/none, number of floating objects, overlap, and colour cast / crop / cut
objects as present-or-not); mean absolute error of blur sigma (px at 56 px), noise sigma (8-bit levels) and
compression strength; per rubric dimension the MAE between judge and true oracle scores, their Spearman
correlation, and the pairwise agreement within prompt groups (items of one `group_id`, pairs whose true scores
differ by >= 0.25; a pair agrees when the judge orders it the same way, a judge tie counts one half); and the time
per image of `estimate_scene` (median of repeats, `time.perf_counter`) with the CPU stall share from Linux PSI
(`/proc/pressure/cpu`) during the timing, since the machine may be shared.

Nothing here asserts anything; the numbers go in the estimator's docstring and README.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from zreward_diffusers.synthetic import SyntheticWorld, WorldConfig
from zreward_diffusers.synthetic.estimator import estimate_scene, parse_prompt
from zreward_diffusers.synthetic.oracle import DIMENSIONS, oracle_scores

ATTRIBUTES = ("count", "colour", "shape", "background", "light", "shadows", "floating", "overlap")
PRESENCE = {"cast": "cast_strength", "crop": "crop", "cut": "cut_objects"}
CONTINUOUS = ("blur", "noise", "compression")
EXTRA_BLUR, EXTRA_NOISE = 1.0, 8.0


def _cpu_stall() -> float | None:
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Extra gaussian blur (sigma 1 px at 56 px, scaled with the size) and gaussian noise (sigma 8 levels)."""
    sigma = EXTRA_BLUR * image.shape[0] / 56
    out = gaussian_filter(image.astype(np.float64), (sigma, sigma, 0), mode="nearest")
    out += rng.normal(0.0, EXTRA_NOISE, size=image.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def adjusted_scene(scene):
    """The scene a degraded image shows: blur and noise combined with the extra ones."""
    scene = copy.deepcopy(scene)
    scene.blur = float(np.hypot(scene.blur, EXTRA_BLUR))
    scene.noise = float(np.hypot(scene.noise / (2 * np.sqrt(np.pi) * EXTRA_BLUR), EXTRA_NOISE))
    return scene


def time_estimates(images: list[np.ndarray], repeats: int) -> dict:
    estimate_scene(images[0])  # warm-up (builds the template table)
    per_image = []
    stall_before, wall_before = _cpu_stall(), time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            estimate_scene(image)
        per_image.append((time.perf_counter() - start) / len(images) * 1e3)
    stall_after, wall = _cpu_stall(), time.perf_counter() - wall_before
    stall = None
    if stall_before is not None and stall_after is not None and wall > 0:
        stall = (stall_after - stall_before) / 1e6 / wall
    return {"ms_per_image": statistics.median(per_image), "ms_per_image_min": min(per_image), "cpu_stall": stall}


def pairwise_agreement(judged: np.ndarray, truth: np.ndarray, groups: list[str], margin: float = 0.25) -> dict:
    by_group = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    agree, pairs, ties = 0.0, 0, 0
    for members in by_group.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, k = members[a], members[b]
                gap = truth[i] - truth[k]
                if abs(gap) < margin:
                    continue
                pairs += 1
                if judged[i] == judged[k]:
                    ties += 1
                    agree += 0.5
                elif np.sign(judged[i] - judged[k]) == np.sign(gap):
                    agree += 1.0
    return {"agreement": agree / pairs if pairs else float("nan"), "pairs": pairs, "judge_ties": ties}


def evaluate(items, images: list[np.ndarray], truths: list | None = None) -> dict:
    """Attribute accuracies, continuous MAEs and score agreement of the estimates for `images` against the items'
    scenes (and, if given, against `truths`: adjusted scenes for the continuous errors and realism)."""
    scenes = [estimate_scene(image) for image in images]
    result: dict = {"n": len(items), "accuracy": {}, "mae": {}, "dimensions": {}}
    for name in ATTRIBUTES:
        result["accuracy"][name] = float(
            np.mean([getattr(e, name) == getattr(i.scene, name) for e, i in zip(scenes, items, strict=True)])
        )
    for name, attribute in PRESENCE.items():
        result["accuracy"][name + " present"] = float(
            np.mean(
                [
                    (getattr(e, attribute) > 0) == (getattr(i.scene, attribute) > 0)
                    for e, i in zip(scenes, items, strict=True)
                ]
            )
        )
    for name in CONTINUOUS:
        result["mae"][name] = float(
            np.mean([abs(getattr(e, name) - getattr(i.scene, name)) for e, i in zip(scenes, items, strict=True)])
        )
        if truths is not None:
            result["mae"][name + " (adjusted)"] = float(
                np.mean([abs(getattr(e, name) - getattr(t, name)) for e, t in zip(scenes, truths, strict=True)])
            )
    judged = np.array(
        [[oracle_scores(e, parse_prompt(i.prompt))[d] for d in DIMENSIONS] for e, i in zip(scenes, items, strict=True)]
    )
    truth = np.array([[i.oracle[d] for d in DIMENSIONS] for i in items])
    groups = [i.group_id for i in items]
    for j, dimension in enumerate(DIMENSIONS):
        row = {
            "mae": float(np.abs(judged[:, j] - truth[:, j]).mean()),
            "spearman": float(spearmanr(judged[:, j], truth[:, j]).statistic),
            **pairwise_agreement(judged[:, j], truth[:, j], groups),
        }
        result["dimensions"][dimension] = row
    if truths is not None:
        adjusted = np.array(
            [[oracle_scores(t, i.spec)[d] for d in DIMENSIONS] for t, i in zip(truths, items, strict=True)]
        )
        for j, dimension in enumerate(DIMENSIONS):
            result["dimensions"][dimension]["mae (adjusted)"] = float(np.abs(judged[:, j] - adjusted[:, j]).mean())
            result["dimensions"][dimension]["spearman (adjusted)"] = float(
                spearmanr(judged[:, j], adjusted[:, j]).statistic
            )
    overall_judged, overall_truth = judged.mean(axis=1), truth.mean(axis=1)
    result["overall"] = {
        "mae": float(np.abs(overall_judged - overall_truth).mean()),
        "spearman": float(spearmanr(overall_judged, overall_truth).statistic),
        **pairwise_agreement(overall_judged, overall_truth, groups),
    }
    return result


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    names = list(results["conditions"])
    lines = ["Attributes (accuracy; blur / noise / compression: mean absolute error)", ""]
    lines.append("| attribute | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    first = results["conditions"][names[0]]
    for key in first["accuracy"]:
        lines.append(f"| {key} | " + " | ".join(_fmt(results["conditions"][c]["accuracy"][key]) for c in names) + " |")
    for key in CONTINUOUS:
        cells = []
        for c in names:
            mae = results["conditions"][c]["mae"]
            cell = _fmt(mae[key], 2)
            if key + " (adjusted)" in mae:
                cell += f" ({_fmt(mae[key + ' (adjusted)'], 2)} adj.)"
            cells.append(cell)
        lines.append(f"| {key} MAE | " + " | ".join(cells) + " |")
    lines += ["", "Judge vs true oracle scores (MAE / Spearman / pairwise agreement within prompt groups)", ""]
    lines.append("| dimension | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for dimension in [*DIMENSIONS, "overall"]:
        cells = []
        for c in names:
            row = results["conditions"][c]["dimensions"].get(dimension) or results["conditions"][c]["overall"]
            cell = f"{_fmt(row['mae'])} / {_fmt(row['spearman'])} / {_fmt(row['agreement'])}"
            if "mae (adjusted)" in row:
                cell += f" (adj. MAE {_fmt(row['mae (adjusted)'])})"
            cells.append(cell)
        lines.append(f"| {dimension} | " + " | ".join(cells) + " |")
    lines += ["", "| condition | ms / image (median) | ms / image (min) | CPU stall |", "|---|---:|---:|---:|"]
    for c in names:
        t = results["conditions"][c]["timing"]
        stall = "—" if t["cpu_stall"] is None else f"{100 * t['cpu_stall']:.0f}%"
        lines.append(f"| {c} | {t['ms_per_image']:.2f} | {t['ms_per_image_min']:.2f} | {stall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measured = parser.add_argument_group("Measurement")
    output = parser.add_argument_group("Output")
    measured.add_argument("--num-items", type=int, default=2000)
    measured.add_argument("--seed", type=int, default=123)
    measured.add_argument("--quick", action="store_true", help="400 items, one timing repeat")
    output.add_argument("--out", default="runs/benchmarks/oracle_judge.json")
    args = parser.parse_args(argv)
    n = 400 if args.quick else args.num_items
    repeats = 1 if args.quick else 3

    items56 = SyntheticWorld(seed=args.seed).generate(n)
    items128 = SyntheticWorld(seed=args.seed, config=WorldConfig(image_size=128)).generate(n)
    rng = np.random.default_rng(0)
    degraded = [degrade(item.image, rng) for item in items56]
    conditions = {
        "56 px": (items56, [item.image for item in items56], None),
        "128 px": (items128, [item.image for item in items128], None),
        "degraded 56 px": (items56, degraded, [adjusted_scene(item.scene) for item in items56]),
    }
    results = {
        "benchmark": "oracle_judge",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "processor": platform.processor(),
        },
        "num_items": n,
        "seed": args.seed,
        "conditions": {},
    }
    for name, (items, images, truths) in conditions.items():
        result = evaluate(items, images, truths)
        result["timing"] = time_estimates(images[: min(len(images), 500)], repeats)
        results["conditions"][name] = result
    table = markdown(results)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
