"""Teacher training (SFT, GDSO) and the baselines (GRPO, Bradley-Terry, RewardDance) on a tiny model, as TRL tests its
trainers: a few steps, every trainable parameter moves, the training read equals the inference read, the GDSO terms
equal the objectives recomputed from the scorer, resume equals an uninterrupted run, and 2 processes equal 1."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    LORA_SETTINGS,
    assert_shards_partition_the_batch,
    check_lora_training,
    launch_cpu,
    launch_recording_rows,
)

from training.data import load_split
from training.gdso import GDSOConfig, GDSOTrainer
from training.grpo import GRPOConfig
from training.objectives import soft_target
from training.scalar_baselines import BradleyTerryTrainer, RewardDanceTrainer, ScalarConfig
from training.sequences import Row, RowEncoder, forward_rows
from training.sft import SFTConfig, SFTTrainer
from zreward_diffusers import ZRewardLoss, ZRewardScorer
from zreward_diffusers.synthetic import SyntheticWorld
from zreward_diffusers.testing import build_tiny_scorer

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA = dict(train_data={"num_groups": 3, "start": 0}, eval_data={"num_groups": 2, "start": 1000})


@pytest.fixture(scope="module")
def sharp_base(tiny_base, tmp_path_factory) -> str:
    """The tiny model after a few high-lr steps on the score slot: it puts its mass on score tokens, so sampled
    scores can be valid."""
    out = tmp_path_factory.mktemp("sharp")
    config = SFTConfig(base=tiny_base, output_dir=str(out), reasoning=False, steps=8, lr=1e-2, warmup_steps=0,
                       batch_size=8, micro_batch_size=8, log_with=None, save_every=100, **SMALL_DATA)
    SFTTrainer(config).train()
    return str(out / "model")


def parameters(trainer) -> dict[str, torch.Tensor]:
    named = dict(trainer.unwrapped().named_parameters())
    for key, module in trainer.extra_modules.items():
        named.update({f"{key}.{n}": p for n, p in module.named_parameters()})
    return {name: p.detach().clone() for name, p in named.items() if p.requires_grad}


def assert_all_changed(before: dict, trainer) -> None:
    after = parameters(trainer)
    assert before and set(before) <= set(after)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters that did not change: {unchanged[:10]}"
    assert all(torch.isfinite(p).all() for p in after.values())


def run_steps(trainer, steps: int) -> list[dict]:
    logs = []
    for step in range(steps):
        logs.append(trainer.training_step(step))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return logs


# ------------------------------------------------------------------------------------------------ sequences
def test_row_encoder_tokenises_as_the_scorer_reads(tiny_base):
    scorer = build_tiny_scorer("qwen2_vl", seed=0)
    world = SyntheticWorld(0)
    items = world.generate(4)
    images = torch.from_numpy(np.stack([item.image for item in items]))
    encoder = RowEncoder(scorer.processor, scorer.rubric, images)
    for n, item in enumerate(items):
        for dimension, rationale in item.rationales.items():
            for reasoning in (rationale, None):
                fields, trained = encoder.encode_row(Row(n, item.prompt, dimension, reasoning))
                text = scorer.build_text(item.prompt, dimension, reasoning)
                reference = scorer._encode_text(text, 56, 56)
                assert fields["input_ids"] == reference["input_ids"][0].tolist()
                assert fields["mm_token_type_ids"] == reference["mm_token_type_ids"][0].tolist()
                if reasoning is None:
                    assert sum(trained) == 0
                else:  # exactly the reasoning and the suffix are trained
                    ids = scorer.tokenizer.encode(reasoning + scorer.rubric.reasoning_suffix, add_special_tokens=False)
                    start = trained.index(1)
                    assert fields["input_ids"][start:start + sum(trained)] == ids


def test_training_read_equals_inference_read():
    scorer = build_tiny_scorer("qwen2_vl", seed=3)
    items = SyntheticWorld(1).generate(3)
    images = torch.from_numpy(np.stack([item.image for item in items]))
    encoder = RowEncoder(scorer.processor, scorer.rubric, images)
    reasoning = ["I count two circles.", None, "The sky is blue."]
    rows = [Row(n, item.prompt, "alignment", reasoning[n]) for n, item in enumerate(items)]
    out = forward_rows(scorer.model, encoder(rows), encoder.read_token_ids)
    for n, item in enumerate(items):
        pixels = images[n:n + 1].permute(0, 3, 1, 2).float() / 255
        chains = None if reasoning[n] is None else [[reasoning[n]]]
        reference = scorer(pixels, [item.prompt], ["alignment"], reasoning=chains)
        torch.testing.assert_close(out.score_log_probs[n].exp(), reference.probs[0, 0], atol=2e-5, rtol=1e-4)


def test_row_encoder_rejects_bad_images():
    scorer = build_tiny_scorer("qwen2_vl")
    with pytest.raises(ValueError, match="images"):
        RowEncoder(scorer.processor, scorer.rubric, torch.zeros(2, 3, 56, 56))


# ------------------------------------------------------------------------------------------------ trainers
@pytest.mark.parametrize("reasoning", [True, False])
def test_sft_trains_every_parameter(tiny_base, tmp_path, reasoning):
    config = SFTConfig(base=tiny_base, output_dir=str(tmp_path), reasoning=reasoning, batch_size=6,
                       micro_batch_size=4, lr=1e-3, warmup_steps=0, log_with=None, **SMALL_DATA)
    trainer = SFTTrainer(config)
    before = parameters(trainer)
    logs = run_steps(trainer, 2)
    assert_all_changed(before, trainer)
    assert all(np.isfinite(log["kl"]) and log["kl"] > 0 for log in logs)
    assert ("ce" in logs[0] and logs[0]["ce"] > 0) if reasoning else True


def test_sft_lowers_its_loss_on_a_fixed_batch(tiny_base, tmp_path):
    config = SFTConfig(base=tiny_base, output_dir=str(tmp_path), batch_size=8, micro_batch_size=8, lr=3e-3,
                       warmup_steps=0, log_with=None, **SMALL_DATA)
    trainer = SFTTrainer(config)
    trainer.step_units = lambda step, original=trainer.step_units: original(0)  # the same batch every step
    logs = run_steps(trainer, 6)
    assert logs[-1]["loss"] < 0.8 * logs[0]["loss"]


def test_gdso_trains_every_parameter_and_logs_its_terms(tiny_base, tmp_path):
    config = GDSOConfig(base=tiny_base, output_dir=str(tmp_path), groups_per_step=2, num_rollouts=3,
                        max_new_tokens=6, lr=1e-3, warmup_steps=0, log_with=None, **SMALL_DATA)
    trainer = GDSOTrainer(config)
    before = parameters(trainer)
    logs = run_steps(trainer, 2)
    assert_all_changed(before, trainer)
    for key in ("pg", "pointwise", "gap", "reward_mean", "reward_std", "score_token_mass", "reasoning_length",
                "finished", "dropped"):
        assert np.isfinite(logs[0][key]), key
    assert logs[0]["pointwise"] > 0 and logs[0]["gap"] > 0


def huber_by_hand(x: float, delta: float) -> float:
    """½ x² inside |x| ≤ δ, δ (|x| − ½ δ) outside."""
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def test_gdso_terms_equal_the_objectives_recomputed_from_the_scorer(tiny_base, tmp_path):
    """GDSO's pointwise KL, gap term and rewards recomputed in plain Python (loops over the 9 levels, the pairs and
    the rollouts) from the scorer's read of the same rows; the soft targets are inputs (checked by hand in
    test_training_objectives)."""
    config = GDSOConfig(base=tiny_base, output_dir=str(tmp_path), groups_per_step=1, num_rollouts=2,
                        max_new_tokens=6, log_with=None, **SMALL_DATA)
    trainer = GDSOTrainer(config)
    _, records, dimension = trainer.step_units(0)[0]
    rollout = trainer.rollouts(0, 0, records, dimension)
    rollout["rows"] = [Row(r.image, r.prompt, r.dimension, f"chain {i % 2} about {r.prompt}")
                       for i, r in enumerate(rollout["rows"])]
    rollout["finished"] = torch.ones(len(records), 2, dtype=torch.bool)
    terms = trainer.unit_terms(0, rollout, None)

    scorer = ZRewardScorer(trainer.unwrapped(), trainer.processor, trainer.rubric)
    images = trainer.train_bank.images[[r.image for r in rollout["rows"]]].permute(0, 3, 1, 2).float() / 255
    read = scorer(images, [r.prompt for r in rollout["rows"]], [dimension],
                  reasoning=[[r.reasoning] for r in rollout["rows"]])
    levels = trainer.levels.tolist()
    assert levels == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    probs = read.probs[:, 0].double().tolist()  # row n·2 + i: image n, rollout i
    mu = [[sum(p * v for p, v in zip(probs[2 * n + i], levels, strict=True)) for i in range(2)]
          for n in range(len(records))]
    labels = [float(r.label(dimension)) for r in records]
    targets = [soft_target(r, dimension, trainer.levels).double().tolist() for r in records]

    # Σ over rows of KL(q ‖ p) = Σ_k q_k (log q_k − log p_k), rows of an image sharing its target
    pointwise = sum(q * (math.log(q) - math.log(p)) for row, p_row in enumerate(probs)
                    for q, p in zip(targets[row // 2], p_row, strict=True) if q > 0)
    # the default pointwise KL is against the full vocabulary: KL(q || p_K) - log(mass on the K score tokens)
    full = pointwise - sum(math.log(m) for m in read.score_token_mass[:, 0].double().tolist())
    assert terms["pointwise"].item() == pytest.approx(full, rel=1e-4, abs=1e-4)
    trainer.config.full_vocabulary = False
    assert trainer.unit_terms(0, rollout, None)["pointwise"].item() == pytest.approx(pointwise, rel=1e-4, abs=1e-4)

    # Huber_0.5(Δμ − Δy) + 0.5 · log(1 + exp(−sgn(Δy) Δμ / 0.25)) per pair and rollout; tied labels: Huber only
    gap, count, ordered = 0.0, 0, 0
    for j, k in itertools.combinations(range(len(records)), 2):
        target = labels[j] - labels[k]
        for i in range(2):
            diff = mu[j][i] - mu[k][i]
            gap += huber_by_hand(diff - target, 0.5)
            if target != 0:
                sign = 1.0 if target > 0 else -1.0
                gap += 0.5 * math.log1p(math.exp(-sign * diff / 0.25))
                ordered += 1
            count += 1
    assert ordered > 0  # the Bradley-Terry part is exercised
    assert terms["gap"].item() == pytest.approx(gap, rel=1e-4, abs=1e-4)
    assert terms["gap_count"] == count == 2 * len(records) * (len(records) - 1) // 2

    # R = 1 − |μ − y| / 4 + 0.5 · share of the other-label images l with (μ − μ̄_l)(y_j − y_l) > 0 (all finished)
    means = [sum(row) / 2 for row in mu]
    reward_sum = 0.0
    for j in range(len(records)):
        others = [k for k in range(len(records)) if labels[k] != labels[j]]
        for i in range(2):
            right = sum((mu[j][i] - means[k]) * (labels[j] - labels[k]) > 0 for k in others)
            reward_sum += 1 - abs(mu[j][i] - labels[j]) / 4.0 + 0.5 * (right / len(others) if others else 0.0)
    assert terms["logs"]["reward_mean"] == pytest.approx(reward_sum, abs=1e-4)


def count_rollouts_finished(trainer):
    """A few new tokens never close the tiny model's reasoning: count every rollout as finished, so the sampled
    score token can earn its reward."""
    sample = trainer.rollouts

    def finished_rollouts(*args):
        rollout = sample(*args)
        rollout["finished"][:] = True
        return rollout

    trainer.rollouts = finished_rollouts
    return trainer


def test_grpo_trains_every_parameter(sharp_base, tmp_path):
    config = GRPOConfig(base=sharp_base, output_dir=str(tmp_path), groups_per_step=3, num_rollouts=4,
                        max_new_tokens=4, lr=1e-3, warmup_steps=0, log_with=None, **SMALL_DATA)
    trainer = count_rollouts_finished(GDSOTrainer(config))
    assert trainer.name == "grpo"
    before = parameters(trainer)
    logs = run_steps(trainer, 2)
    assert_all_changed(before, trainer)
    assert "pointwise" not in logs[0] and np.isfinite(logs[0]["pg"])


@pytest.mark.parametrize("trainer_class", [BradleyTerryTrainer, RewardDanceTrainer])
def test_scalar_baselines_train_every_parameter(tiny_base, tmp_path, trainer_class):
    config = ScalarConfig(base=tiny_base, output_dir=str(tmp_path), batch_size=6, lr=1e-3, warmup_steps=0,
                          log_with=None, **SMALL_DATA)
    trainer = trainer_class(config)
    before = parameters(trainer)
    if trainer_class is BradleyTerryTrainer:  # a zero-initialised head gives the backbone no gradient at first
        run_steps(trainer, 1)
        before = {k: v for k, v in before.items() if k.startswith("value_head")}
        assert_all_changed(before, trainer)
        before = parameters(trainer)
    logs = run_steps(trainer, 2)
    assert_all_changed(before, trainer)
    assert np.isfinite(logs[-1]["loss"])
    accuracy = trainer.evaluate()
    assert 0.0 <= accuracy["preference_accuracy"] <= 1.0 and set(accuracy["per_dimension"]) == set(trainer.dimensions)


def lora_trainer(name: str, tiny_base: str, sharp_base: str, tmp_path):
    common = dict(output_dir=str(tmp_path / "out"), lr=1e-2, warmup_steps=0, log_with=None, **LORA_SETTINGS,
                  **SMALL_DATA)
    if name == "sft":
        return SFTTrainer(SFTConfig(base=tiny_base, batch_size=4, micro_batch_size=2, **common))
    if name in ("gdso", "grpo"):
        config_class = GDSOConfig if name == "gdso" else GRPOConfig
        return count_rollouts_finished(GDSOTrainer(config_class(base=sharp_base, groups_per_step=2, num_rollouts=2,
                                                                max_new_tokens=4, **common)))
    trainer_class = BradleyTerryTrainer if name == "bradley_terry" else RewardDanceTrainer
    return trainer_class(ScalarConfig(base=tiny_base, batch_size=4, **common))


@pytest.mark.parametrize("name", ["sft", "gdso", "grpo", "bradley_terry", "rewarddance"])
def test_lora_gradient_checkpointing_and_bf16_train_the_adapter_only(tiny_base, sharp_base, tmp_path, name,
                                                                   fresh_accelerate_state):
    trainer = lora_trainer(name, tiny_base, sharp_base, tmp_path)
    images = torch.rand(2, 3, 56, 56)
    check_lora_training(trainer, 3 if name == "bradley_terry" else 2, tmp_path / "model", images,
                        ["a red circle", "two blue squares"])


def test_bradley_terry_feeds_the_better_image_first(tiny_base, tmp_path, monkeypatch):
    """Every training pair is (better, worse) by its labels, and the loss receives the better image's score first:
    counted from the dataset's labels and from what reaches `bradley_terry_loss`."""
    import training.scalar_baselines as scalar_baselines

    config = ScalarConfig(base=tiny_base, output_dir=str(tmp_path), batch_size=6, log_with=None, **SMALL_DATA)
    trainer = BradleyTerryTrainer(config)
    label = {trainer.train_bank.index[r.record_id]: r for r in trainer.train_set.records}
    assert trainer.pairs and all(label[a].label(d) > label[b].label(d) for a, b, _, d in trainer.pairs)
    seen, loss = [], scalar_baselines.bradley_terry_loss

    def recording_loss(better, worse):
        seen.append((better.detach(), worse.detach()))
        return loss(better, worse)

    monkeypatch.setattr(scalar_baselines, "bradley_terry_loss", recording_loss)
    with torch.no_grad():  # a random head, so the scores differ by image
        trainer.extra_modules["value_head"].weight.normal_(generator=torch.Generator().manual_seed(0))
    encoded = []
    forward = trainer.forward

    def recording_forward(encoder, rows, model=None):
        encoded.append(rows)
        return forward(encoder, rows, model)

    monkeypatch.setattr(trainer, "forward", recording_forward)
    trainer.training_step(0)
    rows = encoded[0]
    half = len(rows) // 2
    assert all(label[rows[i].image].label(rows[i].dimension) > label[rows[half + i].image].label(rows[i].dimension)
               for i in range(half))
    better, worse = seen[0]
    out = forward(trainer.encoder, rows)
    scores = trainer.scalar_scores(out).detach()
    torch.testing.assert_close(better, scores[:half])
    torch.testing.assert_close(worse, scores[half:])


