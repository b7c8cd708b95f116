"""The reward-hacking benchmark's bookkeeping: per-run gains from the validation curves, the aggregate over seeds
(hand values), the goal test, the commands each guard runs, and resuming (finished steps are not rerun)."""

import json

import numpy as np
import pytest

from benchmarks import reward_hacking as rh


def metrics(mu, oracle, seconds=10.0):
    return {"evaluations": [{"step": 25 * i, "eval_expected_score": m, "eval_judge_score": o}
                            for i, (m, o) in enumerate(zip(mu, oracle, strict=True))], "train_seconds": seconds}


def gsb(net, low, high):
    return {"net": net, "net_lower": low, "net_upper": high, "num_judgements": 128}


def test_summary_of_a_hacked_and_a_guarded_run():
    hacked = rh.summarise(metrics([4.0, 4.1, 4.3], [3.2, 3.0, 2.5]), gsb(-0.5, -0.6, -0.4))
    assert hacked["student_gain"] == pytest.approx(0.3) and hacked["oracle_gain"] == pytest.approx(-0.7)
    # best_lora is chosen among the loop's own evaluations (after step 0), even when step 0 was better
    assert hacked["oracle_worst_drop"] == pytest.approx(-0.7) and hacked["best_step"] == 25
    assert not hacked["oracle_never_below_base"] and hacked["student_rises"]
    guarded = rh.summarise(metrics([4.0, 4.05, 4.02], [3.2, 3.3, 3.25]), None)
    assert guarded["oracle_never_below_base"] and guarded["best_step"] == 25
    assert guarded["oracle_worst_drop"] == 0.0 and "gsb_net" not in guarded


def test_aggregate_over_seeds_and_the_goal():
    runs = {"none": {0: rh.summarise(metrics([4.0, 4.3], [3.2, 2.5]), gsb(-0.5, -0.6, -0.4)),
                     1: rh.summarise(metrics([4.0, 4.2], [3.1, 2.9]), gsb(-0.2, -0.3, -0.1))},
            "combined": {0: rh.summarise(metrics([4.0, 4.1], [3.2, 3.4]), gsb(0.2, 0.05, 0.35)),
                         1: rh.summarise(metrics([4.0, 4.1], [3.2, 3.3]), gsb(0.1, -0.05, 0.25))}}
    table = rh.aggregate(runs)
    assert table["none"]["student_gain"] == pytest.approx(0.25)
    assert table["none"]["student_gain_std"] == pytest.approx(np.std([0.3, 0.2], ddof=1))
    assert table["none"]["oracle_gain"] == pytest.approx(-0.45) and table["none"]["goal_seeds"] == 0
    # seed 1 of combined keeps the oracle up but its test interval touches 0: the goal needs all three
    assert table["combined"]["goal_seeds"] == 1
    text = rh.markdown(table)
    assert "| combined | 2 | +0.100 ± 0.000 | +0.150 ± 0.071 |" in text and "+0.200 [+0.050, +0.350]" in text


def test_commands_of_each_guard(tmp_path):
    (tune, tune_done), (judge, judge_done) = rh.run_commands("combined", 2, tmp_path, "teacher/model")
    flags = dict(zip(tune[5::2], tune[6::2], strict=True))
    assert flags["--seed"] == "2" and flags["--lr"] == "0.001" and flags["--steps"] == "400"
    assert flags["--reward_statistic"] == "cvar" and flags["--redistill_teacher"] == "teacher/model"
    assert flags["--normalize_reward"] == "False" and flags["--velocity_l2_weight"] == "1.0"
    assert tune_done == tmp_path / "metrics.json" and judge_done == tmp_path / "gsb.json"
    assert judge[judge.index("--prompt_seed") + 1] == "2" and judge[judge.index("--skip_prompts") + 1] == "64"
    with pytest.raises(ValueError, match="--teacher"):
        rh.run_commands("redistill", 0, tmp_path, None)
    none = dict(zip(*(lambda c: (c[5::2], c[6::2]))(rh.run_commands("none", 0, tmp_path, None)[0][0]), strict=True))
    assert "--kappa" not in none and "--redistill_every" not in none


def test_finished_steps_are_not_rerun(tmp_path):
    done = tmp_path / "metrics.json"
    done.write_text("{}")
    log = tmp_path / "log.txt"
    rh._run([(["false"], done)], log)  # would fail if it ran
    assert not log.exists() or log.read_text() == ""


def test_collect_tabulates_what_exists(tmp_path, capsys):
    run = tmp_path / "kappa" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics([4.0, 4.1], [3.0, 3.1])))
    table = rh.main(["--collect_only", "--guards", "kappa", "none", "--seeds", "0", "1", "--out", str(tmp_path)])
    assert list(table) == ["kappa"] and table["kappa"]["seeds"] == [0]
    assert (tmp_path / "frontier.png").exists() and "| kappa | 1 |" in capsys.readouterr().out
