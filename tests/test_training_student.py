"""The RISD student and the OPD baseline on tiny models: the teacher cache (hit, miss, resume, fingerprint), the RISD
loss against values recomputed from the scorer, every parameter moving, and export → load → the same scores."""

import dataclasses
import itertools
import json
import math

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

import training.teacher_cache as teacher_cache
from training.data import load_split
from training.objectives import soft_target
from training.opd import OPDConfig, OPDTrainer
from training.risd import RISDConfig, RISDTrainer
from training.sequences import Row, forward_rows
from training.teacher_cache import (
    CacheSettings,
    TeacherCache,
    average_chains,
    build_teacher_cache,
    teacher_fingerprint,
)
from training.trainer import load_base
from zreward_diffusers import ZRewardLoss
from zreward_diffusers.testing import create_tiny_checkpoint

DATA = dict(train_data={"num_groups": 2, "start": 0}, eval_data={"num_groups": 2, "start": 1000})
SETTINGS = CacheSettings(num_samples=2, max_new_tokens=5, chunk_size=3, seed=0)
DIMENSIONS = ("alignment", "realism")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    create_tiny_checkpoint(root / "teacher", seed=0)
    create_tiny_checkpoint(root / "student", seed=1)
    return str(root / "teacher"), str(root / "student")


def build(teacher_dir, cache_dir, settings=SETTINGS, num_groups=2):
    model, processor, rubric = load_base(teacher_dir)
    dataset = load_split({"num_groups": num_groups})
    cache = TeacherCache(cache_dir, teacher_fingerprint(teacher_dir, settings), settings)
    return build_teacher_cache(model, processor, rubric, dataset, DIMENSIONS, cache, progress=False), cache


# ------------------------------------------------------------------------------------------------ the cache
def mean_of_finished_chains(probs: list[list[float]], finished: list[bool]) -> list[float]:
    """q̄ by an explicit loop: the mean of the finished chains' rows, of every row when no chain finished."""
    kept = [row for row, done in zip(probs, finished, strict=True) if done] or probs
    return [sum(row[k] for row in kept) / len(kept) for k in range(len(probs[0]))]


def test_average_chains_by_hand():
    """Only the finished chains count; with none finished, every chain does (the docstring's fallback)."""
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    np.testing.assert_allclose(average_chains(probs, [True, False]), [0.2, 0.8])
    np.testing.assert_allclose(average_chains(probs, [False, True]), [0.6, 0.4])
    np.testing.assert_allclose(average_chains(probs, [True, True]), [0.4, 0.6])
    np.testing.assert_allclose(average_chains(probs, [False, False]), [0.4, 0.6])
    three = np.array([[0.1, 0.9], [0.5, 0.5], [0.3, 0.7]])
    np.testing.assert_allclose(average_chains(three, [True, False, True]), [0.2, 0.8])


def test_cache_miss_then_hit(models, tmp_path, monkeypatch):
    entries, cache = build(models[0], tmp_path)
    assert len(entries) == 8 * len(DIMENSIONS)
    for entry in entries.values():
        probs = np.array(entry["probs"])
        assert probs.shape == (2, 9) and len(entry["chains"]) == 2
        np.testing.assert_allclose(entry["mean"], mean_of_finished_chains(entry["probs"], entry["finished"]),
                                   atol=1e-7)

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cache hit must not sample the teacher")

    monkeypatch.setattr(teacher_cache, "sample_reasoning", no_sampling)
    again, _ = build(models[0], tmp_path)
    assert again == entries
    monkeypatch.undo()
    more, _ = build(models[0], tmp_path, num_groups=3)  # a miss: only the new group's inputs are sampled
    assert len(more) == 12 * len(DIMENSIONS) and all(more[key] == value for key, value in entries.items())
    # the tiny teacher closes no chain in 5 tokens: mark each input's first chain finished, so q̄ is that chain alone
    original = teacher_cache.sample_reasoning

    def first_chain_finished(*args, **kwargs):
        chains, finished = original(*args, **kwargs)
        return chains, [[m == 0 for m in range(len(row))] for row in finished]

    monkeypatch.setattr(teacher_cache, "sample_reasoning", first_chain_finished)
    mixed, _ = build(models[0], tmp_path / "mixed")
    for entry in mixed.values():
        assert entry["finished"] == [True, False]
        np.testing.assert_allclose(entry["mean"], entry["probs"][0], atol=1e-7)
        np.testing.assert_allclose(entry["mean"], mean_of_finished_chains(entry["probs"], entry["finished"]),
                                   atol=1e-7)