def test_gdso_rejects_bad_settings(tiny_base, tmp_path):
    with pytest.raises(ValueError, match="objective"):
        GDSOTrainer(GDSOConfig(base=tiny_base, output_dir=str(tmp_path), objective="ppo", log_with=None))
    with pytest.raises(ValueError, match="num_rollouts"):
        GDSOTrainer(GDSOConfig(base=tiny_base, output_dir=str(tmp_path), num_rollouts=1, log_with=None))


# ------------------------------------------------------------------------------------------------ runs
def sft_args(base: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--base", base, "--output_dir", str(out), "--steps", str(steps), "--batch_size", "8",
            "--micro_batch_size", "4", "--lr", "1e-3", "--warmup_steps", "1", "--save_every", "2",
            "--log_with", "none", "--eval_num_samples", "1", "--eval_max_new_tokens", "4",
            "--train_data.num_groups", "3", "--eval_data.num_groups", "2", "--eval_data.start", "1000", *extra]


def gdso_args(base: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--base", base, "--output_dir", str(out), "--steps", str(steps), "--groups_per_step", "2",
            "--num_rollouts", "2", "--max_new_tokens", "6", "--lr", "1e-3", "--warmup_steps", "1", "--save_every",
            "2", "--log_with", "none", "--eval_num_samples", "1", "--eval_max_new_tokens", "4",
            "--train_data.num_groups", "3", "--eval_data.num_groups", "2", "--eval_data.start", "1000", *extra]


