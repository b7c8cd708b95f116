"""`zreward bench`: a Z-Reward model on the public preference and rating benchmarks, each by its own rule.

Preference benchmarks rank images by the model's overall reward ``R = sum_d w_d r_d`` (the rubric's weights,
``r_d`` the normalised expected score of dimension ``d``, docs/method.md eq. 3) and score it with the rule that
benchmark's authors use; rating benchmarks compare the model's per-dimension distributions with the human ratings.
Every benchmark reads a local copy through its reader in :mod:`zreward_diffusers.data.formats` (the columns each
reads and the scale mappings are in docs/datasets.md).

=============  =====================================  ================================================================
name           reader                                 rule
=============  =====================================  ================================================================
hpdv2          ``from_hpdv2`` (test split, ranks)     inversion score per prompt (HPSv2): ``1 - discordant / all
                                                      pairs``, a tie (human or predicted) is never discordant; mean
                                                      over prompts
hpdv3          ``from_hpdv3`` (test pairs)            pooled over pairs: the preferred image's reward above the
                                                      other's; a predicted exact tie counts 1/2
imagereward    ``from_imagereward_db`` (test split)   per prompt over the pairs humans rank apart, right when the
                                                      reward orders them strictly the same way (a predicted tie is
                                                      wrong); mean over prompts
pickapic       ``from_pickapic`` (test_unique)        PickScore's: every pair, human ties included; the prediction is
                                                      a tie when ``|P(a > b) - P(b > a)| <= t``; 1 when prediction and
                                                      label agree, 1/2 when exactly one is a tie, else 0; ``t`` is
                                                      chosen on a validation split (validation_unique) when one is
                                                      given, else 0
genai_bench    ``from_genai_bench``                   w/o ties: tie and both-bad votes left out, a predicted exact tie
                                                      counts 1/2; w/ ties: every vote, tie calibration (Deutsch et
                                                      al., 2023) on the benchmark itself, as GenAI-Bench results are
                                                      reported
richhf         ``from_richhf18k``                     calibration per dimension: Pearson and Spearman of the expected
                                                      score against the mean human rating, and, where annotator
                                                      histograms exist, EMD and Jensen-Shannon divergence
evalmuse       ``from_evalmuse``                      as richhf
=============  =====================================  ================================================================

For Pick-a-Pic, ``P(a > b)`` is the rubric-weighted mean over dimensions of ``P(a_d > b_d)``, the probability
that a draw from ``a``'s distribution of dimension ``d`` beats one from ``b``'s (ties 1/2;
:func:`~zreward_diffusers.distributions.preference_probability`, eq. 4) — not the probability that ``a``'s overall
reward beats ``b``'s, which can order a pair differently when the dimensions disagree; PickScore thresholds the
difference of its two softmax probabilities, ``|p_0 - p_1|``, the same quantity for a Bradley-Terry score. HPDv2's
and ImageReward's groups are the readers' groups: the prompt (HPDv2) and ``prompt_id`` (ImageReward); two HPDv2 rows
with the same prompt text form one group, where HPSv2 scores each row alone. Sources of the rules: HPSv2's
``hpsv2/src/training/train.py`` (``inversion_score``, and ``calc_ImageReward`` for ImageReward's test),
PickScore's ``trainer/scripts/eval_preference_predictor.py``, and for GenAI-Bench the "w/ ties" / "w/o ties"
accuracies of the reward-model literature (tie calibration: Deutsch et al., "Ties Matter", arXiv 2305.14324).
HPSv3's repository publishes no evaluation script; the HPDv3 rule is the plain pairwise accuracy of eq. 17.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .data import RewardDataset
from .distributions import preference_probability

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "bench_table",
    "genai_bench_accuracy",
    "imagereward_accuracy",
    "inversion_accuracy",
    "pickapic_accuracy",
    "pickapic_threshold",
    "run_benchmark",
    "run_benchmarks",
]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its table title, the reader's name in `data.formats` and its kind (`pairs` or `ratings`)."""

    title: str
    reader: str
    kind: str


BENCHMARKS: dict[str, Benchmark] = {
    "hpdv2": Benchmark("HPDv2 test", "from_hpdv2", "pairs"),
    "hpdv3": Benchmark("HPDv3 test", "from_hpdv3", "pairs"),
    "imagereward": Benchmark("ImageReward test", "from_imagereward_db", "pairs"),
    "pickapic": Benchmark("Pick-a-Pic v2 test", "from_pickapic", "pairs"),
    "genai_bench": Benchmark("GenAI-Bench", "from_genai_bench", "pairs"),
    "richhf": Benchmark("RichHF-18K", "from_richhf18k", "ratings"),
    "evalmuse": Benchmark("EvalMuse-40K", "from_evalmuse", "ratings"),
}


