"""`zreward bench`: each benchmark's rule against a brute-force loop written from its authors' description, and the
command end to end on small fixtures in the benchmarks' own layouts, against rewards computed image by image."""

import io
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zreward_diffusers import bench
from zreward_diffusers.cli import main

# ---------------------------------------------------------------- brute force, one pair at a time


def brute_inversion(scores_by_group, ranks_by_group):
    """HPSv2's inversion score: per prompt over all pairs, count pairs ordered strictly opposite ways."""
    per_group = []
    for scores, ranks in zip(scores_by_group, ranks_by_group, strict=True):
        n = len(scores)
        discordant = 0
        for i in range(n):
            for j in range(i + 1, n):
                better_human = ranks[i] < ranks[j]  # rank 1 = best
                worse_human = ranks[i] > ranks[j]
                if (better_human and scores[i] < scores[j]) or (worse_human and scores[i] > scores[j]):
                    discordant += 1
        per_group.append(1 - discordant / (n * (n - 1) / 2))
    return sum(per_group) / len(per_group)


def brute_imagereward(scores_by_group, ranks_by_group):
    """calc_ImageReward: per prompt over human-untied pairs, right only when strictly the same order."""
    per_group = []
    for scores, ranks in zip(scores_by_group, ranks_by_group, strict=True):
        total = right = 0
        for i, j in itertools.combinations(range(len(scores)), 2):
            if ranks[i] == ranks[j]:
                continue
            total += 1
            if (ranks[i] < ranks[j] and scores[i] > scores[j]) or (ranks[i] > ranks[j] and scores[i] < scores[j]):
                right += 1
        if total:
            per_group.append(right / total)
    return sum(per_group) / len(per_group)


def brute_pickapic(probability_0, labels, threshold):
    """PickScore's eval_preference_predictor: tie when |p0 - p1| <= t; 1 / 0.5 / 0 credit."""
    credits = []
    for p0, label in zip(probability_0, labels, strict=True):
        p1 = 1 - p0
        prediction = "tie" if abs(p1 - p0) <= threshold else ("0" if p0 > p1 else "1")
        truth = {1: "0", -1: "1", 0: "tie"}[label]
        credits.append(1 if prediction == truth else (0.5 if "tie" in (prediction, truth) else 0))
    return sum(credits) / len(credits)


def brute_acc_eq(score_a, score_b, outcome, epsilon):
    """Deutsch et al.'s acc_eq at one threshold: tie when |gap| < epsilon (an exact tie always)."""
    agree = 0
    for a, b, o in zip(score_a, score_b, outcome, strict=True):
        gap = a - b
        predicted = 0 if abs(gap) < epsilon or gap == 0 else (1 if gap > 0 else -1)
        agree += predicted == o
    return agree / len(outcome)


def random_groups(rng, num_groups=12, with_ties=True):
    scores, ranks = [], []
    for _ in range(num_groups):
        n = int(rng.integers(2, 6))
        # few distinct values, so predicted and human ties both happen
        scores.append(rng.integers(0, 4, n).astype(float).tolist())
        ranks.append((rng.integers(1, 4, n) if with_ties else rng.permutation(n) + 1).tolist())
    return scores, ranks


def as_pairs(scores_by_group, ranks_by_group):
    score_a, score_b, outcome, groups = [], [], [], []
    for g, (scores, ranks) in enumerate(zip(scores_by_group, ranks_by_group, strict=True)):
        for i, j in itertools.combinations(range(len(scores)), 2):
            score_a.append(scores[i])
            score_b.append(scores[j])
            outcome.append(int(np.sign(ranks[j] - ranks[i])))
            groups.append(f"g{g}")
    return score_a, score_b, outcome, groups


