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
    WORLD,
    build_stages,
    load_profile,
    main,
    schedule,
    validate_schedule,
)

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("contact_sheet", "preference_accuracy", "samples", "reliability", "attribution", "before_after",
           "training_curves")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    result = subprocess.run([sys.executable, "-m", "recipes.demo", "--profile", "quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _table_rows(report: str, first_cell: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(f"| {first_cell}")]


REWARD_STAGES = {"teacher_sft", "sft_only", "teacher_grpo", "bradley_terry", "rewarddance", "teacher_gdso", "direct",
                 "student_opd", "student_risd"}


def test_quick_demo_writes_the_report_with_numbers(quick_demo):
    out, result = quick_demo
    report = (out / "report.md").read_text()
    for heading in ("## Base models", "## The paper's three orderings", "## Reward models", "## Score distributions",
                    "## Reward tuning", "## Training curves", "## Stage wall times"):
        assert heading in report
    numbers = json.loads((out / "report.json").read_text())
    rows = {label: _table_rows(report, label) for label in
            ("cold start (SFT", "SFT only", "GRPO", "scalar Bradley-Terry", "RewardDance-style", "**GDSO**",
             "trained on the panel's labels only", "OPD", "**RISD**", "the oracle vs the panel",
             "one annotator vs the rest")}
    for label, lines in rows.items():
        assert lines, f"no table row for {label}"  # the reward table's row comes first
        cells = [cell.strip() for cell in lines[0].split("|")]
        accuracy = float(cells[2])
        assert 0.0 <= accuracy <= 1.0, (label, accuracy)
        if not label.startswith(("the oracle", "one annotator")):  # every reward model's accuracy has its interval
            lower, upper = map(float, cells[3].strip("[]").split(","))
            assert lower <= accuracy <= upper, (label, cells[3])
    assert set(numbers["accuracy"]) == set(numbers["accuracy_ci"]) == REWARD_STAGES
    for stage, interval in numbers["accuracy_ci"].items():  # the interval's estimate is the trainer's own accuracy
        assert interval["estimate"] == pytest.approx(numbers["accuracy"][stage], abs=1e-9), stage
    gsb = _table_rows(report, "8 images")[0]
    net = re.search(r"\*\*([+-]\d\.\d+)\*\*", gsb)
    assert net and -1.0 <= float(net.group(1)) <= 1.0
    assert all(math.isfinite(v) for v in numbers["accuracy"].values())
    assert numbers["ceiling"]["oracle"] > 0.8  # the oracle agrees with its own panel
    assert [claim["verdict"] in ("holds", "does not hold") for claim in numbers["orderings"]] == [True] * 3
    assert set(numbers["timings"]) == {stage.name for stage in build_stages(out, "quick")}
    assert "demo summary: GDSO" in result.stdout and "orderings: (1)" in result.stdout
    # the shipped bases were used, not trained: the base table quotes their manifest
    assert not (out / "base_teacher").exists() and "shipped: world/base_teacher" in report


def test_quick_demo_baselines_share_the_budget_and_the_cold_start(quick_demo):
    out, _ = quick_demo
    metrics = {name: json.loads((out / name / "metrics.json").read_text()) for name in REWARD_STAGES}
    cold, gdso = metrics["teacher_sft"]["steps"], metrics["teacher_gdso"]["steps"]
    # SFT only is the cold start's own run trained on: it resumed from the cold start's last training state
    assert metrics["sft_only"]["resumed_from_step"] == cold and metrics["sft_only"]["steps"] == cold + gdso
    assert metrics["teacher_grpo"]["steps"] == gdso
    assert metrics["bradley_terry"]["steps"] == metrics["rewarddance"]["steps"] == cold + gdso
    assert metrics["direct"]["steps"] == metrics["student_opd"]["steps"] == metrics["student_risd"]["steps"]
    grpo = yaml.safe_load((out / "configs" / "teacher_grpo.yaml").read_text())
    assert grpo["objective"] == "grpo" and grpo["base"] == str(out / "teacher_sft" / "model")


def test_quick_demo_figures_exist_and_are_linked(quick_demo):
    out, _ = quick_demo
    report = (out / "report.md").read_text()
    for name in FIGURES:
        path = out / "figures" / f"{name}.png"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 150, name
            assert len(np.unique(np.asarray(image.convert("L").resize((64, 64))))) > 8, f"{name} looks blank"
        assert f"(figures/{name}.png)" in report


def test_an_interrupted_demo_resumes_to_the_same_numbers(quick_demo, tmp_path):
    """The quick demo killed (SIGKILL to its whole process group: nothing gets to clean up) while its stages run,
    then run again on the same --out, prints the numbers of the uninterrupted run. (SIGKILL, not SIGINT: a
    process started in the background by a non-interactive shell, as CI runs the tests, ignores SIGINT.)"""
    import signal
    import time

    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "recipes.demo", "--profile", "quick", "--out", str(out)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while not (out / "teacher_sft" / "metrics.json").exists():  # stop it once a stage has finished
        assert first.poll() is None and time.monotonic() < deadline, "the demo ended before it could be interrupted"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode != 0 and not (out / "report.json").exists()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, whole = (json.loads((path / "report.json").read_text()) for path in (out, quick_demo[0]))
    assert resumed["accuracy"] == whole["accuracy"]
    assert resumed["gsb"] == whole["gsb"]
    assert resumed["accuracy_ci"] == whole["accuracy_ci"]


def test_finished_stages_are_not_run_again(quick_demo):
    out, _ = quick_demo
    before = json.loads((out / "timings.json").read_text())
    stamps = {p: p.stat().st_mtime for p in out.glob("*/metrics.json")}
    main(["--profile", "quick", "--out", str(out)])
    assert json.loads((out / "timings.json").read_text()) == before
    assert {p: p.stat().st_mtime for p in out.glob("*/metrics.json")} == stamps


def test_stage_configs_are_written_and_load(tmp_path):
    from training.config import load_config
    from training.scalar_baselines import ScalarConfig
    from training.sft import SFTConfig

    stages = build_stages(tmp_path, "demo")
    assert [s.name for s in stages][:1] == ["data"] and {s.lane for s in stages} == {"A", "B", "C"}
    # from the shipped bases: no pretraining stage, and the generator too when world/ ships one
    assert not {"base_teacher", "base_student"} & {s.name for s in stages}
    direct = load_config(SFTConfig, tmp_path / "configs" / "direct.yaml")
    assert direct.reasoning is False and direct.steps == load_profile("demo").student_risd["steps"]
    assert direct.base == str(WORLD / "base_student")
    bt = load_config(ScalarConfig, tmp_path / "configs" / "bradley_terry.yaml")
    profile = load_profile("demo")
    assert bt.base == str(WORLD / "base_teacher")
    assert bt.steps == profile.teacher_sft["steps"] + profile.teacher_gdso["steps"]
    names = {s.name for s in stages}
    assert all(set(s.after) <= names for s in stages)

    scratch = build_stages(tmp_path / "scratch", "demo", from_scratch=True)
    assert {"base_teacher", "base_student", "generator"} <= {s.name for s in scratch}
    generator = yaml.safe_load((tmp_path / "scratch" / "configs" / "generator.yaml").read_text())
    assert generator["noise_schedule"] == "zero_terminal_snr" and generator["normalize_latents"] is True
    assert generator["unet_steps"] == load_profile("demo").generator["unet_steps"]
    direct = load_config(SFTConfig, tmp_path / "scratch" / "configs" / "direct.yaml")
    assert direct.base == str(tmp_path / "scratch" / "base_student" / "student")
    base = yaml.safe_load((tmp_path / "scratch" / "configs" / "base_teacher.yaml").read_text())
    assert list(base["models"]) == ["teacher"] and base["steps"] == load_profile("demo").base_teacher["steps"]
    # the demo keeps the input its documented numbers were measured with; the full profile reads the shipped config
    assert (base["patch_size"], base["min_pixels"], base["max_pixels"]) == (14, 112 * 112, 112 * 112)
    assert base["models"]["teacher"]["vision_config"] == {"embed_dim": 96, "depth": 3, "num_heads": 6,
                                                          "initializer_range": 0.06}
    assert base["num_train_images"] == 8192
    student = yaml.safe_load((tmp_path / "scratch" / "configs" / "base_student.yaml").read_text())
    assert base["optimizer"] == student["optimizer"] == "adamw"
    build_stages(tmp_path / "full", "full", from_scratch=True)
    shipped = yaml.safe_load((TRAINING_CONFIGS / "pretrain_base_tiny.yaml").read_text())
    for model in ("teacher", "student"):
        full = yaml.safe_load((tmp_path / "full" / "configs" / f"base_{model}.yaml").read_text())
        assert (full["patch_size"], full["min_pixels"]) == (shipped["patch_size"], shipped["min_pixels"]) == (7, 3136)
        assert full["models"][model] == shipped["models"][model]
        assert base["models"]["teacher"]["text_config"] == shipped["models"]["teacher"]["text_config"]


def test_without_shipped_bases_the_demo_asks_for_them_or_from_scratch(tmp_path):
    with pytest.raises(ValueError, match="--from-scratch"):
        build_stages(tmp_path / "out", "quick", world=tmp_path / "empty_world")
    stages = build_stages(tmp_path / "out2", "quick", from_scratch=True, world=tmp_path / "empty_world")
    assert {"base_teacher", "base_student", "generator"} <= {s.name for s in stages}
    cosine = tmp_path / "cosine.yaml"
    cosine.write_text(yaml.safe_dump(dict(yaml.safe_load((ROOT / "recipes/profiles/demo_quick.yaml").read_text()),
                                          teacher_sft={"steps": 8, "lr_scheduler": "cosine"})))
    with pytest.raises(ValueError, match="teacher_sft.lr_scheduler"):
        build_stages(tmp_path / "out3", str(cosine))


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
    build_stages(tmp_path / "e", profile(teacher_sft={"steps": 5, "train_data": {"num_groups": 7},
                                                      "lr_scheduler": "constant"}))
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
    for from_scratch in (False, True):
        stages = build_stages(tmp_path / str(from_scratch), "quick", from_scratch=from_scratch)
        for sequential in (False, True):
            validate_schedule(*schedule(stages, sequential))
    with pytest.raises(ValueError, match="student_risd"):  # the reward chain needs the student base of lane B
        validate_schedule(stages, [["A"], ["B"], ["C"]])
    shipped = build_stages(tmp_path / "shipped", "quick")
    with pytest.raises(ValueError, match="sft_only"):  # the baselines of lane B start from the cold start of lane A
        validate_schedule(shipped, [["B"], ["A"], ["C"]])


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
        build_stages(tmp_path / profile, profile, from_scratch=True)
        for model, steps in expected.items():
            config = yaml.safe_load((tmp_path / profile / "configs" / f"base_{model}.yaml").read_text())
            assert config["models"][model].get("vision_steps", config["vision"]["steps"]) == steps, (profile, model)
    for profile, steps in (("quick", 40), ("demo", 1200), ("full", 750)):  # the teacher's stage 1
        config = yaml.safe_load((tmp_path / profile / "configs" / "base_teacher.yaml").read_text())
        assert config["models"]["teacher"].get("steps", config["steps"]) == steps, profile


def test_seed_reaches_every_reward_model_and_no_other_stage(tmp_path):
    configs = {}
    for seed in (0, 3):
        build_stages(tmp_path / str(seed), "demo", seed=seed)
        configs[seed] = {p.stem: yaml.safe_load(p.read_text().replace(str(tmp_path / str(seed)), "OUT"))
                         for p in (tmp_path / str(seed) / "configs").glob("*")}
    for name in REWARD_STAGES:
        assert configs[0][name]["seed"] == 0 and configs[3][name]["seed"] == 3, name
        # nothing but the seed differs between the seeds
        changed = {k for k in configs[0][name] if configs[0][name][k] != configs[3][name][k]}
        assert changed <= {"seed", "cache_seed"}, (name, changed)
    assert configs[3]["student_risd"]["cache_seed"] == 3 and configs[0]["student_risd"]["cache_seed"] == 0
    # DRaFT's seed draws the prompt split the GSB's test prompts are disjoint from: it stays
    assert configs[3]["draft"] == configs[0]["draft"] and configs[3]["draft"]["seed"] == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`seed`"):
            build_stages(tmp_path / "bad", "quick", seed=bad)
    # a run directory of one seed is not reused for another
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profile.txt").write_text("demo\n")
    with pytest.raises(SystemExit, match="--seed 2"):
        main(["--profile", "demo", "--out", str(tmp_path / "run"), "--seed", "2"])


def test_gdso_budget_in_segments_is_one_run_measured_on_the_way(quick_demo, tmp_path):
    from benchmarks.gdso_budget import budget_curve
    from benchmarks.gdso_budget import main as budget_main
    from training.config import load_config
    from training.gdso import GDSOConfig, GDSOTrainer

    out, _ = quick_demo
    demo_gdso = json.loads((out / "teacher_gdso" / "metrics.json").read_text())
    first = demo_gdso["steps"]
    points = budget_curve(out, [2 * first, first], tmp_path / "budget")
    assert [p["steps"] for p in points] == [first, 2 * first]
    # the first budget is the demo's own GDSO: the same number
    assert points[0]["accuracy"] == demo_gdso["preference_accuracy"]
    assert points[0]["lower"] <= points[0]["accuracy"] <= points[0]["upper"]
    # the segmented run ends where one uninterrupted run of the last budget ends
    segmented = json.loads((tmp_path / "budget" / "run" / "metrics.json").read_text())
    config = load_config(GDSOConfig, out / "configs" / "teacher_gdso.yaml",
                         {"output_dir": str(tmp_path / "whole"), "steps": 2 * first, "log_with": None,
                          "save_every": 2 * first})
    whole = GDSOTrainer(config).train()
    assert segmented["eval_scores"] == whole["eval_scores"]
    assert points[1]["accuracy"] == whole["preference_accuracy"]
    # finished budgets are read back, not trained again; bad budgets are refused
    result = budget_main(["--demo", str(out), "--steps", str(first), str(2 * first),
                          "--out", str(tmp_path / "budget")])
    assert [p["accuracy"] for p in result["points"]] == [p["accuracy"] for p in points]
    assert set(result["references"]) == {"teacher_sft", "sft_only", "bradley_terry", "rewarddance"}
    assert Path(result["figure"]).stat().st_size > 0
    with pytest.raises(ValueError, match="`steps`"):
        budget_curve(out, [0], tmp_path / "bad")
    with pytest.raises(ValueError, match="`demo`"):
        budget_curve(tmp_path, [1], tmp_path / "bad")


def test_student_ablations_reuse_the_demo_runs_teacher_cache(quick_demo, tmp_path):
    from recipes.student_table import VARIANTS
    from recipes.student_table import main as table_main

    out, _ = quick_demo
    cache = out / "teacher_cache"
    before = sorted((p.relative_to(cache), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file())
    table = table_main(["--demo", str(out), "--clip_steps", "3", "--out", str(tmp_path / "table")])
    after = sorted((p.relative_to(cache), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file())
    assert before == after  # no teacher sampling: every student read the demo's cache
    assert set(table["results"]) == set(VARIANTS)
    assert table["risd"] == json.loads((out / "student_risd" / "metrics.json").read_text())["preference_accuracy"]
    clip = json.loads((tmp_path / "table" / "clip" / "seed0" / "metrics.json").read_text())
    assert clip["trainer"] == "risd_clip" and clip["steps"] == 3
    risd_steps = yaml.safe_load((out / "configs" / "student_risd.yaml").read_text())["steps"]
    assert all(table["results"][name]["steps"] == risd_steps for name in VARIANTS if name != "clip")
    with pytest.raises(SystemExit, match="`demo`"):
        table_main(["--demo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