# ---------------------------------------------------------------- the rules, on pairs of per-image scores


def _pair_arrays(score_a, score_b, outcome, groups=None):
    score_a = np.asarray(score_a, dtype=np.float64)
    score_b = np.asarray(score_b, dtype=np.float64)
    outcome = np.asarray(outcome)
    if score_a.ndim != 1 or score_a.shape != score_b.shape or outcome.shape != score_a.shape:
        raise ValueError(f"`score_a`, `score_b` and `outcome` must be 1-D of one length, got {score_a.shape}, "
                         f"{score_b.shape}, {outcome.shape}")
    if not (np.isfinite(score_a).all() and np.isfinite(score_b).all()):
        raise ValueError("`score_a` and `score_b` must be finite")
    if not np.isin(outcome, (-1, 0, 1)).all():
        raise ValueError(f"`outcome` must hold +1, -1 or 0, got {sorted(set(outcome.tolist()) - {-1, 0, 1})}")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != score_a.shape:
            raise ValueError(f"`groups` must have the shape of `score_a`, {score_a.shape}, got {groups.shape}")
    return score_a, score_b, outcome.astype(np.int64), groups


def _per_group_mean(values: np.ndarray, groups: np.ndarray, keep: np.ndarray, name: str) -> dict:
    """Mean over groups of each group's mean of `values` over its kept pairs (groups with none are left out)."""
    per_group = defaultdict(list)
    for value, group, kept in zip(values, groups, keep, strict=True):
        if kept:
            per_group[group].append(value)
    if not per_group:
        raise ValueError(f"{name}: no group has a pair the rule counts: the accuracy is undefined")
    accuracy = float(np.mean([np.mean(group_values) for group_values in per_group.values()]))
    return {"accuracy": accuracy, "num_groups": len(per_group), "num_pairs": int(keep.sum())}


def inversion_accuracy(score_a, score_b, outcome, groups) -> dict:
    """HPDv2's rule (HPSv2): per prompt, ``1 - (#discordant pairs) / (#pairs)`` over every pair of its images,
    where a pair is discordant when the human and the predicted orders are both strict and opposite; the mean
    over prompts. HPSv2 ranks by sorting, which breaks an exact predicted tie by position; here such a pair is
    not discordant (exact ties of continuous rewards are rare either way).

    >>> # prompt "p": one of its three pairs discordant -> 2/3; prompt "q": its pair is a human tie -> 1
    >>> result = inversion_accuracy([3, 1, 2, 5], [1, 2, 3, 5], [1, 1, -1, 0], ["p", "p", "p", "q"])
    >>> round(result["accuracy"], 6), result["num_groups"], result["num_pairs"]
    (0.833333, 2, 4)
    """
    score_a, score_b, outcome, groups = _pair_arrays(score_a, score_b, outcome, groups)
    discordant = (outcome * np.sign(score_a - score_b)) < 0
    return _per_group_mean(1.0 - discordant, groups, np.ones_like(discordant), "inversion_accuracy")


def imagereward_accuracy(score_a, score_b, outcome, groups) -> dict:
    """ImageReward's test rule (HPSv2's ``calc_ImageReward``): per prompt, over the pairs humans rank apart, the
    share the reward orders strictly the same way (a predicted tie is wrong); the mean over prompts that have such
    a pair.

    >>> # prompt "p": right, a predicted tie (wrong), a human tie (left out) -> 1/2; prompt "q": right -> 1
    >>> imagereward_accuracy([3, 2, 1, 4], [1, 2, 1, 0], [1, -1, 0, 1], ["p", "p", "p", "q"])
    {'accuracy': 0.75, 'num_groups': 2, 'num_pairs': 3}
    """
    score_a, score_b, outcome, groups = _pair_arrays(score_a, score_b, outcome, groups)
    right = (np.sign(score_a - score_b) == outcome).astype(np.float64)
    return _per_group_mean(right, groups, outcome != 0, "imagereward_accuracy")


def _pickapic_credit(gap: np.ndarray, outcome: np.ndarray, threshold: float) -> np.ndarray:
    predicted = np.where(np.abs(gap) <= threshold, 0, np.sign(gap))
    return np.where(predicted == outcome, 1.0, np.where((predicted == 0) | (outcome == 0), 0.5, 0.0))