@pytest.mark.parametrize("seed", range(5))
def test_group_rules_match_brute_force(seed):
    scores, ranks = random_groups(np.random.default_rng(seed))
    pairs = as_pairs(scores, ranks)
    assert bench.inversion_accuracy(*pairs)["accuracy"] == pytest.approx(brute_inversion(scores, ranks), abs=1e-12)
    kept = [(s, r) for s, r in zip(scores, ranks, strict=True) if len(set(r)) > 1]
    expected = brute_imagereward([s for s, _ in kept], [r for _, r in kept])
    result = bench.imagereward_accuracy(*pairs)
    assert result["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert result["num_groups"] == len(kept)


def test_imagereward_rule_is_not_pooled_over_pairs():
    # prompt p: 1 of 3 untied pairs right; prompt q: its 1 pair right. Per prompt: (1/3 + 1) / 2; pooled: 2/4.
    score_a, score_b, outcome, groups = [0, 0, 0, 1], [1, 1, -1, 0], [1, 1, 1, 1], ["p", "p", "p", "q"]
    assert bench.imagereward_accuracy(score_a, score_b, outcome, groups)["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_pickapic_rule_and_threshold_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    probability = rng.choice([0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875], size=40)  # exact in binary
    labels = rng.choice([1, -1, 0], size=40, p=[0.4, 0.4, 0.2])
    for threshold in (0.0, 0.25, 0.5, 0.6, 1.0):
        assert bench.pickapic_accuracy(probability, labels, threshold)["accuracy"] == pytest.approx(
            brute_pickapic(probability, labels, threshold), abs=1e-12)
    chosen = bench.pickapic_threshold(probability, labels)
    grid = np.linspace(0, 1, 2001)
    best = max(brute_pickapic(probability, labels, t) for t in grid)
    assert brute_pickapic(probability, labels, chosen) == pytest.approx(best, abs=1e-12)
    assert all(brute_pickapic(probability, labels, t) < best - 1e-12 for t in grid if t < chosen - 1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_genai_bench_with_ties_is_the_best_threshold(seed):
    rng = np.random.default_rng(seed)
    score_a, score_b = rng.integers(0, 5, 30) / 4, rng.integers(0, 5, 30) / 4
    outcome = rng.choice([1, -1, 0], size=30)
    result = bench.genai_bench_accuracy(score_a, score_b, outcome)
    untied = outcome != 0
    credit = [1 if np.sign(a - b) == o else (0.5 if a == b else 0)
              for a, b, o in zip(score_a[untied], score_b[untied], outcome[untied], strict=True)]
    assert result["without_ties"]["accuracy"] == pytest.approx(np.mean(credit), abs=1e-12)
    best = max(brute_acc_eq(score_a, score_b, outcome, eps) for eps in np.linspace(0, 1.5, 601))
    assert result["with_ties"]["accuracy"] == pytest.approx(best, abs=1e-12)
    assert brute_acc_eq(score_a, score_b, outcome, result["with_ties"]["epsilon"]) == pytest.approx(best)


def test_rules_refuse_bad_input():
    with pytest.raises(ValueError, match="outcome"):
        bench.inversion_accuracy([1.0], [2.0], [2], ["g"])
    with pytest.raises(ValueError, match="groups"):
        bench.imagereward_accuracy([1.0, 2.0], [2.0, 1.0], [1, 1], ["g"])
    with pytest.raises(ValueError, match="no group"):
        bench.imagereward_accuracy([1.0], [2.0], [0], ["g"])
    with pytest.raises(ValueError, match="threshold"):
        bench.pickapic_accuracy([0.5], [1], threshold=1.5)
    with pytest.raises(ValueError, match="probability_a"):
        bench.pickapic_accuracy([1.5], [1])
    with pytest.raises(ValueError, match="finite"):
        bench.genai_bench_accuracy([float("nan")], [1.0], [1])


# ---------------------------------------------------------------- the command, end to end


def noise_png(seed: int, size=(32, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path, seed):
    path.write_bytes(noise_png(seed))
    return path.name


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from zreward_diffusers.testing import create_tiny_checkpoint

    directory = tmp_path_factory.mktemp("bench") / "tiny"
    create_tiny_checkpoint(directory, family="qwen2_vl", seed=3)
    return directory


@pytest.fixture(scope="module")
def loss_fn(tiny_model):
    from zreward_diffusers import ZRewardLoss

    return ZRewardLoss.from_pretrained(str(tiny_model))


def rewards_of(loss_fn, paths_or_bytes, prompts):
    """The reward and distributions of each image, one `score` call per image (the processor path)."""
    rewards, probs = [], []
    for item, prompt in zip(paths_or_bytes, prompts, strict=True):
        image = Image.open(io.BytesIO(item) if isinstance(item, bytes) else item).convert("RGB")
        output = loss_fn.score([image], [prompt])
        rewards.append(float(output.reward[0]))
        probs.append(output.probs[0].double().numpy())
    return rewards, probs


def brute_preference(probs_a, probs_b, weights):
    """P(a > b) per dimension by enumerating level pairs (ties 1/2), combined with the weights."""
    total = 0.0
    for d, weight in enumerate(weights):
        p = 0.0
        for k, m in itertools.product(range(probs_a.shape[1]), repeat=2):
            p += probs_a[d, k] * probs_b[d, m] * (1.0 if k > m else 0.5 if k == m else 0.0)
        total += weight * p
    return total


def test_bench_command_hpdv2_imagereward_pickapic(tmp_path, tiny_model, loss_fn, capsys):
    # HPDv2 test layout: test.json, a list of {prompt, image_path: [...], rank: [...]}, images beside it
    hpdv2 = tmp_path / "hpdv2"
    hpdv2.mkdir()
    rows, seed = [], 0
    for p, ranks in enumerate([[1, 2, 3, 4], [2, 1, 4, 3], [1, 3, 2, 2]]):
        names = []
        for _ in ranks:
            names.append(save_png(hpdv2 / f"{seed}.png", seed))
            seed += 1
        rows.append({"prompt": f"prompt {p}", "image_path": names, "rank": ranks})
    (hpdv2 / "test.json").write_text(json.dumps(rows))
    # ImageReward test layout: one row per image, prompt_id, rank (equal ranks tie)
    imagereward = tmp_path / "imagereward"
    imagereward.mkdir()
    ir_rows = []
    for p, ranks in enumerate([[1, 2, 2, 3], [3, 1, 2, 1]]):
        for rank in ranks:
            ir_rows.append({"prompt_id": f"q{p}", "prompt": f"ir prompt {p}",
                            "image_path": save_png(imagereward / f"{seed}.png", seed), "rank": rank})
            seed += 1
    pq.write_table(pa.Table.from_pylist(ir_rows), imagereward / "test.parquet")
    # Pick-a-Pic v2 layout: jpg_0/jpg_1 bytes, label_0/label_1 (0.5/0.5 a tie); a validation split too
    def pickapic_split(labels, first_seed):
        return [{"caption": f"caption {i}", "jpg_0": noise_png(first_seed + 2 * i),
                 "jpg_1": noise_png(first_seed + 2 * i + 1), "label_0": l0, "label_1": 1 - l0}
                for i, l0 in enumerate(labels)]
    test_rows = pickapic_split([1, 0, 0.5, 1, 0, 0.5, 1, 1], 100)
    validation_rows = pickapic_split([1, 0.5, 0, 0.5, 0.5, 1], 200)
    pq.write_table(pa.Table.from_pylist(test_rows), tmp_path / "pickapic_test.parquet")
    pq.write_table(pa.Table.from_pylist(validation_rows), tmp_path / "pickapic_validation.parquet")

    out = tmp_path / "report"
    assert main(["bench", "--model", str(tiny_model), "--data", f"hpdv2={hpdv2 / 'test.json'}",
                 "--data", f"imagereward={imagereward / 'test.parquet'}",
                 "--data", f"pickapic={tmp_path / 'pickapic_test.parquet'}",
                 "--validation", f"pickapic={tmp_path / 'pickapic_validation.parquet'}",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert (out / "table.md").read_text() in printed and "HPDv2 test" in printed

    scores, ranks = [], []
    for row in rows:
        rewards, _ = rewards_of(loss_fn, [hpdv2 / name for name in row["image_path"]], [row["prompt"]] * 4)
        scores.append(rewards)
        ranks.append(row["rank"])
    assert len({round(s, 9) for group in scores for s in group}) == 12  # distinct rewards: the rule has work to do
    assert results["hpdv2"]["accuracy"] == pytest.approx(brute_inversion(scores, ranks), abs=1e-9)
    assert results["hpdv2"]["num_images"] == 12

    scores, ranks = [], []
    for p in range(2):
        group = [row for row in ir_rows if row["prompt_id"] == f"q{p}"]
        rewards, _ = rewards_of(loss_fn, [imagereward / row["image_path"] for row in group],
                                [row["prompt"] for row in group])
        scores.append(rewards)
        ranks.append([row["rank"] for row in group])
    assert results["imagereward"]["accuracy"] == pytest.approx(brute_imagereward(scores, ranks), abs=1e-9)

    weights = np.full(4, 0.25)  # the tiny checkpoint's rubric weighs its four dimensions equally

    def probabilities(split):
        values = []
        for row in split:
            _, (probs_0, probs_1) = rewards_of(loss_fn, [row["jpg_0"], row["jpg_1"]], [row["caption"]] * 2)
            values.append(brute_preference(probs_0, probs_1, weights))
        return np.array(values), [{1: 1, 0: -1, 0.5: 0}[row["label_0"]] for row in split]

    held_probability, held_labels = probabilities(validation_rows)
    grid = sorted({0.0, *np.abs(2 * held_probability - 1)})
    best = max(grid, key=lambda t: (brute_pickapic(held_probability, held_labels, t), -t))
    assert results["pickapic"]["threshold"] == pytest.approx(best, abs=1e-6)
    test_probability, test_labels = probabilities(test_rows)
    assert results["pickapic"]["accuracy"] == pytest.approx(
        brute_pickapic(test_probability, test_labels, results["pickapic"]["threshold"]), abs=1e-9)
    assert results["pickapic"]["num_pairs"] == 8 and results["pickapic"]["threshold_from"] == "validation"


def test_bench_command_errors(tmp_path, tiny_model, capsys):
    def error(*args):
        assert main(["bench", "--model", str(tiny_model), *args]) == 2
        return capsys.readouterr().err

    assert "NAME=PATH" in error("--data", "hpdv2")
    assert "unknown benchmark 'hpsv9'" in error("--data", f"hpsv9={tmp_path}")
    assert "no such file" in error("--data", f"hpdv2={tmp_path / 'missing.json'}")
    assert "give at least one --data" in error()
    (tmp_path / "test.json").write_text("[]")
    assert "--validation names hpdv2 with no --data" in error("--data", f"pickapic={tmp_path / 'test.json'}",
                                                             "--validation", f"hpdv2={tmp_path / 'test.json'}")
    assert "names 'hpdv2' twice" in error("--data", f"hpdv2={tmp_path / 'test.json'}",
                                          "--data", f"hpdv2={tmp_path / 'test.json'}")
    assert "not one saved by `datasets`" in error("--data", f"hpdv2={tmp_path}")
    assert "hpdv2 take none" in error("--data", f"hpdv2={tmp_path / 'test.json'}",
                                      "--validation", f"hpdv2={tmp_path / 'test.json'}")


def test_richhf_reads_only_the_dimensions_the_model_has(tmp_path):
    """A model without `physical_plausibility` is still calibrated on RichHF's other columns."""
    import torch

    from zreward_diffusers import ZRewardLoss
    from zreward_diffusers.testing import build_tiny_scorer

    loss_fn = ZRewardLoss(build_tiny_scorer("qwen2_vl"), dimensions=["alignment", "aesthetics"])
    loss_fn.scorer.rubric = type(loss_fn.rubric)(dimensions=tuple(
        d for d in loss_fn.rubric.dimensions if d.name in ("alignment", "aesthetics")))
    rows = [{"filename": save_png(tmp_path / f"r{i}.png", 700 + i), "prompt": f"rich {i}", "aesthetics_score": s,
             "artifact_score": 0.5, "misalignment_score": 1 - s, "overall_score": s}
            for i, s in enumerate([0.2, 0.6, 0.9])]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with torch.no_grad():
        result = bench.run_benchmark(loss_fn, "richhf", str(tmp_path / "rows.jsonl"), progress=False)
    assert set(result["dimensions"]) == {"alignment", "aesthetics"}


def test_run_benchmarks_refuses_a_misplaced_validation_before_scoring(loss_fn):
    with pytest.raises(ValueError, match="take none"):
        bench.run_benchmarks(loss_fn, {"hpdv2": [], "pickapic": []}, validation={"hpdv2": []})


def test_run_benchmark_refuses_validation_for_other_benchmarks(loss_fn):
    with pytest.raises(ValueError, match="`validation` sets Pick-a-Pic's tie threshold"):
        bench.run_benchmark(loss_fn, "hpdv2", [], validation=[])
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run_benchmark(loss_fn, "hpdv4", [])


def test_bench_hpdv3_genai_bench_and_ratings(tmp_path, tiny_model, loss_fn):
    """HPDv3 pairs, GenAI-Bench votes and the two rated sets, each against an independent computation."""
    import scipy.spatial.distance
    import scipy.stats

    seeds = itertools.count(300)
    # HPDv3 test.json: prompt, path1 (preferred), path2; one image appears in two pairs
    hpdv3 = tmp_path / "hpdv3"
    hpdv3.mkdir()
    names = [save_png(hpdv3 / f"{next(seeds)}.png", seed) for seed in range(300, 306)]
    hpdv3_rows = [{"prompt": "a cat", "path1": names[0], "path2": names[1], "model1": "m", "model2": "n"},
                  {"prompt": "a cat", "path1": names[2], "path2": names[0], "model1": "m", "model2": "n"},
                  {"prompt": "a dog", "path1": names[3], "path2": names[4], "model1": "m", "model2": "n"},
                  {"prompt": "a dog", "path1": names[5], "path2": names[3], "model1": "m", "model2": "n"}]
    (hpdv3 / "test.json").write_text(json.dumps(hpdv3_rows))
    # GenAI-Bench image_generation rows: left/right images (bytes here), a vote of four kinds
    votes = ["leftvote", "rightvote", "tievote", "bothbad_vote", "leftvote", "rightvote"]
    genai_rows = [{"prompt": f"scene {i}", "left_model": "a", "left_image": {"bytes": noise_png(400 + 2 * i)},
                   "right_model": "b", "right_image": {"bytes": noise_png(401 + 2 * i)}, "vote_type": vote}
                  for i, vote in enumerate(votes)]
    pq.write_table(pa.Table.from_pylist(genai_rows), tmp_path / "genai.parquet")
    # EvalMuse-40K train_list.json: per-annotator 1-5 alignment scores
    evalmuse = tmp_path / "evalmuse"
    evalmuse.mkdir()
    scores = [[3, 4, 4], [1, 2, 2], [5, 5, 4], [2, 3, 1], [4, 4, 5], [3, 3, 2]]
    evalmuse_rows = [{"prompt_id": str(i // 2), "prompt": f"muse {i // 2}",
                      "img_path": save_png(evalmuse / f"m{i}.png", 500 + i), "total_score": s}
                     for i, s in enumerate(scores)]
    (evalmuse / "train_list.json").write_text(json.dumps(evalmuse_rows))
    # RichHF-18K rows converted from the TFRecords: filename + [0, 1] scores + the prompt joined in
    richhf = tmp_path / "richhf"
    richhf.mkdir()
    rich_scores = [0.1, 0.75, 0.5, 0.9, 0.3]
    richhf_rows = [{"filename": save_png(richhf / f"r{i}.png", 600 + i), "prompt": f"rich {i}",
                    "aesthetics_score": s, "artifact_score": 1 - s, "misalignment_score": (s * 7) % 1,
                    "overall_score": s} for i, s in enumerate(rich_scores)]
    (richhf / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in richhf_rows))

    results = bench.run_benchmarks(loss_fn, {"hpdv3": str(hpdv3 / "test.json"),
                                             "genai_bench": str(tmp_path / "genai.parquet"),
                                             "evalmuse": str(evalmuse / "train_list.json"),
                                             "richhf": str(richhf / "rows.jsonl")}, progress=False)
    assert list(results) == ["hpdv3", "genai_bench", "richhf", "evalmuse"]  # the table's order

    reward = dict(zip(names, rewards_of(loss_fn, [hpdv3 / n for n in names], ["a cat"] * 3 + ["a dog"] * 3)[0],
                      strict=True))
    right = [reward[row["path1"]] > reward[row["path2"]] for row in hpdv3_rows]
    assert results["hpdv3"]["accuracy"] == pytest.approx(np.mean(right)) and results["hpdv3"]["num_pairs"] == 4

    left, right_side = [], []
    for row in genai_rows:
        values, _ = rewards_of(loss_fn, [row["left_image"]["bytes"], row["right_image"]["bytes"]], [row["prompt"]] * 2)
        left.append(values[0])
        right_side.append(values[1])
    outcome = [{"leftvote": 1, "rightvote": -1}.get(vote, 0) for vote in votes]
    untied = [(a, b, o) for a, b, o in zip(left, right_side, outcome, strict=True) if o != 0]
    assert results["genai_bench"]["accuracy"] == pytest.approx(np.mean([np.sign(a - b) == o for a, b, o in untied]))
    gaps = sorted({abs(a - b) for a, b in zip(left, right_side, strict=True)} | {0.0, 10.0})
    best = max(brute_acc_eq(left, right_side, outcome, eps) for eps in gaps)
    assert results["genai_bench"]["with_ties"]["accuracy"] == pytest.approx(best)
    assert results["genai_bench"]["with_ties"]["num_pairs"] == 6

    # `rewards_of` reads images through the official processor, the bench through the tensor path: their μ differ
    # by ~1e-6, which moves a correlation over six near-equal μ of a random tiny model by up to ~1e-4
    levels = np.linspace(1, 5, 9)
    _, probs = rewards_of(loss_fn, [evalmuse / row["img_path"] for row in evalmuse_rows],
                          [row["prompt"] for row in evalmuse_rows])
    alignment = loss_fn.rubric.dimension_names.index("alignment")
    predicted = np.array([p[alignment] for p in probs])
    human = np.array([np.mean(s) for s in scores])
    entry = results["evalmuse"]["dimensions"]["alignment"]
    assert entry["pearson"] == pytest.approx(scipy.stats.pearsonr(predicted @ levels, human)[0], abs=1e-3)
    assert entry["spearman"] == pytest.approx(scipy.stats.spearmanr(predicted @ levels, human)[0], abs=1e-3)
    histograms = np.array([[s.count(int(v)) if v.is_integer() else 0 for v in levels] for s in scores], float)
    emd = np.mean([scipy.stats.wasserstein_distance(levels, levels, p, h) for p, h in zip(predicted, histograms,
                                                                                            strict=True)])
    assert entry["emd"] == pytest.approx(emd, abs=1e-5)
    js = np.mean([scipy.spatial.distance.jensenshannon(p, h) ** 2 for p, h in zip(predicted, histograms,
                                                                                   strict=True)])
    assert entry["js_divergence"] == pytest.approx(js, abs=1e-5)
    assert set(results["evalmuse"]["dimensions"]) == {"alignment"} and entry["num_histograms"] == 6

    _, probs = rewards_of(loss_fn, [richhf / row["filename"] for row in richhf_rows],
                          [row["prompt"] for row in richhf_rows])
    aesthetics = loss_fn.rubric.dimension_names.index("aesthetics")
    predicted = np.array([p[aesthetics] for p in probs]) @ levels
    entry = results["richhf"]["dimensions"]["aesthetics"]
    assert entry["pearson"] == pytest.approx(scipy.stats.pearsonr(predicted, 1 + 4 * np.array(rich_scores))[0],
                                             abs=1e-3)
    assert "emd" not in entry  # RichHF publishes means only: no histogram, no distribution metric
    assert set(results["richhf"]["dimensions"]) == {"aesthetics", "physical_plausibility", "alignment"}
    table = bench.bench_table(results)
    assert "accuracy w/ ties (tie calibration)" in table and "| EvalMuse-40K | alignment |" in table
