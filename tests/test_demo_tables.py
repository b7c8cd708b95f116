"""`recipes.demo_tables`: the teacher, student and DRaFT tables over seeds, from demo runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.demo_report import STUDENT_ROWS, TEACHER_ROWS
from recipes.demo_tables import gather, main, tables
from zreward_diffusers.synthetic.world import DIMENSIONS

PROMPTS = ["one red circle", "one red circle", "two blue squares", "two blue squares"]


def fake_run(path: Path, seed: int, accuracy: dict[str, float], net: float, profile: str = "demo",
             judgements: list[int] = (1, 0, 0, -1), prompts: list[str] = PROMPTS) -> Path:
    """A finished demo run as the stages write it (only what the tables read)."""
    path.mkdir(parents=True)
    (path / "profile.txt").write_text(profile + (f" --seed {seed}" if seed else "") + "\n")
    for stage, _ in (*TEACHER_ROWS, *STUDENT_ROWS):
        (path / stage).mkdir()
        value = accuracy.get(stage, 0.5)
        (path / stage / "metrics.json").write_text(json.dumps(
            {"preference_accuracy": value, "per_dimension": {d: value + 0.01 * i for i, d in enumerate(DIMENSIONS)}}))
    (path / "draft").mkdir()
    (path / "draft" / "metrics.json").write_text(json.dumps({"evaluations": [
        {"step": 0, "eval_expected_score": 3.0, "eval_judge_score": 2.5},
        {"step": 50, "eval_expected_score": 3.4, "eval_judge_score": 2.7},
        {"step": 100, "eval_expected_score": 3.6, "eval_judge_score": 2.6}]}))
    gsb = {"net": net, "net_lower": net - 0.1, "net_upper": net + 0.1}
    (path / "report.json").write_text(json.dumps({"gsb": gsb}))
    (path / "gsb.json").write_text(json.dumps({"judgements": list(judgements), "prompts": list(prompts)}))
    return path


def test_tables_hold_the_mean_and_sample_std_over_seeds(tmp_path):
    runs = [fake_run(tmp_path / f"s{seed}", seed, {"teacher_gdso": gdso, "student_risd": risd}, net)
            for seed, gdso, risd, net in ((0, 0.60, 0.58, 0.2), (1, 0.70, 0.69, 0.05), (2, 0.80, 0.77, -0.1))]
    numbers = gather(runs)
    assert numbers["seeds"] == [0, 1, 2]
    text = tables(numbers)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    gdso = rows[dict(TEACHER_ROWS)["teacher_gdso"]]
    # by hand: mean of 0.6, 0.7, 0.8 is 0.7; sample standard deviation sqrt(((0.1)^2 + 0 + (0.1)^2) / 2) = 0.1
    assert "| 0.700 ± 0.100 | 0.600, 0.700, 0.800 |" in gdso
    # per dimension: the third dimension is 0.02 above the overall value in every seed
    assert gdso.split(" | ")[3 + 2] == "0.720"
    risd = rows[dict(STUDENT_ROWS)["student_risd"]]
    # 0.58, 0.69, 0.77: mean 0.68, std sqrt((0.01 + 0.0001 + 0.0081) / 2) = 0.0954; 2 points below 0.70
    assert "| 0.680 ± 0.095 |" in risd and risd.endswith("| -2.0 pts |")
    assert "RISD minus its own seed's teacher: -2.0, -1.0, -3.0 pts" in text
    # DRaFT: the best step by the oracle (50), base → kept
    assert "| 1 | 50 | 2.500 → 2.700 | 3.000 → 3.400 | +0.050 | [-0.050, +0.150] |" in text
    assert "GSB net over seeds: +0.050 ± 0.150; intervals above 0 in 1 of 3 seeds" in text


def test_pooled_gsb_counts_every_seeds_judgements_and_resamples_whole_prompts(tmp_path):
    from zreward_diffusers.metrics import gsb_with_ci

    seeds = [[1, 1, 0, -1], [1, 0, 0, -1], [-1, 0, 1, 1]]
    runs = [fake_run(tmp_path / f"s{i}", i, {}, 0.0, judgements=j) for i, j in enumerate(seeds)]
    pooled = gather(runs)["gsb_pooled"]
    # by hand: 5 good, 4 same, 3 bad of 12
    assert (pooled["good"], pooled["same"], pooled["bad"]) == pytest.approx((5 / 12, 4 / 12, 3 / 12))
    assert pooled["net"] == pytest.approx(2 / 12)
    # the interval of a bootstrap whose units are the two prompts, each with its six judgements of the three seeds
    flat = [j for run in seeds for j in run]
    expected = gsb_with_ci(flat, groups=PROMPTS * 3)
    assert (pooled["net_lower"], pooled["net_upper"]) == (expected["net_lower"], expected["net_upper"])
    per_image = gsb_with_ci(flat, groups=list(range(12)))
    assert (per_image["net_lower"], per_image["net_upper"]) != (expected["net_lower"], expected["net_upper"])
    other = fake_run(tmp_path / "other", 5, {}, 0.0, prompts=["x", "x", "y", "y"])
    with pytest.raises(ValueError, match="different test prompts"):
        gather([runs[0], other])


def test_runs_of_other_profiles_repeated_seeds_or_unfinished_are_refused(tmp_path):
    a = fake_run(tmp_path / "a", 0, {}, 0.0)
    with pytest.raises(ValueError, match="one profile"):
        gather([a, fake_run(tmp_path / "b", 1, {}, 0.0, profile="quick")])
    with pytest.raises(ValueError, match="distinct seeds"):
        gather([a, fake_run(tmp_path / "c", 0, {}, 0.0)])
    unfinished = fake_run(tmp_path / "d", 2, {}, 0.0)
    (unfinished / "report.json").unlink()
    with pytest.raises(ValueError, match="report.json"):
        gather([a, unfinished])
    with pytest.raises(ValueError, match="not a demo run"):
        gather([tmp_path / "nowhere"])
    with pytest.raises(SystemExit, match="distinct seeds"):
        main([str(a), str(tmp_path / "c"), "--out", str(tmp_path / "out")])
    good = fake_run(tmp_path / "e", 1, {}, 0.0)
    main([str(a), str(good), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "tables.json").read_text())["seeds"] == [0, 1]
    assert (tmp_path / "out" / "tables.md").read_text().startswith("Teacher size (seeds 0, 1)")
