"""Records, pairs, validation of every bad-row case, the on-disk format (save/load) and group splits."""

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from zreward_diffusers.data import BadRow, DataValidationError, Pair, Record, RewardDataset
from zreward_diffusers.data.validation import validate_rows
from zreward_diffusers.rubric import Rubric
from zreward_diffusers.saving import MARKER_NAME

DIMENSIONS = Rubric().dimension_names
LEVELS = Rubric().levels


def solid(colour, size=(8, 6)) -> Image.Image:
    return Image.new("RGB", size, colour)


def write_png(path, colour="red", size=(8, 6)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    solid(colour, size).save(path)
    return path.name


def make_dataset(tmp_path, num_groups=3, per_group=3) -> RewardDataset:
    """Path and in-memory images, labels, histograms, rationales, meta and pairs, across `num_groups` groups."""
    records, pairs = [], []
    for group in range(num_groups):
        for index in range(per_group):
            record_id = f"g{group}/r{index}"
            if index % 2 == 0:
                image = f"images/{group}_{index}.png"
                write_png(tmp_path / "source" / image, colour=(40 * index, 10 * group, 0))
            else:
                image = solid((0, 40 * index, 10 * group))
            histogram = [0] * len(LEVELS)
            histogram[index] = 3
            records.append(Record(
                record_id, f"prompt {group}", image, f"g{group}",
                labels={"alignment": 1.0 + index, "realism": 2.5},
                histograms={"aesthetics": histogram},
                rationales={"alignment": f"I count {index} circles"},
                meta={"true_count": index, "colour": "red"},
            ))
        pairs.append(Pair(f"g{group}", f"g{group}/r1", f"g{group}/r0", 1, "alignment"))
        pairs.append(Pair(f"g{group}", f"g{group}/r2", f"g{group}/r0", 0))
    return RewardDataset.from_records(records, pairs, root=tmp_path / "source", description="test set")


def test_record_and_pair_dict_round_trip():
    record = Record("r", "p", "a.png", "g", labels={"alignment": 3.5}, histograms={"realism": [1] * 9},
                    rationales={"alignment": "ok"}, meta={"x": [1, 2]})
    assert Record.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    pair = Pair("g", "a", "b", -1, "realism")
    assert Pair.from_dict(json.loads(json.dumps(pair.to_dict()))) == pair
    with pytest.raises(ValueError, match=r"unknown Record fields \['colour'\]"):
        Record.from_dict({**record.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match=r"missing Pair fields \['preference'\]"):
        Pair.from_dict({"group_id": "g", "record_a": "a", "record_b": "b"})
    with pytest.raises(TypeError, match="only a path image"):
        Record("r", "p", solid("red"), "g").to_dict()


def test_dataset_helpers(tmp_path):
    dataset = make_dataset(tmp_path)
    assert len(dataset) == 9
    assert list(dataset.groups()) == ["g0", "g1", "g2"]
    assert [record.record_id for record in dataset.groups()["g1"]] == ["g1/r0", "g1/r1", "g1/r2"]
    assert dataset.by_id("g2/r1").meta["true_count"] == 1
    with pytest.raises(KeyError, match="no record with id 'nope'"):
        dataset.by_id("nope")
    image = dataset.load_image(dataset.by_id("g0/r0"))
    assert image.mode == "RGB" and image.size == (8, 6)
    assert dataset.image_path(dataset.by_id("g0/r1")) is None
    with pytest.raises(ValueError, match="record ids must be unique"):
        RewardDataset([Record("r", "p", "a.png", "g"), Record("r", "p", "b.png", "g")])


def test_save_load_round_trip(tmp_path):
    dataset = make_dataset(tmp_path)
    saved = dataset.save(tmp_path / "saved")
    assert sorted(path.name for path in saved.iterdir()) == sorted(
        [MARKER_NAME, "dataset.json", "images", "pairs.jsonl", "records.jsonl"])  # the marker: a complete save
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary left
    info = json.loads((saved / "dataset.json").read_text())
    assert info["dimensions"] == list(DIMENSIONS) and info["levels"] == list(LEVELS)
    assert (info["num_records"], info["num_pairs"], info["num_groups"], info["description"]) == (9, 6, 3, "test set")
    rows = [json.loads(line) for line in (saved / "records.jsonl").read_text().splitlines()]
    assert all(not row["image"].startswith("/") for row in rows)  # relative paths only

    loaded = RewardDataset.load(saved, allow_outside_root=True)  # its images are in "source", outside "saved"
    assert loaded.pairs == dataset.pairs
    assert (loaded.dimensions, loaded.levels, loaded.description, loaded.skipped) == (
        dataset.dimensions, dataset.levels, "test set", [])
    for original, reloaded in zip(dataset.records, loaded.records, strict=True):
        assert (original.record_id, original.prompt, original.group_id, original.labels, original.histograms,
                original.rationales, original.meta) == (reloaded.record_id, reloaded.prompt, reloaded.group_id,
                                                        reloaded.labels, reloaded.histograms, reloaded.rationales,
                                                        reloaded.meta)
        assert isinstance(reloaded.image, str)
        assert np.array_equal(np.asarray(dataset.load_image(original)), np.asarray(loaded.load_image(reloaded)))
        if isinstance(original.image, str):  # images on disk are referenced, not copied
            assert loaded.image_path(reloaded).resolve() == dataset.image_path(original).resolve()

    # Saved elsewhere, a loaded dataset references the same image files; all else is equal.
    again = RewardDataset.load(loaded.save(tmp_path / "again"), allow_outside_root=True)
    assert [again.image_path(record).resolve() for record in again.records] == [
        loaded.image_path(record).resolve() for record in loaded.records]
    assert [replace(record, image=None) for record in again.records] == [
        replace(record, image=None) for record in loaded.records]
    assert again.pairs == loaded.pairs


def test_save_refuses_non_empty_directory_and_overwrites_in_place(tmp_path):
    dataset = make_dataset(tmp_path)
    target = tmp_path / "saved"
    dataset.save(target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        dataset.save(target)
    # Overwriting a dataset with itself: its images live inside the directory being replaced and are carried over.
    loaded = RewardDataset.load(target, allow_outside_root=True)
    loaded.records[0].labels["alignment"] = 5.0
    loaded.save(target, overwrite=True)
    reloaded = RewardDataset.load(target, verify_images=True, allow_outside_root=True)
    assert reloaded.records[0].labels["alignment"] == 5.0
    assert all(reloaded.load_image(record).size == (8, 6) for record in reloaded.records)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    (tmp_path / "empty").mkdir()
    dataset.save(tmp_path / "empty")  # an empty directory is fine


def test_failed_save_leaves_nothing_behind(tmp_path):
    dataset = make_dataset(tmp_path)
    target = dataset.save(tmp_path / "saved")
    before = sorted(path.name for path in target.rglob("*"))
    dataset.records[0].meta["not json"] = object()
    with pytest.raises(TypeError):
        dataset.save(target, overwrite=True)
    assert sorted(path.name for path in target.rglob("*")) == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    assert len(RewardDataset.load(target, allow_outside_root=True)) == 9


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        RewardDataset.load(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="expected format 'zreward-dataset'"):
        RewardDataset.load(tmp_path)


def test_load_reports_line_numbers(tmp_path):
    target = make_dataset(tmp_path).save(tmp_path / "saved")
    lines = (target / "records.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    row = json.loads(lines[4])
    row["labels"]["alignment"] = 9.0
    lines[4] = json.dumps(row)
    lines.insert(6, "")  # blank lines are skipped but still counted
    (target / "records.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as error:
        RewardDataset.load(target, allow_outside_root=True)  # the images are in "source", outside "saved"
    message = str(error.value)
    assert "records.jsonl line 2, field '(row)': invalid JSON" in message
    assert "records.jsonl line 5, field 'labels.alignment': 9.0 is outside the level range [1.0, 5.0]" in message
    # The pair of the broken record (g0/r1, line 2) is reported too, by its own line.
    assert "pairs.jsonl line 1, field 'record_a': 'g0/r1' is not the id of a (valid) record" in message
    assert error.value.bad_rows[0] == BadRow("records.jsonl", "line", 2, "(row)", error.value.bad_rows[0].reason)


def good_record(**changes) -> dict:
    fields = dict(record_id="r0", prompt="a red circle", image=solid("red"), group_id="g0",
                  labels={"alignment": 3.5}, histograms={"realism": [0, 0, 1, 2, 0, 0, 0, 0, 0]},
                  rationales={"alignment": "one red circle"}, meta={})
    return {**fields, **changes}


BAD_RECORDS = [
    ("record_id", dict(record_id=""), "must be a non-empty string, got ''"),
    ("record_id", dict(record_id=None), "must be a non-empty string, got None"),
    ("prompt", dict(prompt="  "), "must be a non-empty string, got '  '"),
    ("prompt", dict(prompt=3), "must be a non-empty string, got 3"),
    ("image", dict(image="missing.png"), "image file not found"),
    ("image", dict(image=b"bytes"), "must be a path or a PIL image, got bytes"),
    ("image", dict(image=""), "got an empty path"),
    ("group_id", dict(group_id=""), "must be a non-empty string"),
    ("labels.beauty", dict(labels={"beauty": 3.0}),
     "unknown dimension 'beauty'; the known dimensions are ['alignment', 'aesthetics', 'realism', "
     "'physical_plausibility']"),
    ("labels.alignment", dict(labels={"alignment": math.nan}), "must be a finite number, got nan"),
    ("labels.alignment", dict(labels={"alignment": "high"}), "must be a finite number, got 'high'"),
    ("labels.alignment", dict(labels={"alignment": True}), "must be a finite number, got True"),
    ("labels.alignment", dict(labels={"alignment": 0.5}), "0.5 is outside the level range [1.0, 5.0]"),
    ("labels.alignment", dict(labels={"alignment": 5.5}), "5.5 is outside the level range [1.0, 5.0]"),
    ("labels", dict(labels=[3.0]), "must be a dict, got list"),
    ("histograms.realism", dict(histograms={"realism": [1, 2, 3]}), "must be a list of 9 counts (one per level)"),
    ("histograms.realism", dict(histograms={"realism": [0] * 8 + [-1]}), "counts must be non-negative"),
    ("histograms.realism", dict(histograms={"realism": [0] * 9}), "counts must have a positive sum"),
    ("histograms.realism", dict(histograms={"realism": [math.inf] + [0] * 8}), "counts must be finite numbers"),
    ("histograms.style", dict(histograms={"style": [1] * 9}), "unknown dimension 'style'"),
    ("rationales.alignment", dict(rationales={"alignment": 3}), "must be a string, got int"),
    ("meta", dict(meta=None), "must be a dict, got NoneType"),
]


@pytest.mark.parametrize(("field", "changes", "reason"), BAD_RECORDS, ids=[f"{f}-{r[:20]}" for f, _, r in BAD_RECORDS])
def test_every_bad_record_is_reported_with_index_field_and_reason(tmp_path, field, changes, reason):
    records = [Record(**good_record(record_id=f"ok{i}")) for i in range(3)]
    records.insert(2, Record(**good_record(**changes)))
    with pytest.raises(DataValidationError) as error:
        validate_rows(records, dimensions=DIMENSIONS, levels=LEVELS, root=tmp_path)
    assert isinstance(error.value, ValueError)
    [bad] = error.value.bad_rows
    assert (bad.index, bad.field) == (2, field)
    assert reason in bad.reason
    assert f"records row 2, field {field!r}: " in str(error.value) and reason in str(error.value)


def test_duplicate_record_id_names_the_first(tmp_path):
    records = [Record(**good_record()), Record(**good_record(record_id="r1")), Record(**good_record())]
    with pytest.raises(DataValidationError, match=r"records row 2, field 'record_id': duplicate 'r0', first seen at "
                                                  r"records row 0"):
        RewardDataset.from_records(records)


BAD_PAIRS = [
    ("record_a", Pair("g0", "nope", "r1", 1), "'nope' is not the id of a (valid) record"),
    ("record_b", Pair("g0", "r0", "x0", 1), "record 'x0' is in group 'g1', not the pair's group 'g0'"),
    ("record_b", Pair("g0", "r0", "r0", 1), "two different records, got 'r0' twice"),
    ("preference", Pair("g0", "r0", "r1", 2), "must be -1, 0 or 1, got 2"),
    ("preference", Pair("g0", "r0", "r1", True), "must be -1, 0 or 1, got True"),
    ("preference", Pair("g0", "r0", "r1", 1.0), "must be -1, 0 or 1, got 1.0"),
    ("record_a", Pair("g0", ["r0"], "r1", 1), "['r0'] is not the id of a (valid) record"),
    ("dimension", Pair("g0", "r0", "r1", 1, "beauty"), "unknown dimension 'beauty'"),
    ("group_id", Pair("", "r0", "r1", 1), "must be a non-empty string"),
]


@pytest.mark.parametrize(("field", "pair", "reason"), BAD_PAIRS, ids=[f"{f}-{r[:20]}" for f, _, r in BAD_PAIRS])
def test_every_bad_pair_is_reported(field, pair, reason):
    records = [Record(**good_record()), Record(**good_record(record_id="r1")),
               Record(**good_record(record_id="x0", group_id="g1"))]
    pairs = [Pair("g0", "r0", "r1", -1), pair]
    with pytest.raises(DataValidationError) as error:
        RewardDataset.from_records(records, pairs)
    [bad] = error.value.bad_rows
    assert (bad.source, bad.index, bad.field) == ("pairs", 1, field)
    assert reason in str(error.value)


def test_verify_images_decodes(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    records = [Record(**good_record(image="broken.png"))]
    with pytest.raises(DataValidationError, match="cannot be decoded as an image"):
        RewardDataset.from_records(records, root=tmp_path)  # images are decoded by default
    assert len(RewardDataset.from_records(records, root=tmp_path, verify_images=False)) == 1  # existence only


def test_error_lists_first_20_and_counts_the_rest():
    records = [Record(**good_record(record_id=f"r{i}", prompt="")) for i in range(25)]
    with pytest.raises(DataValidationError) as error:
        RewardDataset.from_records(records)
    message = str(error.value)
    assert message.startswith("25 bad rows:")
    assert "records row 19," in message and "records row 20," not in message
    assert message.endswith("... and 5 more")
    assert len(error.value.bad_rows) == 25


def test_skip_bad_rows_counts_logs_and_keeps_them(caplog):
    records = [Record(**good_record(record_id=f"r{i}")) for i in range(4)]
    records[1].prompt = ""
    records[3].labels = {"alignment": 7.0}
    pairs = [Pair("g0", "r0", "r1", 1), Pair("g0", "r0", "r2", 1)]
    with caplog.at_level(logging.WARNING, logger="zreward_diffusers.data"):
        dataset = RewardDataset.from_records(records, pairs, skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["r0", "r2"]
    assert dataset.pairs == [Pair("g0", "r0", "r2", 1)]
    assert [(bad.source, bad.index, bad.field) for bad in dataset.skipped] == [
        ("records", 1, "prompt"), ("records", 3, "labels.alignment"), ("pairs", 0, "record_b")]
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "skipped 3 bad rows" in warning.getMessage() and "records row 1, field 'prompt'" in warning.getMessage()


def test_custom_scale():
    record = Record(**good_record(labels={"quality": 9.0}, histograms={"quality": [1, 0, 0]}, rationales={}))
    dataset = RewardDataset.from_records([record], dimensions=("quality",), levels=(1, 5, 9))
    assert dataset.levels == (1.0, 5.0, 9.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        RewardDataset([], levels=(1.0, 1.0))


def test_split_by_group_is_deterministic_and_never_crosses(tmp_path):
    records = [Record(f"r{i}", f"prompt {i % 10}", solid("red"), f"g{i % 10}", labels={"alignment": 1.0 + i % 3})
               for i in range(40)]
    pairs = [Pair(f"g{g}", f"r{g}", f"r{g + 10}", 1) for g in range(10)]
    dataset = RewardDataset.from_records(records, pairs)
    first, second = dataset.split(0.7, seed=3)
    assert (len(first.groups()), len(second.groups())) == (7, 3)
    assert not set(first.groups()) & set(second.groups())
    assert len(first) + len(second) == len(dataset)
    assert {p.group_id for p in first.pairs} <= set(first.groups())
    assert {p.group_id for p in second.pairs} <= set(second.groups())
    assert len(first.pairs) + len(second.pairs) == len(pairs)
    again = dataset.split(0.7, seed=3)
    assert [r.record_id for r in again[0].records] == [r.record_id for r in first.records]
    splits = {tuple(sorted(dataset.split(0.7, seed=seed)[1].groups())) for seed in range(10)}
    assert len(splits) > 1  # the seed matters
    assert len(dataset.split(0.01)[0].groups()) == 1  # each part gets at least one group
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        dataset.split(1.0)
    with pytest.raises(ValueError, match="at least 2 groups"):
        RewardDataset(records[:1]).split(0.5)