def test_interrupted_cache_resumes_to_the_same_result(models, tmp_path, monkeypatch):
    full, _ = build(models[0], tmp_path / "full")
    calls = {"n": 0}
    original = teacher_cache.sample_reasoning

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "sample_reasoning", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(models[0], tmp_path / "resumed")
    monkeypatch.undo()
    partial = TeacherCache(tmp_path / "resumed", teacher_fingerprint(models[0], SETTINGS), SETTINGS).load()
    assert 0 < len(partial) < len(full)
    with open(tmp_path / "resumed" / teacher_fingerprint(models[0], SETTINGS) / "entries.jsonl", "a") as file:
        file.write('{"key": "torn')  # a write cut short
    resumed, _ = build(models[0], tmp_path / "resumed")
    assert resumed == full


def test_each_process_writes_its_own_entries_file(models, tmp_path):
    # Process 1 appending while process 0 loads: process 0 must read process 1's complete lines, and neither read
    # nor cut off its line still being written (cutting it off would lose that write). A process cuts a torn line
    # off its own file only.
    full, _ = build(models[0], tmp_path / "full")
    fingerprint = teacher_fingerprint(models[0], SETTINGS)
    cache0 = TeacherCache(tmp_path, fingerprint, SETTINGS)
    cache1 = TeacherCache(tmp_path, fingerprint, SETTINGS, rank=1)
    assert cache0.path.name == "entries.jsonl" and cache1.path.name == "entries.1.jsonl"
    values = list(full.values())
    cache0.append(values[:3])
    cache1.append(values[3:5])
    with open(cache1.path, "a") as file:
        file.write('{"key": "half-writ')  # process 1's write under way
    size = cache1.path.stat().st_size
    seen = cache0.load()
    assert seen == {entry["key"]: entry for entry in values[:5]}
    assert cache1.path.stat().st_size == size  # not cut off by another process
    assert cache1.load() == seen and cache1.path.read_bytes().endswith(b"\n")  # cut off by its owner
    with pytest.raises(ValueError, match="rank"):
        TeacherCache(tmp_path, fingerprint, SETTINGS, rank=-1)
    model, processor, rubric = load_base(models[0])
    with pytest.raises(ValueError, match="`rank` 0"):
        build_teacher_cache(model, processor, rubric, load_split({"num_groups": 2}), DIMENSIONS, cache1,
                            progress=False)


def test_a_cache_built_by_two_processes_reads_as_one(models, tmp_path):
    # chunks r::2 from each process (run one after the other here), then any process reads the whole cache
    full, _ = build(models[0], tmp_path / "full")
    model, processor, rubric = load_base(models[0])
    fingerprint = teacher_fingerprint(models[0], SETTINGS)
    for rank in (1, 0):
        cache = TeacherCache(tmp_path / "two", fingerprint, SETTINGS, rank=rank)
        build_teacher_cache(model, processor, rubric, load_split({"num_groups": 2}), DIMENSIONS, cache,
                            progress=False, rank=rank, world_size=2)
    assert sorted(p.name for p in cache.directory.glob("entries*")) == ["entries.1.jsonl", "entries.jsonl"]
    assert TeacherCache(tmp_path / "two", fingerprint, SETTINGS).load() == full


def test_fingerprint_follows_the_teacher_and_the_settings(models, tmp_path):
    teacher, student = models
    base = teacher_fingerprint(teacher, SETTINGS)
    assert base == teacher_fingerprint(teacher, SETTINGS)
    assert base != teacher_fingerprint(student, SETTINGS)
    assert base != teacher_fingerprint(teacher, CacheSettings(num_samples=3, max_new_tokens=5, chunk_size=3))
    with pytest.raises(ValueError, match="safetensors"):
        teacher_fingerprint(tmp_path, SETTINGS)


# ------------------------------------------------------------------------------------------------ RISD
def risd_config(models, tmp_path, **changes):
    teacher, student = models
    config = dict(base=student, teacher=teacher, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                  num_samples=2, teacher_max_new_tokens=5, cache_chunk_size=4, groups_per_step=2,
                  dimensions=list(DIMENSIONS), lr=1e-3, warmup_steps=0, log_with=None, save_every=100,
                  steps=2, **DATA)
    config.update(changes)
    return RISDConfig(**config)


