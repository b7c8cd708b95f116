"""Online re-distillation during reward fine-tuning (`pipelines.redistill`) and the objective keywords of the
generator config, on a tiny SD1.5 pipeline, the tiny student and a tiny random teacher: refreshes happen when they
say, move the student toward the teacher's q̄ on the generator's own samples, reuse the teacher cache on resume, resume
exactly, keep the processes' students identical, and bad configs are refused naming their fields."""

import json

import numpy as np
import pytest
import torch
from helpers import launch_cpu
from safetensors.torch import load_file

from pipelines import redistill, reward_finetune
from pipelines.reward_finetune import RewardFinetuneConfig, RewardFinetuner
from training import teacher_cache
from training.objectives import kl_to_target
from zreward_diffusers import ZRewardLoss

SAMPLES, CHAINS, DIMENSIONS = 4, 2, 4  # the tiny student scores the default rubric's 4 dimensions
TIMES_AND_WORK = ("sample_seconds", "teacher_seconds", "student_seconds", "teacher_inputs", "teacher_chains")


def _args(out, steps=4, *extra, batch_size=2):
    return ["--pretrained", "tiny:sd15", "--reward", "tiny", "--steps", str(steps), "--num_inference_steps", "2",
            "--batch_size", str(batch_size), "--eval_batch_size", "2", "--eval_prompts", "2", "--num_prompts", "8",
            "--judge", "none", "--output_dir", str(out), "--log_with", "none", "--save_every", "1", "--lr", "1e-3",
            "--redistill_every", "2", "--redistill_teacher", "tiny", "--redistill_samples", str(SAMPLES),
            "--redistill_chains", str(CHAINS), "--redistill_max_new_tokens", "4", "--redistill_steps", "3",
            "--redistill_lr", "1e-3", "--redistill_batch_size", "4", *extra]


class Spy:
    """Counts the teacher's work (rows it samples chains for, loads) and records each refresh's images and the
    student before and after its update."""

    def __init__(self, patch):
        self.rows, self.loads, self.images, self.students = [], 0, [], []
        sample_reasoning, load_base = teacher_cache.sample_reasoning, redistill.load_base
        sample_images, distill = redistill.Redistiller.sample_images, redistill.Redistiller.distill

        def counted_sampling(model, encoder, rows, *args, **kwargs):
            self.rows += rows
            return sample_reasoning(model, encoder, rows, *args, **kwargs)

        def counted_load(*args, **kwargs):
            self.loads += 1
            return load_base(*args, **kwargs)

        def recorded_images(redistiller, index):
            images = sample_images(redistiller, index)
            self.images.append(images)
            return images

        def recorded_distill(redistiller, *args):
            before = {name: p.detach().clone() for name, p in redistiller.named}
            distill(redistiller, *args)
            assert not any(p.requires_grad or p.grad is not None for _, p in redistiller.named)  # frozen again
            self.students.append((before, {name: p.detach().clone() for name, p in redistiller.named}))

        patch.setattr(teacher_cache, "sample_reasoning", counted_sampling)
        patch.setattr(redistill, "load_base", counted_load)
        patch.setattr(redistill.Redistiller, "sample_images", recorded_images)
        patch.setattr(redistill.Redistiller, "distill", recorded_distill)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("redistill") / "full"
    with pytest.MonkeyPatch.context() as patch:
        spy = Spy(patch)
        metrics = reward_finetune.main(_args(out))
    return out, metrics, spy


class Killed(Exception):
    """A kill in the middle of a run."""