def pickapic_accuracy(probability_a, outcome, threshold: float = 0.0) -> dict:
    """PickScore's rule: every pair counts, human ties included; the prediction is a tie when
    ``|P(a > b) - P(b > a)| = |2 P(a > b) - 1| <= threshold``, else the more probable side; a pair scores 1 when
    prediction and label agree, 1/2 when exactly one of them is a tie, 0 otherwise; the mean over pairs.

    >>> # a right, a predicted tie on a preference (1/2), a human tie predicted as a preference (1/2), a wrong one
    >>> pickapic_accuracy([0.9, 0.55, 0.8, 0.1], [1, 1, 0, 1], threshold=0.2)
    {'accuracy': 0.5, 'num_pairs': 4, 'threshold': 0.2}
    """
    probability_a = np.asarray(probability_a, dtype=np.float64)
    _, _, outcome, _ = _pair_arrays(probability_a, probability_a, outcome)
    if not ((probability_a >= 0) & (probability_a <= 1)).all():
        raise ValueError("`probability_a` must lie in [0, 1]")
    if not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise ValueError(f"`threshold` must lie in [0, 1], got {threshold}")
    if probability_a.shape[0] == 0:
        raise ValueError("pickapic_accuracy: no pair: the accuracy is undefined")
    credit = _pickapic_credit(2 * probability_a - 1, outcome, threshold)
    return {"accuracy": float(credit.mean()), "num_pairs": int(credit.shape[0]), "threshold": float(threshold)}


def pickapic_threshold(probability_a, outcome) -> float:
    """The tie threshold with the best :func:`pickapic_accuracy` on a validation split (the smallest of equals).

    Candidates are 0 and every ``|2 P(a > b) - 1|`` of the split (any other threshold predicts the same ties as
    the largest candidate below it), so the optimum over all thresholds is found; PickScore searched a grid of
    0, 0.1, ..., 1.

    >>> pickapic_threshold([0.875, 0.5, 0.375, 0.125], [1, 0, 0, -1])  # tying the two near-even pairs is best
    0.25
    """
    probability_a = np.asarray(probability_a, dtype=np.float64)
    _, _, outcome, _ = _pair_arrays(probability_a, probability_a, outcome)
    if probability_a.shape[0] == 0:
        raise ValueError("pickapic_threshold: the validation split has no pair")
    gap = 2 * probability_a - 1
    candidates = np.unique(np.concatenate([[0.0], np.abs(gap)]))
    scores = [_pickapic_credit(gap, outcome, candidate).mean() for candidate in candidates]
    return float(candidates[int(np.argmax(scores))])


def genai_bench_accuracy(score_a, score_b, outcome) -> dict:
    """GenAI-Bench's two accuracies: ``without_ties`` (tie and both-bad votes left out, a predicted exact tie 1/2,
    eq. 17) and ``with_ties`` (every vote; tie calibration, Deutsch et al. 2023: the threshold on ``|R_a - R_b|``
    under which a pair is predicted a tie is the one that maximises the agreement on the benchmark itself).

    >>> # gaps 2 (right), -1 (wrong), 0.05 and 0 (tie votes): tying the gaps below 1 gets both ties right
    >>> result = genai_bench_accuracy([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 1.95, 2.0], [1, 1, 0, 0])
    >>> result["without_ties"], result["with_ties"]["accuracy"], result["with_ties"]["epsilon"]
    ({'accuracy': 0.5, 'num_pairs': 2}, 0.75, 1.0)
    """
    score_a, score_b, outcome, _ = _pair_arrays(score_a, score_b, outcome)
    without = metrics.pairwise_accuracy_from_pairs(score_a, score_b, outcome)
    # each pair as a group of two items, so the within-group tie calibration sees exactly these pairs
    predicted = np.stack([score_a, score_b], axis=1).reshape(-1)
    human = np.stack([outcome > 0, outcome < 0], axis=1).reshape(-1).astype(np.float64)
    groups = np.repeat(np.arange(score_a.shape[0]), 2)
    return {"without_ties": without, "with_ties": metrics.calibrate_tie_epsilon(predicted, human, groups)}


# ---------------------------------------------------------------- scoring a benchmark


def _load(name: str, source, root=None, *, dimensions, levels, verify_images: bool, **extra) -> RewardDataset:
    from .data import formats

    reader: Callable = getattr(formats, BENCHMARKS[name].reader)
    options = {"dimensions": dimensions, "levels": levels, "verify_images": verify_images, **extra}
    if root is not None:
        options["root"] = root
    return reader(source, **options)


def _model_scores(scorer, dataset: RewardDataset, batch_size: int, progress: bool) -> np.ndarray:
    from .evaluation import score_dataset

    return score_dataset(scorer, dataset, batch_size=batch_size, progress=progress)


