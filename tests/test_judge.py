"""`training.judge`: a third-party judge's reasoning and scores as a RISD teacher cache — the distributions against
hand values, every malformed judge line refused by line number and field, the callable form, and a RISD run that
distils a judge JSONL (its targets the hand-computed averages of the judge's scores) without loading a teacher."""

import json

import numpy as np
import pytest
import torch

from training.data import ImageBank, load_split
from training.judge import cache_from_judge, cache_from_judge_jsonl, two_level_split
from training.risd import RISDConfig, RISDTrainer
from training.teacher_cache import input_key
from zreward_diffusers.rubric import Rubric

LEVELS = [1.0 + 0.5 * k for k in range(9)]
DIMENSIONS = ("alignment", "realism")
DATA = dict(train_data={"num_groups": 2, "start": 0}, eval_data={"num_groups": 2, "start": 1000})


def one_hot(level: float) -> list[float]:
    return [1.0 if v == level else 0.0 for v in LEVELS]


def by_level(mass: dict[float, float]) -> list[float]:
    """A distribution on LEVELS written as {level: mass}."""
    assert set(mass) <= set(LEVELS)
    return [mass.get(v, 0.0) for v in LEVELS]


PROBS = by_level({2.0: 0.25, 2.5: 0.25, 4.0: 0.5})


def judge_lines(records) -> tuple[list[dict], dict]:
    """Two or three chains per (record, dimension) and the q̄ each should give, worked out by hand:
    alignment: scores 3.3 (→ 0.4 on 3.0, 0.6 on 3.5) and 4.0 (→ all on 4.0): q̄ = {3.0: .2, 3.5: .3, 4.0: .5};
    realism: probs PROBS, score 1.0 (one-hot on 1.0) and score 4.75 with PROBS beside it (PROBS wins):
    q̄ = {1.0: 1/3, 2.0: 1/6, 2.5: 1/6, 4.0: 1/3}. Record 0's alignment gets a third chain, 5.0: q̄ =
    {3.0: 0.4/3, 3.5: 0.6/3, 4.0: 1/3, 5.0: 1/3}."""
    lines, expected = [], {}
    for n, record in enumerate(records):
        lines.append({"record_id": record.record_id, "dimension": "alignment", "reasoning": f"a{n}", "score": 3.3})
        lines.append({"record_id": record.record_id, "dimension": "realism", "reasoning": f"r{n}", "probs": PROBS})
        lines.append({"record_id": record.record_id, "dimension": "alignment", "reasoning": f"b{n}", "score": 4})
        lines.append({"record_id": record.record_id, "dimension": "realism", "reasoning": f"s{n}", "score": 1.0})
        lines.append({"record_id": record.record_id, "dimension": "realism", "reasoning": f"t{n}", "score": 4.75,
                      "probs": PROBS})
        lines.append({"record_id": record.record_id, "dimension": "aesthetics", "reasoning": "", "score": 2.0})
        expected[record.record_id, "alignment"] = (
            [f"a{n}", f"b{n}"], [by_level({3.0: 0.4, 3.5: 0.6}), one_hot(4.0)], by_level({3.0: 0.2, 3.5: 0.3,
                                                                                              4.0: 0.5}))
        expected[record.record_id, "realism"] = (
            [f"r{n}", f"s{n}", f"t{n}"], [PROBS, one_hot(1.0), PROBS],
            by_level({1.0: 1 / 3, 2.0: 1 / 6, 2.5: 1 / 6, 4.0: 1 / 3}))
    lines.append({"record_id": records[0].record_id, "dimension": "alignment", "reasoning": "c0", "score": 5.0})
    expected[records[0].record_id, "alignment"] = (
        ["a0", "b0", "c0"], [by_level({3.0: 0.4, 3.5: 0.6}), one_hot(4.0), one_hot(5.0)],
        by_level({3.0: 0.4 / 3, 3.5: 0.6 / 3, 4.0: 1 / 3, 5.0: 1 / 3}))
    return lines, expected


def write_jsonl(path, lines) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def dataset():
    return load_split({"num_groups": 2})


def test_two_level_split_by_hand():
    np.testing.assert_allclose(two_level_split(3.3, LEVELS), by_level({3.0: 0.4, 3.5: 0.6}), atol=1e-12)
    np.testing.assert_allclose(two_level_split(1.1, LEVELS), by_level({1.0: 0.8, 1.5: 0.2}), atol=1e-12)
    np.testing.assert_allclose(two_level_split(4.9, LEVELS), by_level({4.5: 0.2, 5.0: 0.8}), atol=1e-12)
    for level in LEVELS:  # on a level (the ends included): one-hot
        np.testing.assert_array_equal(two_level_split(level, LEVELS), one_hot(level))
    for score in (1.7, 2.25, 3.95):
        assert two_level_split(score, LEVELS) @ np.array(LEVELS) == pytest.approx(score, abs=1e-12)
    with pytest.raises(ValueError, match="outside"):
        two_level_split(5.01, LEVELS)


