"""`benchmarks/gpu_check.py` cannot rot: `--tiny` runs every part on the CPU, and what cannot run is reported, never
fatal (a missing module, no CUDA, the time budget)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def kinds(value) -> list[str]:
    """The `kind` of every `skipped` record in the results."""
    if isinstance(value, dict):
        own = [value["kind"]] if "skipped" in value else []
        return own + [kind for item in value.values() for kind in kinds(item)]
    if isinstance(value, list):
        return [kind for item in value for kind in kinds(item)]
    return []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`python -m benchmarks.gpu_check --tiny` as `make test` runs it (about 30 s on the 2-core dev machine)."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--skip", "xformers",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_tiny_run_measures_every_part(tiny_run):
    results, table = tiny_run
    parts = results["parts"]
    assert results["machine"]["tiny"] and positive(parts["matmul"]["tflops"])
    # the only thing skipped: xformers, switched off on the command line (and CUDA-only anyway)
    assert results["skipped"] and all("xformers" in line for line in results["skipped"]), results["skipped"]
    assert kinds(parts) == ["option", "option"]  # the xformers row of each generator

    assert set(parts["reward"]) == set(gpu_check.REWARD_MODELS)
    for name, model in parts["reward"].items():
        assert len(model["configs"]) == 8, name  # 2 sizes x 2 batches x checkpointing off / on
        for config in model["configs"]:
            assert "skipped" not in config, (name, config)
            for side in ("loss", "bare"):
                assert positive(config[side]["median_ms"]) and positive(config[side]["flops"])
                assert positive(config[side]["tflops_per_s"]) and positive(config[side]["of_matmul"])
                assert config[side]["peak_growth_mib"] is None and config[side]["peak_total_gib"] is None  # CPU
            assert positive(config["ratio"]) and config["loss_finite"]
            assert config["rows"] == 4 * config["batch"]
        counted = [c["loss"]["flops_source"] for c in model["configs"]]
        assert sum(s.startswith("counted") for s in counted) == 4 and sum(s.startswith("scaled") for s in counted) == 4

    cases = parts["preprocessing"]["cases"]
    assert {case["processor"] for case in cases} == {"qwen2_5_vl", "qwen3_vl"} and len(cases) == 4
    for case in cases:
        assert case["batch"] == 16 and [row["path"] for row in case["rows"]][0] == "ours"
        assert all(positive(row["median_ms"]) and positive(row["speedup_of_ours"]) for row in case["rows"])
        assert sum("goal_met" in row for row in case["rows"]) == 2  # the two host paths

    generator = parts["generator"]
    for kind in ("sdxl", "flux"):
        rows = generator[kind]["rows"]
        measured = [(r["k"], r["checkpointing"]) for r in rows if "skipped" not in r]
        assert measured == [(1, True), (5, True), (6, True), (1, False)], kind  # K = 1, 5, full chain (T = 6)
        for row in rows:
            if "skipped" in row:
                assert row["attention"] == "xformers" and "--skip xformers" in row["skipped"]
                continue
            assert positive(row["step_s"]) and all(positive(v) for v in row["phases_s"].values())
            assert row["peak_growth_mib"] is None  # no CUDA: not measured, not zero
        assert positive(generator[kind]["reward_alone"]["median_s"])
        assert positive(generator[kind]["summary"]["reward_share_of_draft1_step"])
        assert "full_chain_vs_k1_memory" not in generator[kind]["summary"]

    configs = parts["configs"]["rows"]
    assert all(row["ok"] for row in configs), configs
    assert {row["model"].split(" ")[0] for row in configs} >= {*gpu_check.REWARD_MODELS, "sdxl_unet", "sdxl_vae"}
    decoded = [row["decoded"] for row in configs if "decoded" in row]
    assert decoded == [[1, 3, 1024, 1024]] * 2  # the real-size SDXL and Flux pipelines, dry run on the meta device

    headings = ("# gpu_check", "## Reward", "## Preprocessing", "## Generator", "## Real-size models", "## Skipped")
    assert all(heading in table for heading in headings)
    assert "TINY models" in table and "| n/a |" in table


def test_a_missing_module_is_reported_not_fatal(tmp_path, capsys):
    results = gpu_check.main(["--tiny", "--parts", "configs", "generator", "--skip", "diffusers",
                              "--out", str(tmp_path)])
    generator = results["parts"]["generator"]
    assert generator["kind"] == "option" and "diffusers" in generator["skipped"]
    assert results["parts"]["configs"]["generators"]["kind"] == "option"
    assert len(results["parts"]["configs"]["rows"]) == 3  # the reward models still dry-run
    assert "reward" not in results["parts"]
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["skipped"] == results["skipped"] and "diffusers" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_the_real_size_parts_say_so(tmp_path, capsys):
    results = gpu_check.main(["--parts", "preprocessing", "reward", "generator", "--out", str(tmp_path)])
    for name in ("matmul", "preprocessing", "reward", "generator"):
        assert results["parts"][name]["kind"] == "no_cuda" and "CUDA" in results["parts"][name]["skipped"]
    assert (tmp_path / "gpu_check.md").exists()


def test_the_time_budget_skips_with_the_reason(tmp_path, capsys):
    results = gpu_check.main(["--tiny", "--parts", "preprocessing", "reward", "--budget_s", "0",
                              "--out", str(tmp_path)])
    for name in ("preprocessing", "reward"):
        assert results["parts"][name]["kind"] == "budget" and "time budget" in results["parts"][name]["skipped"]


def test_help_describes_and_groups(capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "real-size architectures (random weights), in one command" in " ".join(text.split())
    for heading in ("Measurement:", "Budget and robustness:", "Output:"):
        assert heading in text
