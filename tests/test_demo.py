"""`make demo`'s driver: the quick profile end to end (what `make demo QUICK=1` runs), its report and its caching."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from recipes.demo import (
    TRAINING_CONFIGS,
    build_stages,
    load_profile,
    main,
    schedule,
    validate_schedule,
)

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("contact_sheet", "preference_accuracy", "samples", "reliability", "before_after", "training_curves")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    result = subprocess.run([sys.executable, "-m", "recipes.demo", "--profile", "quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _table_rows(report: str, first_cell: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(f"| {first_cell}")]


def test_quick_demo_writes_the_report_with_numbers(quick_demo):
    out, result = quick_demo
    report = (out / "report.md").read_text()
    for heading in ("## Base models", "## Reward models", "## Score distributions", "## Reward tuning",
                    "## Training curves", "## Stage wall times"):
        assert heading in report
    rows = {label: _table_rows(report, label) for label in
            ("teacher, cold-start SFT", "teacher, GDSO", "**student, RISD**", "baseline: scalar Bradley-Terry",
             "baseline: student trained", "ceiling: the oracle", "ceiling: one annotator")}
    for label, lines in rows.items():
        assert lines, f"no table row for {label}"
        accuracy = float(lines[0].split("|")[2])
        assert 0.0 <= accuracy <= 1.0, (label, accuracy)
    gsb = _table_rows(report, "8 images")[0]
    net = re.search(r"\*\*([+-]\d\.\d+)\*\*", gsb)
    assert net and -1.0 <= float(net.group(1)) <= 1.0
    numbers = json.loads((out / "report.json").read_text())
    assert set(numbers["accuracy"]) == {"teacher_sft", "teacher_gdso", "student_risd", "bradley_terry", "direct"}
    assert all(math.isfinite(v) for v in numbers["accuracy"].values())
    assert numbers["ceiling"]["oracle"] > 0.8  # the oracle agrees with its own panel
    assert set(numbers["timings"]) == {stage.name for stage in build_stages(out, "quick")}
    assert "demo summary: teacher SFT" in result.stdout


def test_quick_demo_figures_exist_and_are_linked(quick_demo):
    out, _ = quick_demo
    report = (out / "report.md").read_text()
    for name in FIGURES:
        path = out / "figures" / f"{name}.png"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 150, name
            assert len(np.unique(np.asarray(image.convert("L").resize((64, 64))))) > 8, f"{name} looks blank"
        assert f"(figures/{name}.png)" in report


def test_finished_stages_are_not_run_again(quick_demo):
    out, _ = quick_demo
    before = json.loads((out / "timings.json").read_text())
    stamps = {p: p.stat().st_mtime for p in out.glob("*/metrics.json")}
    main(["--profile", "quick", "--out", str(out)])
    assert json.loads((out / "timings.json").read_text()) == before
    assert {p: p.stat().st_mtime for p in out.glob("*/metrics.json")} == stamps


def test_stage_configs_are_written_and_load(tmp_path):
    from training.config import load_config
    from training.sft import SFTConfig

    stages = build_stages(tmp_path, "demo")
    assert [s.name for s in stages][:1] == ["data"] and {s.lane for s in stages} == {"A", "B", "C"}
    direct = load_config(SFTConfig, tmp_path / "configs" / "direct.yaml")
    assert direct.reasoning is False and direct.steps == load_profile("demo").direct["steps"]
    assert direct.base == str(tmp_path / "base_student" / "student")
    base = yaml.safe_load((tmp_path / "configs" / "base_teacher.yaml").read_text())
    assert list(base["models"]) == ["teacher"] and base["steps"] == load_profile("demo").base_teacher["steps"]
    # the demo keeps the input its documented numbers were measured with; the full profile reads the shipped config
    assert (base["patch_size"], base["min_pixels"], base["max_pixels"]) == (14, 112 * 112, 112 * 112)
    assert base["models"]["teacher"]["vision_config"] == {"embed_dim": 96, "depth": 3, "num_heads": 6,
                                                          "initializer_range": 0.06}
    assert base["num_train_images"] == 8192
    student = yaml.safe_load((tmp_path / "configs" / "base_student.yaml").read_text())
    assert base["optimizer"] == student["optimizer"] == "adamw"
    build_stages(tmp_path / "full", "full")
    shipped = yaml.safe_load((TRAINING_CONFIGS / "pretrain_base_tiny.yaml").read_text())
    for model in ("teacher", "student"):
        full = yaml.safe_load((tmp_path / "full" / "configs" / f"base_{model}.yaml").read_text())
        assert (full["patch_size"], full["min_pixels"]) == (shipped["patch_size"], shipped["min_pixels"]) == (7, 3136)
        assert full["models"][model] == shipped["models"][model]
        assert base["models"]["teacher"]["text_config"] == shipped["models"]["teacher"]["text_config"]
    names = {s.name for s in stages}
    assert all(set(s.after) <= names for s in stages)


def test_bad_profile_and_reused_output_directory_are_refused(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        build_stages(tmp_path, "huge")
    (tmp_path / "profile.txt").write_text("quick\n")
    with pytest.raises(SystemExit, match="--out"):
        main(["--profile", "demo", "--out", str(tmp_path)])


def test_profile_files_are_checked_by_the_stages_configs(tmp_path):
    """A profile is a YAML file: an unknown stage, a key its stage's config lacks, and a bad value are refused with
    the key named; a valid file is used as given."""
    shipped = yaml.safe_load((ROOT / "recipes" / "profiles" / "demo_quick.yaml").read_text())

    def profile(**changes):
        path = tmp_path / f"profile{len(list(tmp_path.glob('*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump({**shipped, **changes}))
        return str(path)

    with pytest.raises(ValueError, match="unknown config keys.*'teacher_rl'"):
        build_stages(tmp_path / "a", profile(teacher_rl={"steps": 3}))
    with pytest.raises(ValueError, match="unknown config keys.*'stepz'"):
        build_stages(tmp_path / "b", profile(teacher_sft={"stepz": 3}))
    with pytest.raises(ValueError, match="vision.steps"):
        build_stages(tmp_path / "c", profile(base_student={"vision": {"steps": -1}}))
    with pytest.raises(ValueError, match="`n`"):
        build_stages(tmp_path / "d", profile(data={"n": 0}))
    build_stages(tmp_path / "e", profile(teacher_sft={"steps": 5, "train_data": {"num_groups": 7}}))
    sft = yaml.safe_load((tmp_path / "e" / "configs" / "teacher_sft.yaml").read_text())
    assert (sft["steps"], sft["train_data"]["num_groups"], sft["eval_data"]["num_groups"]) == (5, 7, 6)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_demo_quick_runs_the_quick_profile():
    """`make demo QUICK=1` is the command the quick fixture above runs (a dry run of the Makefile)."""
    def dry_run(*args):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "QUICK")}
        return subprocess.run(["make", "--no-print-directory", "-n", "demo", *args], cwd=ROOT, capture_output=True,
                              text=True, check=True, env=env).stdout

    assert "-m recipes.demo --profile quick --out runs/demo_quick\n" in dry_run("QUICK=1")
    assert "-m recipes.demo --profile demo --out runs/demo\n" in dry_run()


def test_schedules_never_wait_for_a_later_stage(tmp_path):
    stages = build_stages(tmp_path, "quick")
    for sequential in (False, True):
        validate_schedule(stages, schedule(sequential))
    with pytest.raises(ValueError, match="student_risd"):  # the reward chain needs the student base of lane B
        validate_schedule(stages, [["A"], ["B"], ["C"]])


def test_a_profile_vision_steps_replaces_the_models_own(tmp_path, monkeypatch):
    # the base config with a model's own vision_steps (the student's 28,000 steps against the config's 20,000) and
    # stage-1 steps (the teacher's 750 against the config's 1,000)
    import recipes.demo as demo

    configs = tmp_path / "training_configs"
    shutil.copytree(demo.TRAINING_CONFIGS, configs)
    base = yaml.safe_load((configs / "pretrain_base_tiny.yaml").read_text())
    base["vision"]["steps"] = 20000
    base["models"]["student"]["vision_steps"] = 28000
    base["models"]["teacher"]["steps"] = 750
    (configs / "pretrain_base_tiny.yaml").write_text(yaml.safe_dump(base))
    monkeypatch.setattr(demo, "TRAINING_CONFIGS", configs)
    for profile, expected in (("quick", {"teacher": 10, "student": 10}), ("demo", {"teacher": 0, "student": 0}),
                              ("full", {"teacher": 20000, "student": 28000})):
        build_stages(tmp_path / profile, profile)
        for model, steps in expected.items():
            config = yaml.safe_load((tmp_path / profile / "configs" / f"base_{model}.yaml").read_text())
            assert config["models"][model].get("vision_steps", config["vision"]["steps"]) == steps, (profile, model)
    for profile, steps in (("quick", 40), ("demo", 1200), ("full", 750)):  # the teacher's stage 1
        config = yaml.safe_load((tmp_path / profile / "configs" / "base_teacher.yaml").read_text())
        assert config["models"]["teacher"].get("steps", config["steps"]) == steps, profile