def test_judge_jsonl_cache_holds_the_hand_computed_distributions(dataset, tmp_path):
    lines, expected = judge_lines(dataset.records)
    path = write_jsonl(tmp_path / "judge.jsonl", lines)
    cache = cache_from_judge_jsonl(path, dataset, Rubric(), DIMENSIONS, tmp_path / "cache")
    entries = cache.load()
    bank = ImageBank(dataset)
    assert cache.directory.parent == tmp_path / "cache" and cache.directory.name.startswith("judge-")
    assert len(entries) == len(dataset.records) * 2
    for n, record in enumerate(dataset.records):
        for dimension in DIMENSIONS:
            entry = entries[input_key(bank.images[n].numpy(), record.prompt, dimension)]
            chains, probs, mean = expected[record.record_id, dimension]
            assert (entry["record_id"], entry["dimension"], entry["chains"]) == (record.record_id, dimension, chains)
            assert entry["finished"] == [True] * len(chains)
            np.testing.assert_allclose(entry["probs"], probs, atol=1e-8)
            np.testing.assert_allclose(entry["mean"], mean, atol=1e-8)
    assert set(entry) == {"key", "record_id", "dimension", "chains", "finished", "probs", "mean"}
    settings = json.loads((cache.directory / "settings.json").read_text())
    assert settings["source"] == path and settings["levels"] == LEVELS

    # the same file: the same cache, nothing appended; an edited file: another cache
    size = cache.path.stat().st_size
    again = cache_from_judge_jsonl(path, dataset, Rubric(), DIMENSIONS, tmp_path / "cache")
    assert again.directory == cache.directory and cache.path.stat().st_size == size
    lines[0]["score"] = 3.4
    edited = cache_from_judge_jsonl(write_jsonl(tmp_path / "judge.jsonl", lines), dataset, Rubric(), DIMENSIONS,
                                    tmp_path / "cache")
    assert edited.directory != cache.directory
    first = edited.load()[input_key(bank.images[0].numpy(), dataset.records[0].prompt, "alignment")]
    np.testing.assert_allclose(first["probs"][0], by_level({3.0: 0.2, 3.5: 0.8}), atol=1e-8)


def bad(lines, index, **changes):
    changed = [dict(line) for line in lines]
    changed[index].update(changes)
    return [{k: v for k, v in line.items() if v is not ...} for line in changed]