def kl_by_enumeration(target: list[float], log_probs: list[float]) -> float:
    """KL(q ‖ p) = Σ_k q_k (log q_k − log p_k) over the levels, 0 · log 0 = 0, in plain Python."""
    return sum(q * (math.log(q) - log_p) for q, log_p in zip(target, log_probs, strict=True) if q > 0)


def huber_by_hand(x: float, delta: float) -> float:
    """½ x² inside |x| ≤ δ, δ (|x| − ½ δ) outside."""
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def test_risd_loss_equals_the_hand_computed_terms(models, tmp_path):
    """distill = mean KL(q̄ ‖ p_S), gap = mean Huber_0.5 over the unit's pairs of (μ_S gap − μ_T gap), human = mean
    KL(q_human ‖ p_S), loss = distill + 0.5 gap + 0.1 human: each enumerated in plain Python from the student's read,
    the cached teacher q̄ and the records' soft targets (inputs here; `soft_target` is checked by hand in
    test_training_objectives)."""
    trainer = RISDTrainer(risd_config(models, tmp_path, full_vocabulary=False))
    records, dimension = trainer.step_units(0)[0]
    trainer.step_units = lambda step: [(records, dimension)]
    logs = trainer.training_step(0)
    model = trainer.unwrapped()
    rows = [Row(trainer.train_bank.index[r.record_id], r.prompt, dimension) for r in records]
    with torch.no_grad():
        out = forward_rows(model, trainer.encoder(rows), trainer.encoder.read_token_ids)
    log_p = out.score_log_probs.double().tolist()
    q = [trainer.targets[r.record_id, dimension].double().tolist() for r in records]
    levels = trainer.levels.tolist()
    assert len(levels) == 9 and all(len(row) == 9 for row in log_p + q)
    mu_s = [sum(math.exp(lp) * v for lp, v in zip(row, levels, strict=True)) for row in log_p]
    mu_t = [sum(qk * v for qk, v in zip(row, levels, strict=True)) for row in q]
    distill = sum(kl_by_enumeration(qi, pi) for qi, pi in zip(q, log_p, strict=True)) / len(records)
    pairs = list(itertools.combinations(range(len(records)), 2))
    assert pairs
    gap = sum(huber_by_hand((mu_s[a] - mu_s[b]) - (mu_t[a] - mu_t[b]), 0.5) for a, b in pairs) / len(pairs)
    labelled = [n for n, r in enumerate(records) if dimension in r.histograms or r.label(dimension) is not None]
    assert labelled
    humans = {n: soft_target(records[n], dimension, trainer.levels).double().tolist() for n in labelled}
    human = sum(kl_by_enumeration(humans[n], log_p[n]) for n in labelled) / len(labelled)
    assert logs["distill"] == pytest.approx(distill, rel=1e-4)
    assert logs["gap"] == pytest.approx(gap, rel=1e-4)
    assert logs["human"] == pytest.approx(human, rel=1e-4)
    # the gap term is small on these tiny models (0.5 gap ≈ 2e-4 of the loss): a tolerance that sees its weight
    assert logs["loss"] == pytest.approx(distill + 0.5 * gap + 0.1 * human, rel=1e-5)


