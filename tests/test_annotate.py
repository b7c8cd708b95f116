"""`training.annotate` on a tiny annotator and 8 labelled records of the synthetic world: the consistency filter keeps
a rationale iff the annotator's own read lands within the tolerance (with a controlled read, and with the real read
recomputed through `ZRewardScorer`), rejected pairs are retried with new seeds, an interrupted run resumes to the same
bytes, settings changes are refused, and the vLLM path (through a fake `vllm` module) hands vLLM the right requests."""

import dataclasses
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import launch_cpu

import training.annotate as annotate_module
from training.annotate import AnnotateConfig, annotate
from training.data import load_split
from training.trainer import load_base
from zreward_diffusers import ZRewardScorer
from zreward_diffusers.data import RewardDataset

DIMENSIONS = ["alignment", "realism"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """8 records (2 prompt groups) labelled on every dimension, saved as a RewardDataset."""
    path = tmp_path_factory.mktemp("data") / "labelled"
    load_split({"num_groups": 2}).save(path)
    return str(path)


def config(annotator, data, out, **changes) -> AnnotateConfig:
    settings = dict(annotator=annotator, data=data, output_dir=str(out), dimensions=list(DIMENSIONS), batch_size=5,
                    max_new_tokens=6, attempts=3, require_finished=False)
    settings.update(changes)
    return AnnotateConfig(**settings)


def labels_of(data) -> dict[tuple[str, str], float]:
    dataset = RewardDataset.load(data)
    return {(r.record_id, d): r.labels[d] for r in dataset.records for d in DIMENSIONS}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the filter
def test_the_filter_keeps_a_rationale_iff_the_read_is_within_tolerance_and_retries_the_others(tiny_base, data_dir,
                                                                                            tmp_path, monkeypatch):
    """The read is replaced by a fixed cycle of E values handed out in read order (chunk by chunk, each attempt over
    the pairs still pending, in chunk order); the expected outcome is simulated here from those values and the labels
    alone: a pair is kept at its first attempt with |E − label| ≤ 0.5 (0.5 itself included), retried otherwise, and
    rejected after 3 attempts."""
    cycle = itertools.cycle([3.0, 1.0, 4.5, 2.5, 5.0, 3.5, 1.5, 4.0, 2.0])
    read_rows = []

    def fake_read(model, encoder, rows, levels):
        read_rows.extend(rows)
        return [next(cycle) for _ in rows]

    seeds = []
    generate = annotate_module.TransformersBackend.generate

    def spy(self, images, texts, seed):
        seeds.append(seed)
        return generate(self, images, texts, seed)

    monkeypatch.setattr(annotate_module, "read_expected_scores", fake_read)
    monkeypatch.setattr(annotate_module.TransformersBackend, "generate", spy)
    summary = annotate(config(tiny_base, data_dir, tmp_path / "out"), progress=False)
    labels = labels_of(data_dir)
    pairs = list(labels)  # record order × dimension order, as annotated
    assert len(pairs) == 16

    values = itertools.cycle([3.0, 1.0, 4.5, 2.5, 5.0, 3.5, 1.5, 4.0, 2.0])
    expected, expected_seeds = {}, []
    for start in range(0, len(pairs), 5):
        pending = pairs[start:start + 5]
        reads = {pair: [] for pair in pending}
        for attempt in range(3):
            if pending:  # each attempt samples with the seed of (seed, chunk, attempt)
                expected_seeds.append(int(np.random.SeedSequence([0, start // 5, attempt]).generate_state(1)[0]))
            for pair in pending:
                reads[pair].append(next(values))
            pending = [pair for pair in pending if abs(reads[pair][-1] - labels[pair]) > 0.5]
        expected.update(reads)
    assert seeds == expected_seeds
    assert len(read_rows) == sum(len(v) for v in expected.values())
    assert all(row.reasoning for row in read_rows)  # the read is after the rationale

    lines = [json.loads(line) for line in (tmp_path / "out" / "annotations.jsonl").read_text().splitlines()]
    assert [line["chunk"] for line in lines] == [0, 1, 2, 3]
    results = {(r["record_id"], r["dimension"]): r for line in lines for r in line["results"]}
    assert list(results) == pairs
    for pair, reads in expected.items():
        result = results[pair]
        assert [a["expected"] for a in result["attempts"]] == reads, pair
        kept = abs(reads[-1] - labels[pair]) <= 0.5
        assert result["kept"] == kept
        assert [a["verdict"] for a in result["attempts"]] == ["inconsistent"] * (len(reads) - 1) + [
            "kept" if kept else "inconsistent"]
    kept_pairs = {pair for pair, reads in expected.items() if abs(reads[-1] - labels[pair]) <= 0.5}
    retried = [pair for pair, reads in expected.items() if len(reads) > 1]
    assert kept_pairs and len(kept_pairs) < 16 and retried and any(p in kept_pairs for p in retried)
    assert any(abs(reads[-1] - labels[p]) == 0.5 for p, reads in expected.items())  # the boundary is kept

    annotated = RewardDataset.load(tmp_path / "out" / "dataset")
    original = RewardDataset.load(data_dir)
    for record, before in zip(annotated.records, original.records, strict=True):
        for dimension in DIMENSIONS:
            pair = (record.record_id, dimension)
            if pair in kept_pairs:
                assert record.rationales[dimension] == results[pair]["attempts"][-1]["rationale"]
            else:
                assert dimension not in record.rationales
        for dimension in ("aesthetics", "physical_plausibility"):  # not annotated: kept as they were
            assert record.rationales[dimension] == before.rationales[dimension]
        assert (record.labels, record.prompt, record.group_id) == (before.labels, before.prompt, before.group_id)
        assert np.array_equal(np.asarray(annotated.load_image(record)), np.asarray(original.load_image(before)))
    for dimension in DIMENSIONS:
        mine = [p for p in pairs if p[1] == dimension]
        kept = [p for p in mine if p in kept_pairs]
        errors = [abs(expected[p][-1] - labels[p]) for p in mine]
        assert summary["per_dimension"][dimension]["kept"] == len(kept)
        assert summary["per_dimension"][dimension]["rejected"] == len(mine) - len(kept)
        assert summary["per_dimension"][dimension]["mean_abs_error"] == pytest.approx(np.mean(errors))
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_the_real_read_is_the_scorers_read_without_the_label(tiny_base, data_dir, tmp_path, monkeypatch):
    """With the annotator's own read: each stored E equals E recomputed by `ZRewardScorer.score_pil` from the image,
    the rubric prompt (no label) and the rationale as reasoning; a rationale is kept iff that E is within 0.5. The
    generation prompt carries the label and the record's image."""
    seen = []
    original = annotate_module.TransformersBackend.generate

    def spy(self, images, texts, seed):
        seen.extend(zip(images, texts, strict=True))
        return original(self, images, texts, seed)

    monkeypatch.setattr(annotate_module.TransformersBackend, "generate", spy)
    annotate(config(tiny_base, data_dir, tmp_path / "out", attempts=1), progress=False)
    results = [r for line in (tmp_path / "out" / "annotations.jsonl").read_text().splitlines()
               for r in json.loads(line)["results"]]
    dataset = RewardDataset.load(data_dir)
    model, processor, rubric = load_base(tiny_base)
    scorer = ZRewardScorer(model.eval(), processor, rubric)
    levels = np.array(rubric.levels)
    decisions = []
    for (image, text), result in zip(seen, results, strict=True):
        record = dataset.by_id(result["record_id"])
        pixels = np.asarray(dataset.load_image(record))
        assert np.array_equal(np.asarray(image), pixels)
        assert f"gave this image {result['label']:g} on this dimension" in text
        assert result["dimension"].replace("_", " ") in text
        rationale = result["attempts"][0]["rationale"]
        with torch.no_grad():
            out = scorer.score_pil([pixels], [record.prompt], [result["dimension"]], reasoning=[[rationale]])
        read = float((out.probs[0, 0].double().numpy() * levels).sum())
        assert result["attempts"][0]["expected"] == pytest.approx(read, abs=1e-5)
        error = abs(read - result["label"])
        assert abs(error - 0.5) > 1e-4  # no decision rides on float noise
        assert result["kept"] == (error <= 0.5)
        decisions.append(result["kept"])
    assert len(decisions) == 16 and any(decisions) and not all(decisions)
    # another seed samples other rationales (the seed reaches the sampler)
    seen.clear()
    annotate(config(tiny_base, data_dir, tmp_path / "seed1", attempts=1, seed=1), progress=False)
    other = [r["attempts"][0]["rationale"] for line in (tmp_path / "seed1" / "annotations.jsonl").read_text()
             .splitlines() for r in json.loads(line)["results"]]
    assert sum(a != r["attempts"][0]["rationale"] for a, r in zip(other, results, strict=True)) >= 12


# ------------------------------------------------------------------------------------------------ resume
def test_an_interrupted_run_resumes_to_the_same_bytes(tiny_base, data_dir, tmp_path, monkeypatch):
    full = annotate(config(tiny_base, data_dir, tmp_path / "full"), progress=False)
    original = annotate_module.annotate_chunk
    calls, stop_at = [], [2]

    def interrupted(index, *args, **kwargs):
        calls.append(index)
        if len(calls) in stop_at:
            raise KeyboardInterrupt
        return original(index, *args, **kwargs)

    monkeypatch.setattr(annotate_module, "annotate_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        annotate(config(tiny_base, data_dir, tmp_path / "resumed"), progress=False)
    assert len((tmp_path / "resumed" / "annotations.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "resumed" / "dataset").exists()
    with open(tmp_path / "resumed" / "annotations.jsonl", "a") as file:
        file.write('{"chunk": 1, "results": [{"record_id": "g0')  # a write cut short
    calls.clear()
    stop_at.clear()
    resumed = annotate(config(tiny_base, data_dir, tmp_path / "resumed"), progress=False)
    assert calls == [1, 2, 3] and resumed == full  # chunk 0 is not redone
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "full")
    # a rerun of a finished run changes nothing
    calls.clear()
    annotate(config(tiny_base, data_dir, tmp_path / "resumed"), progress=False)
    assert calls == [] and tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "full")


def test_other_settings_in_the_same_output_dir_are_refused(tiny_base, data_dir, tmp_path):
    annotate(config(tiny_base, data_dir, tmp_path, attempts=1), progress=False)
    with pytest.raises(ValueError, match=r"`output_dir`.*\['tolerance'\]"):
        annotate(config(tiny_base, data_dir, tmp_path, attempts=1, tolerance=0.25), progress=False)


def test_two_processes_write_what_one_writes(tiny_base, data_dir, tmp_path):
    """Under `accelerate launch` with 2 CPU processes each takes the chunks r::2 into its own file; the annotated
    dataset and the summary are byte for byte those of a 1-process run, and the two files hold every chunk once."""
    annotate(config(tiny_base, data_dir, tmp_path / "one"), progress=False)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(config(tiny_base, data_dir, tmp_path / "two"))))
    launch_cpu(["-m", "training.annotate", "--config", str(path)], 2, timeout=300)
    one, two = tree_bytes(tmp_path / "one"), tree_bytes(tmp_path / "two")
    assert {k: v for k, v in two.items() if not k.startswith("annotations")} == {
        k: v for k, v in one.items() if not k.startswith("annotations")}
    lines = {name: two[name].decode().splitlines() for name in ("annotations.jsonl", "annotations.1.jsonl")}
    assert [[json.loads(line)["chunk"] for line in lines[name]] for name in lines] == [[0, 2], [1, 3]]
    one_lines = one["annotations.jsonl"].decode().splitlines()
    assert sorted(lines["annotations.jsonl"] + lines["annotations.1.jsonl"]) == sorted(one_lines)


# ------------------------------------------------------------------------------------------------ vLLM
class FakeOutput:
    def __init__(self, text, finish_reason):
        self.outputs = [types.SimpleNamespace(text=text, finish_reason=finish_reason)]


def fake_vllm(calls: dict) -> types.ModuleType:
    """A stand-in for `vllm` with the call signatures training.annotate uses (`LLM(model=..., ...)`,
    `SamplingParams(...)`, `LLM.generate(requests, params, use_tqdm=...)`); it records its calls."""
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, temperature=1.0, top_p=1.0, max_tokens=16, seed=None):
            self.temperature, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed

    class LLM:
        def __init__(self, model, trust_remote_code=False, seed=0, dtype="auto", **kwargs):
            calls["llm"] = dict(model=model, trust_remote_code=trust_remote_code, seed=seed, dtype=dtype, **kwargs)

        def generate(self, requests, params, use_tqdm=True):
            calls.setdefault("generate", []).append((requests, params))
            return [FakeOutput(f" fake rationale {len(calls['generate'])}-{i} ", "stop" if i % 2 == 0 else "length")
                    for i in range(len(requests))]

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_vllm_backend_through_a_fake_vllm_module(data_dir, tmp_path, monkeypatch):
    """No real vLLM here: a fake `vllm` module in `sys.modules` with vLLM's call signatures. Checks the requests
    (chat text with the label, the record's image as `multi_modal_data`), one seed per request, `finish_reason`
    'length' as unfinished, and that only the dataset's labelled dimension is annotated by default."""
    from zreward_diffusers.testing import build_tiny_backbone

    model, processor = build_tiny_backbone("qwen2_vl", seed=0)
    plain = tmp_path / "plain"  # a plain Hugging Face VLM, as vLLM needs
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    dataset = RewardDataset.load(data_dir)
    only_realism = [dataclasses.replace(r, labels={"realism": r.labels["realism"]}, image=str(dataset.image_path(r)))
                    for r in dataset.records]
    RewardDataset(only_realism, dataset.pairs, None, dataset.dimensions, dataset.levels).save(tmp_path / "data",
                                                                                             copy_images=True)
    calls = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    monkeypatch.setattr(annotate_module, "read_expected_scores", lambda model, encoder, rows, levels:
                        [3.0] * len(rows))
    summary = annotate(config(str(plain), str(tmp_path / "data"), tmp_path / "out", dimensions=None, backend="vllm",
                              attempts=2, tolerance=5.0, require_finished=True, vllm_args={"max_model_len": 512}),
                       progress=False)
    assert calls["llm"] == dict(model=str(plain), trust_remote_code=False, seed=0, dtype="float32",
                                max_model_len=512)
    requests = [request for batch, _ in calls["generate"] for request in batch]
    seeds = [p.seed for _, params in calls["generate"] for p in params]
    assert len(set(seeds)) == len(seeds) and all(p.max_tokens == 6 for _, ps in calls["generate"] for p in ps)
    assert list(summary["per_dimension"]) == ["realism"]
    # 8 pairs in chunks of 5 and 3; the fake ends requests 1, 3 of each call by length (unfinished): they are retried
    # once, where the first of them ends by stop and the second (chunk 0's record 3) by length again
    assert [len(batch) for batch, _ in calls["generate"]] == [5, 2, 3, 1]
    first = calls["generate"][0][0]
    for request, record in zip(first, dataset.records[:5], strict=True):
        assert np.array_equal(np.asarray(request["multi_modal_data"]["image"]),
                              np.asarray(dataset.load_image(record)))
        assert f"gave this image {record.labels['realism']:g}" in request["prompt"]
        assert request["prompt"].startswith("<|im_start|>user\n<|vision_start|>")
    assert len(requests) == 11
    annotated = RewardDataset.load(tmp_path / "out" / "dataset")
    assert [r.rationales.get("realism") for r in annotated.records] == [
        "fake rationale 1-0", "fake rationale 2-0", "fake rationale 1-2", None, "fake rationale 1-4",
        "fake rationale 3-0", "fake rationale 4-0", "fake rationale 3-2"]
    assert annotated.records[3].rationales["alignment"] == dataset.records[3].rationales["alignment"]
    assert summary["per_dimension"]["realism"] == dict(summary["per_dimension"]["realism"], kept=7, rejected=1,
                                                       rejected_by_reason={"unfinished": 1})


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("field", "value", "message"), [
    ("annotator", None, "`annotator` is required"),
    ("data", "", "`data` is required"),
    ("batch_size", 0, "`batch_size` must be an integer >= 1"),
    ("attempts", 0, "`attempts` must be an integer >= 1"),
    ("backend", "tgi", "`backend` must be one of"),
    ("dtype", "fp8", "`dtype` must be one of"),
    ("tolerance", -0.1, "`tolerance` must be a finite number >= 0"),
    ("temperature", 0.0, "`attempts` > 1 needs `temperature` > 0"),
    ("dimensions", [], "`dimensions` must be a non-empty list"),
    ("instruction", "Explain the score.", "`instruction` must contain {label}"),
    ("instruction", "Score {label} of {colour}", "`instruction` must be a format string"),
    ("vllm_args", "x", "`vllm_args` must be a mapping"),
])
def test_bad_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        AnnotateConfig(**{"annotator": "a", "data": "d", field: value})


def test_vllm_backend_without_vllm_names_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ValueError, match="`backend` vllm needs the vllm package"):
        AnnotateConfig(annotator="a", data="d", backend="vllm")


def test_the_dataset_scale_must_be_the_rubrics(tiny_base, tmp_path):
    dataset = load_split({"num_groups": 1})
    records = [dataclasses.replace(r, labels={"alignment": 2.0}, histograms={}) for r in dataset.records]
    RewardDataset(records, [], None, dataset.dimensions, (1.0, 2.0, 3.0)).save(tmp_path / "data")
    with pytest.raises(ValueError, match="levels"):
        annotate(config(tiny_base, str(tmp_path / "data"), tmp_path / "out"), progress=False)


def test_help_groups_the_fields(capsys):
    with pytest.raises(SystemExit) as stop:
        annotate_module.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for heading in ("Model:", "Data:", "Generation:", "Consistency filter:"):
        assert f"\n{heading}\n" in text
    assert "Other:" not in text and "--tolerance" in text
