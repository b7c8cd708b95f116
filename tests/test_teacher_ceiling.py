"""`benchmarks.teacher_ceiling`: the teacher's score read after the world's true rationale of each record."""

import json
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.teacher_ceiling import main, true_rationale_probs
from training.data import DataSpec, ImageBank, load_split
from training.sequences import RowEncoder
from training.trainer import load_base
from zreward_diffusers.testing import create_tiny_checkpoint


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    create_tiny_checkpoint(path, "qwen2_vl")
    return path


def test_the_read_follows_the_rationale_and_not_the_batch(teacher):
    model, processor, rubric = load_base(str(teacher))
    model.eval()
    dataset = load_split(DataSpec(start=100_000, num_groups=2))
    encoder = RowEncoder(processor, rubric, ImageBank(dataset).images)
    dimensions = tuple(dataset.dimensions)
    probs = true_rationale_probs(model, encoder, dataset, dimensions, batch_size=32)
    assert probs.shape == (8, 4, 9) and np.allclose(probs.sum(-1), 1.0)
    one_by_one = true_rationale_probs(model, encoder, dataset, dimensions, batch_size=1)  # left padding is masked
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
    record = dataset.records[0]
    changed = replace(record, rationales={**record.rationales, "alignment": "It is a picture. Nothing matches."})
    moved = true_rationale_probs(model, encoder, replace(dataset, records=[changed, *dataset.records[1:]]), dimensions)
    assert not np.allclose(moved[0, 0], probs[0, 0]) and np.allclose(moved[0, 1:], probs[0, 1:], atol=1e-5)
    assert np.allclose(moved[1:], probs[1:], atol=1e-5)
    silent = replace(record, rationales={})
    with pytest.raises(ValueError, match="no rationale"):
        true_rationale_probs(model, encoder, replace(dataset, records=[silent, *dataset.records[1:]]), dimensions)


def test_the_command_prints_and_writes_the_ceiling(teacher, tmp_path, capsys):
    result = main(["--teacher", str(teacher), "--num_groups", "3", "--out", str(tmp_path / "c.json")])
    assert result["ci"][0] <= result["true_rationale_accuracy"] <= result["ci"][1]
    assert set(result["per_dimension"]) == {"alignment", "aesthetics", "realism", "physical_plausibility"}
    assert "the world's true rationale" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["num_groups"] == 3
