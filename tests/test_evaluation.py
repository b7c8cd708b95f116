"""`zreward eval` and the dataset evaluation on the synthetic world; `training.make_synthetic`."""

import hashlib
import json

import numpy as np
import pytest

from zreward_diffusers.cli import main
from zreward_diffusers.data import RewardDataset
from zreward_diffusers.evaluation import dataset_targets, evaluate_probs
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
