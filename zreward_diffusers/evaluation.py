"""Score a dataset with a Z-Reward model and report the field's metrics (`zreward eval`).

`score_dataset` runs the model over every record (batched by image size, with a progress bar); `evaluate_dataset`
turns the distributions into the metrics of `metrics.evaluate_scores` against the dataset's labels, histograms and
pair preferences; `write_report` writes `metrics.json`, a markdown table `metrics.md` and a reliability diagram
`reliability.png`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .data import RewardDataset
from .optional import import_optional
from .scorer import ZRewardScorer

TABLE_COLUMNS = (
    ("pairwise acc (labels)", lambda m: m.get("pairwise_accuracy", {}).get("accuracy")),
    ("pair acc (panel)", lambda m: m.get("pair_accuracy", {}).get("accuracy")),
    ("Spearman", lambda m: m.get("correlations", {}).get("spearman")),
    ("Kendall τb", lambda m: m.get("correlations", {}).get("kendall_tau_b")),
    ("Pearson", lambda m: m.get("correlations", {}).get("pearson")),
    ("NLL", lambda m: m.get("nll")),
    ("EMD", lambda m: m.get("emd")),
    ("ECE", lambda m: m.get("ece", {}).get("ece")),
)


@torch.inference_mode()
def score_dataset(scorer: ZRewardScorer, dataset: RewardDataset, batch_size: int = 32,
                  progress: bool = True) -> np.ndarray:
    """Score distributions `(N, D, K)` of every record, in dataset order, for the dataset's dimensions."""
    missing = set(dataset.dimensions) - set(scorer.rubric.dimension_names)
    if missing:
        raise ValueError(f"the model's rubric has no dimension(s) {sorted(missing)} that the dataset is labelled on")
    images = [dataset.load_image(record) for record in dataset.records]
    by_size = defaultdict(list)
    for index, image in enumerate(images):
        by_size[image.size].append(index)
    probs = np.zeros((len(images), len(dataset.dimensions), len(scorer.rubric.levels)), dtype=np.float64)
    bar = tqdm(total=len(images), desc="scoring", unit="image", disable=not progress)
    device = scorer.score_token_ids.device
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            pixels = torch.from_numpy(np.stack([np.asarray(images[i], dtype=np.uint8) for i in chunk]))
            batch = pixels.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32) / 255.0
            prompts = [dataset.records[i].prompt for i in chunk]
            output = scorer(batch, prompts, dimensions=dataset.dimensions)
            probs[chunk] = output.probs.double().cpu().numpy()
            bar.update(len(chunk))
    bar.close()
    return probs


def dataset_targets(dataset: RewardDataset) -> dict:
    """Labels `(N, D)`, histograms `(N, D, K)` (or None where incomplete), groups and pair index arrays."""
    dims, num_levels = dataset.dimensions, len(dataset.levels)
    index = {record.record_id: i for i, record in enumerate(dataset.records)}
    labels = np.array([[r.labels.get(d, math.nan) for d in dims] for r in dataset.records], dtype=np.float64)
    complete_hist = all(set(dims) <= set(r.histograms) for r in dataset.records)
    histograms = (np.array([[r.histograms[d] for d in dims] for r in dataset.records], dtype=np.float64)
                  if complete_hist and dataset.records else None)
    per_dimension = defaultdict(dict)
    overall = {}
    for pair in dataset.pairs:
        key = (index[pair.record_a], index[pair.record_b])
        if pair.dimension is None:
            overall[key] = pair.preference
        else:
            per_dimension[key][pair.dimension] = pair.preference
    full = [(key, [outcomes[d] for d in dims]) for key, outcomes in per_dimension.items()
            if set(dims) <= set(outcomes)]
    return {
        "labels": labels if not np.isnan(labels).any() else None,
        "histograms": histograms if histograms is None or histograms.shape[-1] == num_levels else None,
        "groups": np.array([r.group_id for r in dataset.records]),
        "dimension_pairs": (np.array([k for k, _ in full]).reshape(-1, 2), np.array([o for _, o in full])),
        "overall_pairs": (np.array(list(overall)).reshape(-1, 2), np.array(list(overall.values()))),
    }


