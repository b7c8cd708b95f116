"""`zreward eval` and the dataset evaluation on the synthetic world; `training.make_synthetic`."""

import hashlib
import json

import numpy as np
import pytest

from zreward_diffusers.cli import main
from zreward_diffusers.data import RewardDataset
from zreward_diffusers.evaluation import dataset_targets, evaluate_probs, preference_accuracy_ci
from zreward_diffusers.synthetic import SyntheticWorld
from zreward_diffusers.synthetic.export import to_reward_dataset
from zreward_diffusers.testing import create_tiny_checkpoint


@pytest.fixture(scope="module")
def world_dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("world") / "data"
    to_reward_dataset(SyntheticWorld(seed=3).groups(12)).save(directory)
    return RewardDataset.load(directory)


def one_hot_probs(scores: np.ndarray, levels) -> np.ndarray:
    index = np.abs(scores[..., None] - np.asarray(levels)).argmin(-1)
    return np.eye(len(levels))[index]


def test_targets_cover_labels_histograms_and_panel_pairs(world_dataset):
    targets = dataset_targets(world_dataset)
    assert targets["labels"].shape == (48, 4) and targets["histograms"].shape == (48, 4, 9)
    index, outcome = targets["dimension_pairs"]
    assert index.shape == (72, 2) and outcome.shape == (72, 4)  # 12 groups x 6 pairs
    assert targets["overall_pairs"][0].shape == (72, 2)


def test_the_oracle_scores_well_and_a_constant_model_scores_chance(world_dataset):
    oracle = np.array([[r.meta["oracle"][d] for d in world_dataset.dimensions] for r in world_dataset.records])
    report = evaluate_probs(one_hot_probs(oracle, world_dataset.levels), world_dataset)
    for name in world_dataset.dimensions:
        assert report[name]["pairwise_accuracy"]["accuracy"] > 0.75
        assert report[name]["correlations"]["spearman"] > 0.6
    assert report["overall"]["pair_accuracy"]["accuracy"] > 0.8
    uniform = np.full((48, 4, 9), 1 / 9)
    flat = evaluate_probs(uniform, world_dataset)
    assert flat["alignment"]["pairwise_accuracy"]["accuracy"] == 0.5  # every predicted pair ties: ½ each
    assert flat["alignment"]["emd"] > report["alignment"]["emd"]


def test_preference_accuracy_ci_is_the_trainers_accuracy_with_a_bootstrap_over_prompt_groups(world_dataset):
    rng = np.random.default_rng(0)
    oracle = np.array([[r.meta["oracle"][d] for d in world_dataset.dimensions] for r in world_dataset.records])
    # right on whole groups, wrong on others (so resampling groups and resampling pairs give different intervals),
    # rounded so that some pairs are predicted ties
    sign = np.array([1.0 if r.group_id in set(r.group_id for r in world_dataset.records[::8]) else -1.0
                     for r in world_dataset.records])
    scores = np.round(sign[:, None] * oracle + rng.normal(0, 0.3, oracle.shape))
    result = preference_accuracy_ci(scores, world_dataset, num_resamples=2000, seed=1)
    # the estimate, by hand: per dimension over the panel's untied pairs (a predicted tie ½), then the mean
    index, outcome = dataset_targets(world_dataset)["dimension_pairs"]
    by_hand = []
    for d in range(4):
        gap, human = scores[index[:, 0], d] - scores[index[:, 1], d], outcome[:, d]
        keep = human != 0
        by_hand.append(np.mean(np.where(gap[keep] == 0, 0.5, np.sign(gap[keep]) == np.sign(human[keep]))))
    assert result["estimate"] == pytest.approx(np.mean(by_hand), abs=1e-12)
    assert result["num_groups"] == 12
    # the interval against a brute-force bootstrap that redraws whole groups (12 groups of 6 pairs each)
    group_of_pair = np.array([world_dataset.records[i].group_id for i in index[:, 0]])
    names = sorted(set(group_of_pair))
    draws = []
    for _ in range(4000):
        picked = rng.choice(len(names), len(names))
        rows = np.concatenate([np.flatnonzero(group_of_pair == names[g]) for g in picked])
        per_dimension = []
        for d in range(4):
            gap, human = scores[index[rows, 0], d] - scores[index[rows, 1], d], outcome[rows, d]
            keep = human != 0
            per_dimension.append(np.mean(np.where(gap[keep] == 0, 0.5, np.sign(gap[keep]) == np.sign(human[keep]))))
        draws.append(np.mean(per_dimension))
    lower, upper = np.quantile(draws, [0.025, 0.975])
    assert result["lower"] == pytest.approx(lower, abs=0.02) and result["upper"] == pytest.approx(upper, abs=0.02)
    assert result["lower"] < result["estimate"] < result["upper"]
    with pytest.raises(ValueError, match="`scores` must have shape"):
        preference_accuracy_ci(scores[:, :3], world_dataset)
    with pytest.raises(ValueError, match="`scores` holds NaN"):
        preference_accuracy_ci(np.where(scores > 3, np.nan, scores), world_dataset)