def scalar_args(base: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--base", base, "--output_dir", str(out), "--steps", str(steps), "--batch_size", "8",
            "--micro_batch_size", "4", "--lr", "1e-3", "--warmup_steps", "1", "--save_every", "2",
            "--log_with", "none", "--train_data.num_groups", "3", "--eval_data.num_groups", "2",
            "--eval_data.start", "1000", *extra]


def losses(metrics: dict, key: str = "loss") -> list[float]:
    return [entry[key] for entry in metrics["history"]]


def count_steps(monkeypatch, trainer_class) -> list[int]:
    """The steps `trainer_class.training_step` runs from now on, in order."""
    ran, original = [], trainer_class.training_step

    def counted(self, step):
        ran.append(step)
        return original(self, step)

    monkeypatch.setattr(trainer_class, "training_step", counted)
    return ran


def test_sft_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run(tiny_base, tmp_path, monkeypatch):
    from training import sft

    full = sft.main(sft_args(tiny_base, tmp_path / "full", 4))
    sft.main(sft_args(tiny_base, tmp_path / "half", 2))
    ran = count_steps(monkeypatch, SFTTrainer)
    resumed = sft.main(sft_args(tiny_base, tmp_path / "half", 4, "--resume"))
    assert ran == [2, 3] and resumed["resumed_from_step"] == 2
    assert [entry["step"] for entry in resumed["history"]] == [1, 2, 3, 4]
    assert [entry["lr"] for entry in resumed["history"]] == [entry["lr"] for entry in full["history"]]
    np.testing.assert_allclose(losses(resumed), losses(full), rtol=1e-5)
    a = ZRewardLoss.from_pretrained(tmp_path / "full" / "model").scorer.model.state_dict()
    b = ZRewardLoss.from_pretrained(tmp_path / "half" / "model").scorer.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_a_rerun_without_resume_refuses_and_overwrite_starts_over(tiny_base, tmp_path, monkeypatch):
    """Rerunning a training command without --resume replaced the previous run's checkpoint, model and metrics."""
    from training import sft

    first = sft.main(sft_args(tiny_base, tmp_path / "run", 2))
    model = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--resume to continue it, or --overwrite"):
        sft.main(sft_args(tiny_base, tmp_path / "run", 4))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == json.loads(json.dumps(first))
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == model
    with pytest.raises(ValueError, match="exclude each other"):
        sft.main(sft_args(tiny_base, tmp_path / "run", 4, "--resume", "--overwrite"))
    # an old checkpoint past the new run's steps: left in place, a later --resume would continue the old run
    old = tmp_path / "run" / "checkpoints" / "checkpoint-9"
    old.mkdir()
    (old / "progress.json").write_text('{"step": 9}')
    ran = count_steps(monkeypatch, SFTTrainer)
    again = sft.main(sft_args(tiny_base, tmp_path / "run", 3, "--overwrite"))
    assert ran == [0, 1, 2] and again["resumed_from_step"] == 0
    assert sorted(path.name for path in old.parent.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_gdso_resume_equals_an_uninterrupted_run(tiny_base, tmp_path, monkeypatch):
    from training import gdso

    full = gdso.main(gdso_args(tiny_base, tmp_path / "full", 4))
    gdso.main(gdso_args(tiny_base, tmp_path / "half", 2))
    ran = count_steps(monkeypatch, GDSOTrainer)
    resumed = gdso.main(gdso_args(tiny_base, tmp_path / "half", 4, "--resume"))
    assert ran == [2, 3] and resumed["resumed_from_step"] == 2
    np.testing.assert_allclose(losses(resumed, "pointwise"), losses(full, "pointwise"), rtol=1e-4)
    np.testing.assert_allclose(losses(resumed, "reasoning_length"), losses(full, "reasoning_length"))


def test_exported_teacher_loads_as_a_reward(tiny_base, tmp_path):
    from training import sft

    metrics = sft.main(sft_args(tiny_base, tmp_path, 2))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["preference_accuracy"] == pytest.approx(metrics["preference_accuracy"])
    loss = ZRewardLoss.from_pretrained(tmp_path / "model")
    out = loss.score(torch.rand(1, 3, 56, 56), ["a red circle"], reasoning=[["I see a circle."] * 4])
    assert out.probs.shape == (1, 4, 9)


def _launch(module: str, args: list[str], processes: int) -> None:
    launch_cpu(["-m", module, *args], processes)


def accuracy_by_hand(scores: list, eval_data: dict, dimensions: list[str]) -> float:
    """Panel-pair accuracy of scores `(N, D)` counted pair by pair over the held-out split's pairs (human ties left
    out, a predicted tie counts 1/2), the mean over dimensions."""
    dataset = load_split(eval_data)
    row = {record.record_id: n for n, record in enumerate(dataset.records)}
    per_dimension = []
    for d, dimension in enumerate(dimensions):
        credit = [0.5 if scores[row[p.record_a]][d] == scores[row[p.record_b]][d]
                  else float((scores[row[p.record_a]][d] > scores[row[p.record_b]][d]) == (p.preference > 0))
                  for p in dataset.pairs if p.dimension == dimension and p.preference != 0]
        per_dimension.append(sum(credit) / len(credit))
    return sum(per_dimension) / len(per_dimension)


@pytest.mark.parametrize("module,make_args,key", [("training.sft", sft_args, "loss"),
                                                   ("training.gdso", gdso_args, "pointwise"),
                                                   ("training.bradley_terry", scalar_args, "loss"),
                                                   ("training.rewarddance", scalar_args, "loss")])
def test_two_processes_match_one(tiny_base, tmp_path, module, make_args, key):
    [one_rows] = launch_recording_rows(module, make_args(tiny_base, tmp_path / "one", 3), 1, tmp_path / "rows1")
    two_rows = launch_recording_rows(module, make_args(tiny_base, tmp_path / "two", 3), 2, tmp_path / "rows2")
    assert_shards_partition_the_batch(one_rows, two_rows)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    np.testing.assert_allclose(losses(two, key), losses(one, key), rtol=1e-4, atol=1e-6)
    # the held-out scores agree to float precision (the same sampled chains in teacher mode); accuracies over the
    # near-tied scores of a barely trained model could flip on a rounding, so each is checked against its own scores
    np.testing.assert_allclose(two["eval_scores"], one["eval_scores"], rtol=1e-4, atol=1e-5)
    dimensions = list(one["per_dimension"])
    for run in (one, two):
        assert run["preference_accuracy"] == pytest.approx(
            accuracy_by_hand(run["eval_scores"], {"num_groups": 2, "start": 1000}, dimensions))


def test_two_process_resume_equals_the_uninterrupted_two_process_run(tiny_base, tmp_path):
    """Stopped after 2 of 4 steps under 2 processes (state written by `accelerator.save_state` on both), resumed
    under 2 processes: the same losses, held-out scores and weights as 4 steps in one go."""
    _launch("training.sft", sft_args(tiny_base, tmp_path / "full", 4), 2)
    _launch("training.sft", sft_args(tiny_base, tmp_path / "half", 2), 2)
    assert sorted(p.name for p in (tmp_path / "half" / "checkpoints" / "checkpoint-2").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    _launch("training.sft", sft_args(tiny_base, tmp_path / "half", 4, "--resume"), 2)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 2 and full["resumed_from_step"] == 0
    np.testing.assert_allclose(losses(resumed), losses(full), rtol=1e-5)
    np.testing.assert_allclose(resumed["eval_scores"], full["eval_scores"], rtol=1e-5, atol=1e-6)
    a = ZRewardLoss.from_pretrained(tmp_path / "full" / "model").scorer.model.state_dict()
    b = ZRewardLoss.from_pretrained(tmp_path / "half" / "model").scorer.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_teacher_command_runs_sft_then_gdso_from_its_model(tiny_base, tmp_path):
    """`python -m recipes.teacher`, the README's teacher command, end to end on tiny settings: the shipped configs
    with a few steps, SFT then GDSO started from SFT's exported model; a second call finds both stages done."""
    tiny = dict(base=tiny_base, steps=2, save_every=2, warmup_steps=0, log_with="none", eval_num_samples=1,
                eval_max_new_tokens=4, train_data={"num_groups": 3, "start": 0},
                eval_data={"num_groups": 2, "start": 1000})
    configs = {}
    for stage, changes in (("sft", dict(batch_size=4, micro_batch_size=4)),
                           ("gdso", dict(groups_per_step=1, num_rollouts=2, max_new_tokens=4))):
        shipped = yaml.safe_load((REPO / "training" / "configs" / f"teacher_{stage}_tiny.yaml").read_text())
        configs[stage] = tmp_path / f"{stage}.yaml"
        configs[stage].write_text(yaml.safe_dump({**shipped, **tiny, **changes}))
    command = [sys.executable, "-m", "recipes.teacher", "--sft_config", str(configs["sft"]), "--gdso_config",
               str(configs["gdso"]), "--output_dir", str(tmp_path / "teacher")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "teacher: SFT" in first.stderr
    out = tmp_path / "teacher"
    sft, gdso = (json.loads((out / stage / "metrics.json").read_text()) for stage in ("sft", "gdso"))
    assert sft["trainer"] == "sft" and gdso["trainer"] == "gdso" and len(gdso["history"]) == 2
    assert str(out / "sft" / "model") in (out / "gdso" / "model" / "README.md").read_text()  # GDSO's base
    for stage in ("sft", "gdso"):
        loss = ZRewardLoss.from_pretrained(out / stage / "model")
        scored = loss.score(torch.rand(1, 3, 56, 56), ["a red circle"], reasoning=[["I see a circle."] * 4])
        assert scored.probs.shape == (1, 4, 9)
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stderr.count("done already") == 2, second.stderr[-4000:]
