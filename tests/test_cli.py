"""The `zreward` command line, run as a user would (a subprocess on the installed console script)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zreward_diffusers.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("zreward", path=str(Path(sys.executable).parent)) or shutil.which("zreward")
    assert executable, "the `zreward` console script is not installed"
    env = {"HF_HUB_OFFLINE": "1", "PATH": ""}
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=300, env=env)


def test_create_tiny_then_score_prints_one_json_line_per_image(tmp_path):
    created = run_cli("create-tiny", str(tmp_path / "tiny"), "--family", "qwen2_vl")
    assert created.returncode == 0, created.stderr
    paths = []
    for i, size in enumerate([(56, 56), (61, 83)]):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    scored = run_cli("score", "--model", str(tmp_path / "tiny"), "--prompt", "two red circles", *paths)
    assert scored.returncode == 0, scored.stderr
    lines = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths
    for line in lines:
        assert line["prompt"] == "two red circles"
        assert set(line["dimensions"]) == {"alignment", "aesthetics", "realism", "physical_plausibility"}
        for dim in line["dimensions"].values():
            assert len(dim["distribution"]) == 9 and abs(sum(dim["distribution"]) - 1) < 1e-4
            assert 1.0 <= dim["expected"] <= 5.0 and dim["std"] >= 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_create_tiny_other_families(tmp_path, family, capsys):
    assert main(["create-tiny", str(tmp_path / family), "--family", family]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == family
    assert (tmp_path / family / "zreward_config.json").is_file()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["score", "--model", str(tmp_path), "--prompt", "x", "missing.png"]) == 2
    assert "not a Z-Reward checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--family must be one of"):
        main(["create-tiny", str(tmp_path / "x"), "--family", "llama"])