def test_zreward_eval_writes_json_markdown_and_reliability_png(world_dataset, tmp_path, capsys):
    create_tiny_checkpoint(tmp_path / "tiny", "qwen2_vl")
    assert main(["eval", "--model", str(tmp_path / "tiny"), "--data", str(world_dataset.root),
                 "--out", str(tmp_path / "report"), "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| dimension |") and "| overall |" in out
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["num_records"] == 20
    for name in ("alignment", "aesthetics", "realism", "physical_plausibility"):
        assert 0.0 <= report[name]["pairwise_accuracy"]["accuracy"] <= 1.0
        assert len(report[name]["ece"]["bin_count"]) > 0
    assert (tmp_path / "report" / "metrics.md").read_text().count("\n| ") == 6
    from PIL import Image

    with Image.open(tmp_path / "report" / "reliability.png") as image:
        assert image.width > 600


def _digest(directory) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_make_synthetic_is_byte_identical_by_seed_and_worker_count(tmp_path, capsys):
    from training.make_synthetic import main as make_synthetic

    assert make_synthetic(["--out", str(tmp_path / "a"), "--n", "30", "--seed", "4", "--workers", "1"]) == 0
    assert make_synthetic(["--out", str(tmp_path / "b"), "--n", "30", "--seed", "4", "--workers", "2"]) == 0
    assert make_synthetic(["--out", str(tmp_path / "c"), "--n", "30", "--seed", "5", "--workers", "1",
                           "--contact-sheet", str(tmp_path / "sheet.png")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["images"] == 30 and summary["groups"] == 8
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    dataset = RewardDataset.load(tmp_path / "a")
    assert len(dataset) == 30 and all(len(r.rationales) == 4 for r in dataset.records)
    assert (tmp_path / "sheet.png").stat().st_size > 10_000


def test_make_synthetic_replaces_its_own_dataset_but_not_a_foreign_folder(tmp_path, capsys):
    """`--out runs` with another run inside `runs` deleted it (the dataset save was forced)."""
    from training.make_synthetic import main as make_synthetic

    (tmp_path / "runs" / "exp1").mkdir(parents=True)
    (tmp_path / "runs" / "exp1" / "metrics.json").write_text("x")
    with pytest.raises(SystemExit) as stop:
        make_synthetic(["--out", str(tmp_path / "runs"), "--n", "8", "--workers", "1"])
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "runs" / "exp1" / "metrics.json").read_text() == "x"
    assert make_synthetic(["--out", str(tmp_path / "data"), "--n", "8", "--workers", "1"]) == 0
    assert make_synthetic(["--out", str(tmp_path / "data"), "--n", "12", "--workers", "1"]) == 0  # its own: replaced
    assert len(RewardDataset.load(tmp_path / "data")) == 12
    assert make_synthetic(["--out", str(tmp_path / "runs"), "--n", "8", "--workers", "1", "--overwrite"]) == 0
    assert not (tmp_path / "runs" / "exp1").exists()