def test_risd_trains_every_parameter_and_exports_the_same_scores(models, tmp_path):
    trainer = RISDTrainer(risd_config(models, tmp_path))
    before = {n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
    metrics = trainer.train()
    after = dict(trainer.unwrapped().named_parameters())
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    assert 0 <= metrics["preference_accuracy"] <= 1
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(saved["history"]) == 2 and {"distill", "gap", "human"} <= set(saved["history"][0])

    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "student (RISD)" in card and f"{metrics['preference_accuracy']:.3f}" in card and "realism" in card
    loss = ZRewardLoss.from_pretrained(tmp_path / "out" / "model")
    assert loss.dimensions == DIMENSIONS
    records = trainer.eval_set.records[:3]
    images = trainer.eval_bank.images[:3].permute(0, 3, 1, 2).float() / 255
    loaded = loss.scorer(images, [r.prompt for r in records], list(DIMENSIONS))
    rows = [Row(n, r.prompt, d) for n, r in enumerate(records) for d in DIMENSIONS]
    with torch.no_grad():
        out = forward_rows(trainer.unwrapped(), trainer.eval_encoder(rows), trainer.eval_encoder.read_token_ids)
    torch.testing.assert_close(loaded.probs.reshape(-1, 9), out.score_log_probs.exp(), atol=2e-5, rtol=1e-4)


def opd_config(models, tmp_path, **changes):
    teacher, student = models
    config = dict(base=student, teacher=teacher, output_dir=str(tmp_path / "out"), estimator="sampled",
                  batch_size=6, num_samples=2, dimensions=list(DIMENSIONS), lr=1e-3,
                  warmup_steps=0, log_with=None, save_every=100, steps=2, **DATA)
    config.update(changes)
    return OPDConfig(**config)


@pytest.mark.parametrize("module,make_config,keys", [
    ("training.risd", risd_config, ("loss", "distill", "gap", "human")),
    ("training.opd", opd_config, ("loss", "reverse_kl")),
])
def test_two_processes_match_one(models, tmp_path, module, make_config, keys):
    # RISD: the teacher cache is built from both processes' share of the chunks, then each step's groups are split;
    # OPD: each process samples its share of the step's units with per-unit seeds
    runs, rows = {}, {}
    for processes in (1, 2):
        config = make_config(models, tmp_path / str(processes), steps=3)
        path = tmp_path / f"{processes}.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
        rows[processes] = launch_recording_rows(module, ["--config", str(path)], processes,
                                                tmp_path / f"rows{processes}")
        runs[processes] = json.loads((tmp_path / str(processes) / "out" / "metrics.json").read_text())
    assert_shards_partition_the_batch(rows[1][0], rows[2])
    for key in keys:
        np.testing.assert_allclose([h[key] for h in runs[2]["history"]], [h[key] for h in runs[1]["history"]],
                                   rtol=1e-4, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(runs[2]["eval_scores"], runs[1]["eval_scores"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_config,trainer_class", [(risd_config, RISDTrainer), (opd_config, OPDTrainer)])
def test_lora_gradient_checkpointing_and_bf16_train_the_adapter_only(models, tmp_path, make_config, trainer_class,
                                                                   fresh_accelerate_state):
    config = make_config(models, tmp_path, lr=1e-2, **LORA_SETTINGS)
    check_lora_training(trainer_class(config), 2, tmp_path / "model", torch.rand(2, 3, 56, 56),
                        ["a red circle", "two blue squares"])


def test_risd_rejects_bad_settings(models, tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        RISDTrainer(risd_config(models, tmp_path, num_samples=0))
    with pytest.raises(ValueError, match="temperature"):
        RISDTrainer(risd_config(models, tmp_path, temperature=0.0))


# ------------------------------------------------------------------------------------------------ OPD
@pytest.mark.parametrize("estimator", ["sampled", "exact"])
def test_opd_trains_every_parameter(models, tmp_path, estimator):
    teacher, student = models
    config = OPDConfig(base=student, teacher=teacher, output_dir=str(tmp_path), estimator=estimator, batch_size=6,
                       num_samples=4, dimensions=list(DIMENSIONS), lr=1e-3, warmup_steps=0, log_with=None, **DATA)
    trainer = OPDTrainer(config)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
    logs = [trainer.training_step(step) for step in range(1)]
    trainer.optimizer.step()
    after = dict(trainer.unwrapped().named_parameters())
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    assert logs[0]["reverse_kl"] > 0


def test_opd_rejects_an_unknown_estimator(models, tmp_path):
    # the exact estimator's value is checked by enumeration in test_training_losses.py
    teacher, student = models
    with pytest.raises(ValueError, match="estimator"):
        OPDTrainer(OPDConfig(base=student, teacher=teacher, output_dir=str(tmp_path), estimator="mc", log_with=None))


# ------------------------------------------------------------------------------------------------ CLIP student
def test_clip_student_distils_and_loads_through_zreward_loss(models, tmp_path):
    from training.risd_clip import RISDClipConfig, train
    from zreward_diffusers.clip_student import ClipStudentScorer

    teacher, _ = models
    config = RISDClipConfig(teacher=teacher, output_dir=str(tmp_path / "clip"), cache_dir=str(tmp_path / "cache"),
                            num_samples=2, teacher_max_new_tokens=5, cache_chunk_size=4, groups_per_step=2,
                            steps=3, save_every=2, **DATA)
    student_before = ClipStudentScorer.tiny(seed=0).state_dict()
    metrics = train(config)
    assert len(metrics["history"]) == 3 and 0 <= metrics["preference_accuracy"] <= 1
    loss = ZRewardLoss.from_pretrained(tmp_path / "clip" / "model")
    assert isinstance(loss.scorer, ClipStudentScorer)
    changed = [k for k, v in loss.scorer.state_dict().items() if not torch.equal(v, student_before[k])]
    assert changed  # trained
    images = (torch.rand(2, 3, 56, 56) * 2 - 1).requires_grad_(True)
    value = loss(images, ["two red circles on a blue background", "one star on a white background"])
    value.backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    again = ZRewardLoss.from_pretrained(tmp_path / "clip" / "model")
    torch.testing.assert_close(again.scorer(images.detach() / 2 + 0.5, ["a", "b"]).probs,
                               loss.scorer(images.detach() / 2 + 0.5, ["a", "b"]).probs)
    with pytest.raises(ValueError, match="reasoning"):
        loss.scorer(images.detach(), ["a", "b"], reasoning=[["x"] * 4] * 2)


def test_clip_student_two_processes_match_one(models, tmp_path):
    # both processes build the teacher cache and train on their shares of each step: the run equals a 1-process run
    from training.risd_clip import RISDClipConfig

    teacher, _ = models
    runs = {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        config = RISDClipConfig(teacher=teacher, output_dir=str(out / "clip"), cache_dir=str(out / "cache"),
                                num_samples=2, teacher_max_new_tokens=5, cache_chunk_size=4, groups_per_step=2,
                                steps=2, save_every=2, **DATA)
        path = tmp_path / f"{processes}.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
        launch_cpu(["-m", "training.risd_clip", "--config", str(path)], processes)
        runs[processes] = json.loads((out / "clip" / "metrics.json").read_text())
    for key in ("loss", "distill", "gap", "human"):
        np.testing.assert_allclose([h[key] for h in runs[2]["history"]], [h[key] for h in runs[1]["history"]],
                                   rtol=1e-5, atol=1e-8, err_msg=key)  # the gap term is ~1e-5: float sums differ
    assert runs[2]["preference_accuracy"] == pytest.approx(runs[1]["preference_accuracy"])


def test_clip_student_resume_runs_only_the_remaining_steps_and_equals_an_uninterrupted_run(models, tmp_path):
    from training.risd_clip import RISDClipConfig, train

    teacher, _ = models

    def config(out: str, steps: int, resume: bool = False) -> RISDClipConfig:
        return RISDClipConfig(teacher=teacher, output_dir=str(tmp_path / out), cache_dir=str(tmp_path / "cache"),
                              num_samples=2, teacher_max_new_tokens=5, cache_chunk_size=4, groups_per_step=2,
                              steps=steps, save_every=2, resume=resume, **DATA)

    full = train(config("full", 4))
    train(config("half", 2))
    resumed = train(config("half", 4, resume=True))
    assert resumed["resumed_from_step"] == 2 and [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    for key in ("loss", "distill", "gap", "human"):
        np.testing.assert_allclose([h[key] for h in resumed["history"]], [h[key] for h in full["history"]],
                                   rtol=1e-5, atol=1e-8, err_msg=key)
    a = ZRewardLoss.from_pretrained(tmp_path / "full" / "model").scorer.state_dict()
    b = ZRewardLoss.from_pretrained(tmp_path / "half" / "model").scorer.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_clip_student_two_process_resume_equals_the_uninterrupted_two_process_run(models, tmp_path):
    from training.risd_clip import RISDClipConfig

    teacher, _ = models

    def launch(out: str, steps: int, resume: bool = False) -> dict:
        config = RISDClipConfig(teacher=teacher, output_dir=str(tmp_path / out), cache_dir=str(tmp_path / "cache"),
                                num_samples=2, teacher_max_new_tokens=5, cache_chunk_size=4, groups_per_step=2,
                                steps=steps, save_every=2, resume=resume, **DATA)
        path = tmp_path / f"{out}-{steps}.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
        launch_cpu(["-m", "training.risd_clip", "--config", str(path)], 2)
        return json.loads((tmp_path / out / "metrics.json").read_text())

    full = launch("full", 4)
    launch("half", 2)
    resumed = launch("half", 4, resume=True)
    assert resumed["resumed_from_step"] == 2
    for key in ("loss", "distill", "gap", "human"):
        np.testing.assert_allclose([h[key] for h in resumed["history"]], [h[key] for h in full["history"]],
                                   rtol=1e-5, atol=1e-8, err_msg=key)