def _weights(rubric, dimensions) -> np.ndarray:
    weights = np.ones(len(dimensions)) if rubric.weights is None else np.array(
        [rubric.weights[rubric.dimension_names.index(d)] for d in dimensions], dtype=np.float64)
    return weights / weights.sum()


def _overall_pairs(probs: np.ndarray, dataset: RewardDataset, rubric) -> dict:
    """Per overall pair: the two rewards ``R``, ``P(R_a > R_b)`` and the outcome; and the group of each pair."""
    levels = torch.tensor(dataset.levels, dtype=torch.float64)
    weights = _weights(rubric, dataset.dimensions)
    expected = (torch.from_numpy(probs) * levels).sum(-1).numpy()  # (N, D)
    reward = ((expected - levels[0].item()) / (levels[-1] - levels[0]).item()) @ weights
    index = {record.record_id: i for i, record in enumerate(dataset.records)}
    pairs = [pair for pair in dataset.pairs if pair.dimension is None]
    if not pairs:
        raise ValueError(f"{dataset.description}: the source holds no overall preference pair")
    a = np.array([index[pair.record_a] for pair in pairs])
    b = np.array([index[pair.record_b] for pair in pairs])
    per_dimension = preference_probability(torch.from_numpy(probs[a]), torch.from_numpy(probs[b])).numpy()
    return {"score_a": reward[a], "score_b": reward[b], "probability_a": per_dimension @ weights,
            "outcome": np.array([pair.preference for pair in pairs]),
            "groups": np.array([str(pair.group_id) for pair in pairs])}


def _ratings(probs: np.ndarray, dataset: RewardDataset) -> dict:
    levels = np.asarray(dataset.levels, dtype=np.float64)
    expected = probs @ levels
    result = {}
    for d, dimension in enumerate(dataset.dimensions):
        labelled = [i for i, record in enumerate(dataset.records) if dimension in record.labels]
        if len(labelled) < 2:
            continue
        human = np.array([dataset.records[i].labels[dimension] for i in labelled], dtype=np.float64)
        entry = {"num_images": len(labelled)}
        for key, metric in (("pearson", metrics.pearson), ("spearman", metrics.spearman)):
            try:
                entry[key] = metric(expected[labelled, d], human)
            except ValueError as error:  # a constant predictor or constant ratings: reported, not hidden
                entry[key] = None
                entry[f"{key}_undefined"] = str(error)
        with_histogram = [i for i in labelled if dimension in dataset.records[i].histograms]
        if with_histogram:
            histograms = np.array([dataset.records[i].histograms[dimension] for i in with_histogram], np.float64)
            entry["emd"] = metrics.mean_emd(probs[with_histogram, d], histograms, levels)
            entry["js_divergence"] = metrics.mean_js_divergence(probs[with_histogram, d], histograms)
            entry["num_histograms"] = len(with_histogram)
        result[dimension] = entry
    if not result:
        raise ValueError(f"{dataset.description}: no dimension of the model has two or more rated images")
    return result


