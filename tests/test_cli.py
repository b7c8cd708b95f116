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


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """A user error: exit status 2 and a single `zreward: error:` line naming what was wrong (no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("zreward:")]  # besides progress bars
    assert len(lines) == 1 and lines[0].startswith("zreward: error:"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["create-tiny", str(path)]) == 0
    return path


def test_errors_are_reported_not_raised(tmp_path, capsys):
    one_line_error(in_process(capsys, "score", "--model", str(tmp_path), "--prompt", "x", "missing.png"),
                   "not a Z-Reward checkpoint")
    one_line_error(in_process(capsys, "create-tiny", str(tmp_path / "x"), "--family", "llama"),
                   "--family must be one of")


def test_a_missing_model_path_is_one_line_not_a_hub_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("./nowhere", "runs/demo/model", str(tmp_path / "missing")):
        one_line_error(in_process(capsys, "score", "--model", model, "--prompt", "x", "a.png"), "no such directory",
                       model)
    # an `org/name` that is not a local folder is tried on the hub: offline, that fails in one line too
    one_line_error(run_cli("score", "--model", "someone/nothing", "--prompt", "x", "a.png"), "someone/nothing",
                   "hub")


def test_missing_data_bad_device_and_bad_sizes_are_one_line(tmp_path, tiny, capsys):
    one_line_error(in_process(capsys, "eval", "--model", str(tiny), "--data", str(tmp_path / "none")), "--data")
    (tmp_path / "empty").mkdir()
    one_line_error(in_process(capsys, "eval", "--model", str(tiny), "--data", str(tmp_path / "empty")),
                   str(tmp_path / "empty"))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8)).save(image)
    one_line_error(in_process(capsys, "score", "--model", str(tiny), "--device", "bogus", "--prompt", "x",
                              str(image)), "--device 'bogus'")
    for size in ("-1", "0", "two"):
        with pytest.raises(SystemExit) as stop:  # argparse: usage, then one error line, exit status 2
            main(["score", "--model", str(tiny), "--batch-size", size, "--prompt", "x", str(image)])
        assert stop.value.code == 2 and "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny), "--data", str(tmp_path), "--limit", "0"])
    assert "--limit" in capsys.readouterr().err


def test_a_decompression_bomb_image_is_one_line(tmp_path, tiny, capsys, monkeypatch):
    image = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is then a bomb (more than twice the limit)
    one_line_error(in_process(capsys, "score", "--model", str(tiny), "--prompt", "x", str(image)), "bomb.png")


def test_create_tiny_never_destroys_a_folder_it_did_not_write(tmp_path):
    """`mkdir -p runs/exp1 && echo x > runs/exp1/metrics.json && zreward create-tiny runs` deleted runs/exp1."""
    (tmp_path / "runs" / "exp1").mkdir(parents=True)
    (tmp_path / "runs" / "exp1" / "metrics.json").write_text("x")
    one_line_error(run_cli("create-tiny", str(tmp_path / "runs")), "--overwrite")
    assert (tmp_path / "runs" / "exp1" / "metrics.json").read_text() == "x"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # no staging copy left behind
    assert run_cli("create-tiny", str(tmp_path / "runs"), "--overwrite").returncode == 0
    assert (tmp_path / "runs" / "zreward_config.json").is_file() and not (tmp_path / "runs" / "exp1").exists()
    assert run_cli("create-tiny", str(tmp_path / "runs")).returncode == 0  # ours now: replaced without a flag


def test_eval_checks_its_data_before_the_model_and_takes_the_data_switches(tmp_path, tiny, capsys):
    """`zreward eval` on data with a corrupt image or an image outside its folder: one line naming the row, before
    the model loads; `--no-verify-images` / `--allow-outside-root` are the documented ways past each check."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((56, 56, 3), 128, dtype=np.uint8)).save(data / name)
    Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8)).save(tmp_path / "outside.png")
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    def table(*images: str) -> str:
        path = data / "records.jsonl"
        path.write_text("".join(json.dumps({"record_id": f"r{i}", "group_id": "g", "prompt": "a red circle",
                                            "image": image, "scores": {"alignment": 3.0 + i}}) + "\n"
                                for i, image in enumerate(images)))
        return str(path)

    line = one_line_error(in_process(capsys, "eval", "--model", str(tiny), "--data", table("a.png", "corrupt.png")),
                          "corrupt.png")
    assert "Loading weights" not in capsys.readouterr().err  # refused before the model was loaded
    assert "line 2" in line or "row 2" in line or "[1]" in line, line
    one_line_error(in_process(capsys, "eval", "--model", str(tiny), "--data", table("a.png", "../outside.png")),
                   "outside.png")
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny), "--data", table("a.png", "../outside.png"), "--allow-outside-root",
                 "--out", str(out)]) == 0
    assert main(["eval", "--model", str(tiny), "--data", table("a.png", "b.png"), "--no-verify-images",
                 "--out", str(out / "again")]) == 0