def _assert_close(a, b, path="metrics"):
    """Nested JSON values equal, numbers to 1e-6 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


def _final_student(out):
    return load_file(str(out / "checkpoints" / "checkpoint-4" / redistill.STUDENT_FILE))


def test_refreshes_move_the_student_toward_the_teacher_on_the_generators_samples(full):
    out, metrics, spy = full
    entries = metrics["redistill"]
    assert [(e["refresh"], e["step"]) for e in entries] == [(1, 2), (2, 4)]  # redistill_every 2 of 4 steps
    for entry, (before, after) in zip(entries, spy.students, strict=True):
        assert entry["kl_after"] < entry["kl_before"]
        assert max(float((after[name] - before[name]).abs().max()) for name in before) > 0  # the student moved
    # each refresh: the teacher sampled M chains for every (image, dimension) once, and the budget says so
    assert len(spy.rows) == 2 * SAMPLES * DIMENSIONS and spy.loads == 2
    assert metrics["redistill_budget"]["teacher_chains"] == 2 * SAMPLES * DIMENSIONS * CHAINS
    assert sum(e["teacher_chains"] for e in entries) == 2 * SAMPLES * DIMENSIONS * CHAINS
    assert 0 < metrics["redistill_seconds"] and 0 < metrics["redistill_share"] <= 1
    assert not torch.equal(spy.images[0][0], spy.images[1][0])  # the tuned generator's new samples
    # the saved reward is the final student; its KL to the cached q̄ on refresh 2's images is the logged kl_after
    reward = ZRewardLoss.from_pretrained(out / "reward")
    saved = dict(redistill.student_parameters(reward))
    for name, value in _final_student(out).items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
        torch.testing.assert_close(spy.students[-1][1][name], value, rtol=0, atol=0)
    pixels, prompts = spy.images[-1]
    entries_on_disk = {}
    for path in (out / "redistill_cache").glob("*/entries*.jsonl"):
        entries_on_disk.update({e["key"]: e for e in map(json.loads, path.read_text().splitlines())})
    target = torch.tensor([[entries_on_disk[teacher_cache.input_key(pixels[n], p, d)]["mean"]
                            for d in reward.dimensions] for n, p in enumerate(prompts)])
    with torch.no_grad():
        probs = reward.scorer(pixels.permute(0, 3, 1, 2).float() / 255, prompts, dimensions=reward.dimensions).probs
    kl = float(kl_to_target(target / target.sum(-1, keepdim=True), probs.log()).mean())
    assert kl == pytest.approx(entries[-1]["kl_after"], rel=1e-4)


def test_a_run_killed_in_a_refresh_resumes_to_the_uninterrupted_run_without_asking_the_teacher_again(
        full, tmp_path):
    out_full, full_metrics, _ = full
    out = tmp_path / "half"
    distill = redistill.Redistiller.distill

    def killed(redistiller, index, *args):
        if index == 2:  # after refresh 2's teacher cache is on disk, before the student's update and checkpoint 4
            raise Killed
        distill(redistiller, index, *args)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        patch.setattr(redistill.Redistiller, "distill", killed)
        reward_finetune.main(_args(out))
    with pytest.MonkeyPatch.context() as patch:
        spy = Spy(patch)
        resumed = reward_finetune.main(_args(out, 4, "--resume"))
    assert resumed["resumed_from_step"] == 3  # checkpoint 3 holds the student of refresh 1
    assert spy.rows == [] and spy.loads == 0  # refresh 2's inputs were cached: the teacher is not even loaded
    assert [e["teacher_inputs"] for e in resumed["redistill"]] == [SAMPLES * DIMENSIONS, 0]
    strip = [[{k: v for k, v in e.items() if k not in TIMES_AND_WORK} for e in m["redistill"]]
             for m in (resumed, full_metrics)]
    _assert_close(strip[0], strip[1], "redistill")
    _assert_close(resumed["history"], full_metrics["history"], "history")
    _assert_close(resumed["evaluations"], full_metrics["evaluations"], "evaluations")
    for a, b in ((_final_student(out), _final_student(out_full)),
                 (load_file(str(out / "lora" / "pytorch_lora_weights.safetensors")),
                  load_file(str(out_full / "lora" / "pytorch_lora_weights.safetensors")))):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_config_errors_name_their_fields(tmp_path):
    from zreward_diffusers.rubric import Rubric
    from zreward_diffusers.scorer import ZRewardScorer
    from zreward_diffusers.testing import build_tiny_backbone

    with pytest.raises(ValueError, match="`redistill_every`.*`redistill_teacher`"):
        RewardFinetuneConfig(redistill_every=2)
    with pytest.raises(ValueError, match="`normalize_reward`.*`reward_statistic`"):
        RewardFinetuneConfig(reward_statistic="cvar")
    with pytest.raises(ValueError, match="`redistill_samples`"):
        RewardFinetuneConfig(redistill_every=2, redistill_teacher="tiny", redistill_samples=0)
    with pytest.raises(ValueError, match="`reward_combine`"):
        RewardFinetuneConfig(reward_combine="max")
    five = Rubric(levels=(1.0, 2.0, 3.0, 4.0, 5.0), score_tokens=("1", "2", "3", "4", "5"))
    ZRewardLoss(ZRewardScorer(*build_tiny_backbone("qwen2_vl", seed=2), five)).save_pretrained(tmp_path / "five")
    base = dict(pretrained="tiny:sd15", reward="tiny", log_with="none", num_prompts=4, eval_prompts=1,
                redistill_every=1)
    with pytest.raises(ValueError, match="`redistill_teacher`.*levels.*`reward`"):
        RewardFinetuner(RewardFinetuneConfig(output_dir=str(tmp_path / "a"), redistill_teacher=str(tmp_path / "five"),
                                             **base))
    with pytest.raises(ValueError, match="`redistill_teacher`.*not a Z-Reward checkpoint"):
        RewardFinetuner(RewardFinetuneConfig(output_dir=str(tmp_path / "b"), redistill_teacher=str(tmp_path),
                                             **base))


def test_the_objective_keywords_reach_the_loss_and_train(tmp_path):
    from zreward_diffusers.testing import create_tiny_checkpoint

    create_tiny_checkpoint(tmp_path / "student")  # through from_pretrained's overrides
    config = reward_finetune.parse_args(RewardFinetuneConfig, [
        "--pretrained", "tiny:sd15", "--reward", str(tmp_path / "student"), "--steps", "1", "--num_inference_steps",
        "2", "--batch_size", "2", "--eval_prompts", "1", "--num_prompts", "4", "--output_dir", str(tmp_path / "run"),
        "--log_with", "none", "--judge", "none", "--normalize_reward", "false", "--reward_statistic", "cvar",
        "--reward_alpha", "0.3", "--reward_combine", "softmin", "--reward_temperature", "0.1",
        "--reward_floors", "{alignment: 2.0}", "--reward_floor_weight", "0.5"])
    finetuner = RewardFinetuner(config)
    loss = finetuner.reward
    assert (loss.statistic, loss.alpha, loss.combine, loss.temperature) == ("cvar", 0.3, "softmin", 0.1)
    assert (loss.floors, loss.floor_weight, loss.normalize) == ({"alignment": 2.0}, 0.5, False)
    metrics = finetuner.train()
    assert len(metrics["history"]) == 1 and np.isfinite(metrics["history"][0]["loss"])
    assert metrics["history"][0]["grad_norm"] > 0


def test_two_processes_keep_identical_students(full, tmp_path):
    # batch_size is per process: 2 x 1 prompts draw what 1 x 2 does; the refresh images are drawn in the same
    # chunks; the run fails if the processes' students ever differ (`Redistiller.check_identical`)
    _, one, _ = full
    launch_cpu(["-m", "pipelines.reward_finetune", *_args(tmp_path / "two", batch_size=1)], 2)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [e["step"] for e in two["redistill"]] == [2, 4]
    for a, b in zip(two["redistill"], one["redistill"], strict=True):
        assert a["kl_after"] < a["kl_before"]
        assert a["kl_before"] == pytest.approx(b["kl_before"], rel=1e-3)
        assert a["kl_after"] == pytest.approx(b["kl_after"], rel=1e-3)