def run_benchmark(loss_fn, name: str, source, *, validation=None, root=None, batch_size: int = 32,
                  verify_images: bool = True, progress: bool = True) -> dict:
    """One benchmark's result for a `ZRewardLoss` (or anything with `.scorer` and `.rubric`).

    Args:
        loss_fn: the reward, e.g. `ZRewardLoss.from_pretrained(...)`.
        name: a key of `BENCHMARKS`.
        source: the benchmark's local copy (a file, a `datasets.Dataset`, or rows; see its reader).
        validation: for `pickapic`, the validation split that sets the tie threshold.
        root: where relative image paths resolve (default: the source file's directory).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; the benchmarks are {sorted(BENCHMARKS)}")
    if validation is not None and name != "pickapic":
        raise ValueError(f"`validation` sets Pick-a-Pic's tie threshold; {name!r} takes none")
    rubric = loss_fn.rubric
    benchmark = BENCHMARKS[name]
    dimensions = list(rubric.dimension_names)
    if benchmark.kind == "ratings":
        from .data.dataset import DEFAULT_DIMENSIONS

        dimensions = [d for d in DEFAULT_DIMENSIONS if d in rubric.dimension_names]
        if not dimensions:
            raise ValueError(f"{name}: the model's rubric has none of the rated dimensions "
                             f"{list(DEFAULT_DIMENSIONS)}")
    options = {}
    if name == "richhf":  # only the rated columns whose dimension the model has
        from .data.formats import RICHHF_SCORE_LABELS

        options["score_labels"] = {column: d for column, d in RICHHF_SCORE_LABELS.items() if d in dimensions}
    dataset = _load(name, source, root, dimensions=dimensions, levels=rubric.levels, verify_images=verify_images,
                    **options)
    probs = _model_scores(loss_fn.scorer, dataset, batch_size, progress)
    result = {"benchmark": benchmark.title, "num_images": len(dataset.records)}
    if benchmark.kind == "ratings":
        return {**result, "dimensions": _ratings(probs, dataset)}
    pairs = _overall_pairs(probs, dataset, rubric)
    a, b, outcome, groups = pairs["score_a"], pairs["score_b"], pairs["outcome"], pairs["groups"]
    if name == "hpdv2":
        accuracy = inversion_accuracy(a, b, outcome, groups)
    elif name == "imagereward":
        accuracy = imagereward_accuracy(a, b, outcome, groups)
    elif name == "hpdv3":
        accuracy = metrics.pairwise_accuracy_from_pairs(a, b, outcome)
    elif name == "genai_bench":
        both = genai_bench_accuracy(a, b, outcome)
        accuracy = {**both["without_ties"], "with_ties": both["with_ties"]}
    else:
        threshold = 0.0
        if validation is not None:
            held = _load(name, validation, root, dimensions=dimensions, levels=rubric.levels,
                         verify_images=verify_images)
            held_pairs = _overall_pairs(_model_scores(loss_fn.scorer, held, batch_size, progress), held, rubric)
            threshold = pickapic_threshold(held_pairs["probability_a"], held_pairs["outcome"])
        accuracy = pickapic_accuracy(pairs["probability_a"], outcome, threshold)
        accuracy["threshold_from"] = "validation" if validation is not None else "none (0)"
    return {**result, **accuracy}


def run_benchmarks(loss_fn, sources: Mapping[str, object], *, validation: Mapping[str, object] | None = None,
                   roots: Mapping[str, object] | None = None, **options) -> dict[str, dict]:
    """`run_benchmark` for each `{name: source}`, in the order of `BENCHMARKS`."""
    unknown = sorted(set(sources) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; the benchmarks are {sorted(BENCHMARKS)}")
    validation, roots = dict(validation or {}), dict(roots or {})
    for argument, given in (("validation", validation), ("roots", roots)):
        stray = sorted(set(given) - set(sources))
        if stray:
            raise ValueError(f"`{argument}` names benchmark(s) {stray} that have no source")
    if set(validation) - {"pickapic"}:  # before anything is scored
        raise ValueError(f"`validation` sets Pick-a-Pic's tie threshold; {sorted(set(validation) - {'pickapic'})} "
                         "take none")
    return {name: run_benchmark(loss_fn, name, sources[name], validation=validation.get(name),
                                root=roots.get(name), **options)
            for name in BENCHMARKS if name in sources}


def _number(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def bench_table(results: Mapping[str, dict]) -> str:
    """One markdown table: a row per preference benchmark, then a row per rated dimension."""
    lines = ["| benchmark | metric | value | n |", "|---|---|---:|---:|"]
    for name, result in results.items():
        title = result["benchmark"]
        if BENCHMARKS[name].kind == "pairs":
            rule = {"hpdv2": "inversion score", "imagereward": "accuracy (per prompt)", "hpdv3": "pair accuracy",
                    "pickapic": f"accuracy with ties (t = {result.get('threshold', 0):.3g})",
                    "genai_bench": "accuracy w/o ties"}[name]
            lines.append(f"| {title} | {rule} | {_number(result['accuracy'])} | {result['num_pairs']} |")
            if name == "genai_bench":
                ties = result["with_ties"]
                lines.append(f"| {title} | accuracy w/ ties (tie calibration) | {_number(ties['accuracy'])} | "
                             f"{ties['num_pairs']} |")
        else:
            for dimension, entry in result["dimensions"].items():
                values = [f"Pearson {_number(entry.get('pearson'))}", f"Spearman {_number(entry.get('spearman'))}"]
                if "emd" in entry:
                    values += [f"EMD {_number(entry['emd'])}", f"JS {_number(entry['js_divergence'])}"]
                lines.append(f"| {title} | {dimension} | {', '.join(values)} | {entry['num_images']} |")
    return "\n".join(lines) + "\n"


def write_bench(results: Mapping[str, dict], out_dir: str | Path) -> dict[str, Path]:
    """`results.json` and `table.md` under `out_dir` (each written to a temporary file, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "table": out / "table.md"}
    for key, text in (("results", json.dumps(results, indent=2, default=float)), ("table", bench_table(results))):
        temporary = paths[key].with_suffix(paths[key].suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(paths[key])
    return paths