def evaluate_probs(probs: np.ndarray, dataset: RewardDataset, weights=None) -> dict:
    """Metrics of predicted distributions `(N, D, K)` against the dataset's targets (see `metrics.evaluate_scores`),
    plus `num_records`. A panel whose overall preferences are all ties has no overall pair accuracy."""
    targets = dataset_targets(dataset)
    pairs_index, pairs_outcome = targets["dimension_pairs"]
    overall_index, overall_outcome = targets["overall_pairs"]
    report = metrics.evaluate_scores(
        probs, dataset.levels, dataset.dimensions, targets["groups"],
        human_scores=targets["labels"], histograms=targets["histograms"],
        pairs=(pairs_index[:, 0], pairs_index[:, 1], pairs_outcome) if len(pairs_outcome) else None,
        overall_pairs=((overall_index[:, 0], overall_index[:, 1], overall_outcome)
                       if (overall_outcome != 0).any() else None),
        weights=weights,
    )
    return {**report, "num_records": len(dataset.records)}


def preference_accuracy_ci(scores, dataset: RewardDataset, num_resamples: int = 1000, confidence: float = 0.95,
                           seed: int = 0) -> dict:
    """Held-out preference accuracy of per-record scores with a bootstrap interval over prompt groups.

    The accuracy is the trainers' one (docs/method.md eq. 17): the panel's pairs of each dimension, human ties left
    out, a predicted tie worth 1/2, then the mean over dimensions. The interval is the percentile bootstrap of that
    number with whole prompt groups resampled (`metrics.bootstrap_ci`): a pair belongs to the group of its images.

    Args:
        scores: `(N, D)` scores of `dataset.records` in `dataset.dimensions` order (expected scores μ, or a scalar
            baseline's scores).
        dataset: the held-out `RewardDataset` with per-dimension pairs.

    Returns:
        `{"estimate", "lower", "upper", "confidence", "num_resamples", "num_groups"}`.
    """
    targets = dataset_targets(dataset)
    index, outcome = targets["dimension_pairs"]
    scores = np.asarray(scores, dtype=np.float64)
    expected = (len(dataset.records), len(dataset.dimensions))
    if scores.shape != expected:
        raise ValueError(f"`scores` must have shape {expected} (records, dimensions), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("`scores` holds NaN or infinite values")
    if len(outcome) == 0:
        raise ValueError("`dataset` has no per-dimension pairs: the accuracy is undefined")
    predicted = np.sign(scores[index[:, 0]] - scores[index[:, 1]])  # (P, D)
    human = np.sign(outcome.astype(np.float64))
    credit = np.where(human == 0, np.nan, np.where(predicted == 0, 0.5, (predicted == human).astype(np.float64)))

    def accuracy(values: np.ndarray) -> float:  # per dimension over its untied pairs, then over dimensions
        counts = (~np.isnan(values)).sum(axis=0)
        sums = np.nansum(values, axis=0)
        return float(np.mean(sums[counts > 0] / counts[counts > 0]))

    groups = targets["groups"][index[:, 0]]
    result = metrics.bootstrap_ci(accuracy, credit, groups, num_resamples, confidence, seed)
    result["num_groups"] = int(len(set(groups.tolist())))
    return result


def markdown_table(report: dict, dimensions) -> str:
    header = "| dimension | " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for name in [*dimensions, "overall"]:
        cells = []
        for _, getter in TABLE_COLUMNS:
            value = getter(report.get(name, {}))
            cells.append("–" if value is None else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reliability_diagram(report: dict, dimensions, path: Path, title: str) -> Path:
    """Top-label reliability per dimension (confidence vs accuracy of the argmax level, equal-mass bins)."""
    import_optional("matplotlib").use("Agg")
    plt = import_optional("matplotlib.pyplot")

    panels = [d for d in dimensions if "ece" in report.get(d, {})]
    if not panels:
        raise ValueError("no dimension has calibration bins: the dataset needs per-dimension labels")
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False, dpi=110)
    for axis, name in zip(axes[0], panels, strict=True):
        ece = report[name]["ece"]
        confidence, accuracy = np.asarray(ece["bin_confidence"]), np.asarray(ece["bin_accuracy"])
        axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
        axis.plot(confidence, accuracy, marker="o", color="C0", label="model")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence of the top level")
        axis.set_title(f"{name.replace('_', ' ')}\nECE {ece['ece']:.3f}", fontsize=9)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (top level = label)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(report: dict, dimensions, out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write `metrics.json`, `metrics.md` and `reliability.png` into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "metrics.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    paths["markdown"].write_text(f"# {title}\n\n" + markdown_table(report, dimensions))
    if any("ece" in report.get(d, {}) for d in dimensions):
        paths["reliability"] = reliability_diagram(report, dimensions, out_dir / "reliability.png", title)
    return paths


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