@pytest.mark.parametrize(("change", "message"), [
    (dict(score=5.5), ":3: field 'score' 5.5 lies outside \\[1, 5\\]"),
    (dict(score=0.5), ":3: field 'score' 0.5 lies outside"),
    (dict(score="high"), ":3: field 'score' must be a finite number"),
    (dict(score=..., probs=[0.5, 0.5]), ":3: field 'probs' must be a list of 9 numbers"),
    (dict(score=..., probs=[0.1] * 9), ":3: field 'probs' must sum to 1, sums to 0.9"),
    (dict(score=..., probs=[-0.5, 1.5] + [0.0] * 7), ":3: field 'probs' must hold finite non-negative numbers"),
    (dict(score=...), ":3: needs a field 'score' or 'probs'"),
    (dict(record_id="nobody"), ":3: field 'record_id': unknown record 'nobody'"),
    (dict(dimension="colour"), ":3: field 'dimension': unknown dimension 'colour'"),
    (dict(reasoning=...), ":3: field 'reasoning' must be a string"),
    (dict(reasoning=7), ":3: field 'reasoning' must be a string"),
    (dict(confidence=0.9), ":3: unknown field\\(s\\) \\['confidence'\\]"),
])
def test_bad_judge_lines_are_refused_by_line_and_field(dataset, tmp_path, change, message):
    lines, _ = judge_lines(dataset.records)
    path = write_jsonl(tmp_path / "judge.jsonl", bad(lines, 2, **change))
    with pytest.raises(ValueError, match=message):
        cache_from_judge_jsonl(path, dataset, Rubric(), DIMENSIONS, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing is written from a bad file


def test_a_missing_or_unreadable_judge_line_is_named(dataset, tmp_path):
    lines, _ = judge_lines(dataset.records)
    missing = [line for line in lines if not (line["record_id"] == dataset.records[3].record_id
                                              and line["dimension"] == "realism")]
    with pytest.raises(ValueError, match=f"no judge line for record_id '{dataset.records[3].record_id}', "
                                         "dimension 'realism'"):
        cache_from_judge_jsonl(write_jsonl(tmp_path / "a.jsonl", missing), dataset, Rubric(), DIMENSIONS, tmp_path)
    (tmp_path / "b.jsonl").write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="b.jsonl:2: not valid JSON"):
        cache_from_judge_jsonl(tmp_path / "b.jsonl", dataset, Rubric(), DIMENSIONS, tmp_path)
    (tmp_path / "c.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="c.jsonl:1: expected a JSON object"):
        cache_from_judge_jsonl(tmp_path / "c.jsonl", dataset, Rubric(), DIMENSIONS, tmp_path)


def test_a_judge_callable_gives_the_cache_of_the_same_judgements_in_a_file(dataset, tmp_path):
    lines, expected = judge_lines(dataset.records)
    outputs = {}
    for line in lines:
        value = line.get("probs", line.get("score"))
        outputs.setdefault((line["record_id"], line["dimension"]), []).append(
            (line["reasoning"], np.array(value, dtype=np.float32) if isinstance(value, list) else value))
    prompt_of = {record.record_id: record.prompt for record in dataset.records}
    bank = ImageBank(dataset)
    pixels = {record.record_id: bank.images[n].numpy() for n, record in enumerate(dataset.records)}
    calls = []

    def judge(image, prompt, dimension):
        record_id = next(r for r, p in pixels.items() if np.array_equal(np.asarray(image), p))
        assert prompt == prompt_of[record_id]
        calls.append((record_id, dimension))
        return outputs[record_id, dimension]

    cache = cache_from_judge(judge, dataset, Rubric(), DIMENSIONS, tmp_path, "my-judge", {"temperature": 0.7},
                             chunk_size=3)
    file_cache = cache_from_judge_jsonl(write_jsonl(tmp_path / "j.jsonl", lines), dataset, Rubric(), DIMENSIONS,
                                        tmp_path / "file")
    from_fn, from_file = cache.load(), file_cache.load()
    assert from_fn.keys() == from_file.keys() and len(calls) == 16
    for key, entry in from_fn.items():
        assert entry["chains"] == from_file[key]["chains"]
        np.testing.assert_allclose(entry["probs"], from_file[key]["probs"], atol=1e-7)  # float32 probs
        np.testing.assert_allclose(entry["mean"], expected[entry["record_id"], entry["dimension"]][2], atol=1e-7)
    calls.clear()
    again = cache_from_judge(judge, dataset, Rubric(), DIMENSIONS, tmp_path, "my-judge", {"temperature": 0.7})
    assert calls == [] and again.directory == cache.directory  # cached: not judged again
    other = cache_from_judge(judge, dataset, Rubric(), DIMENSIONS, tmp_path, "my-judge", {"temperature": 1.0})
    assert other.directory != cache.directory and len(calls) == 16


@pytest.mark.parametrize(("output", "message"), [
    ([], "record_id 'g000000-0', dimension 'alignment': expected a non-empty list"),
    ([("why", 3.0), ("why", 6.0)], "dimension 'alignment', chain 1: field 'score' 6.0 lies outside"),
    ([("why", [0.5] * 9)], "chain 0: field 'probs' must sum to 1"),
    ([("why", "3")], "chain 0: score_or_probs must be a number"),
    (["why"], "chain 0: expected \\(reasoning: str, score_or_probs\\)"),
])
def test_bad_judge_outputs_are_refused_by_record_dimension_and_chain(dataset, tmp_path, output, message):
    with pytest.raises(ValueError, match=message):
        cache_from_judge(lambda image, prompt, dimension: output, dataset, Rubric(), DIMENSIONS, tmp_path, "j")
    with pytest.raises(ValueError, match="`judge_name`"):
        cache_from_judge(lambda image, prompt, dimension: output, dataset, Rubric(), DIMENSIONS, tmp_path, "")


def test_risd_distils_a_judge_jsonl_without_loading_a_teacher(tiny_base, dataset, tmp_path):
    """The targets are the hand-computed chain averages; the teacher path does not exist (loading it would fail);
    two steps train every parameter."""
    lines, expected = judge_lines(dataset.records)
    path = write_jsonl(tmp_path / "judge.jsonl", lines)
    config = RISDConfig(base=tiny_base, teacher=str(tmp_path / "no-teacher"), judge_outputs=path,
                        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), groups_per_step=2,
                        dimensions=list(DIMENSIONS), lr=1e-3, warmup_steps=0, log_with=None, save_every=100, steps=2,
                        **DATA)
    trainer = RISDTrainer(config)
    assert trainer.cache_directory.name.startswith("judge-")
    assert set(trainer.targets) == set(expected)
    for pair, (_, _, mean) in expected.items():
        torch.testing.assert_close(trainer.targets[pair], torch.tensor(mean, dtype=torch.float32), atol=1e-6,
                                   rtol=0)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
    metrics = trainer.train()
    after = dict(trainer.unwrapped().named_parameters())
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    assert len(metrics["history"]) == 2 and all(np.isfinite(h["distill"]) for h in metrics["history"])
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert f"distilled: `{path}`" in card and "no-teacher" not in card  # the card names what was distilled
    # target_samples: the first chain only
    first = RISDConfig(**{**config.__dict__, "output_dir": str(tmp_path / "out1"), "target_samples": 1})
    targets = RISDTrainer(first).targets
    record = dataset.records[0].record_id
    torch.testing.assert_close(targets[record, "alignment"], torch.tensor(by_level({3.0: 0.4, 3.5: 0.6})))
    torch.testing.assert_close(targets[record, "realism"], torch.tensor(PROBS))
