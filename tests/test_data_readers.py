"""Readers: JSONL, JSON, CSV and parquet files and `datasets.Dataset`s through column maps; `load_dataset` dispatch."""

import csv
import io
import json
import logging

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zreward_diffusers.data import (
    DataValidationError,
    Record,
    RewardDataset,
    from_hf_dataset,
    load_dataset,
    read_records,
)


def png_bytes(colour, size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(directory, count) -> list[str]:
    (directory / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        Image.new("RGB", (8, 6), (30 * index, 0, 0)).save(directory / "img" / f"{index}.png")
        names.append(f"img/{index}.png")
    return names


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_jsonl_in_our_field_names(tmp_path):
    names = write_images(tmp_path, 3)
    histogram = [0, 0, 1, 3, 1, 0, 0, 0, 0]
    write_jsonl(tmp_path / "data.jsonl", [
        {"record_id": f"r{i}", "prompt": "two circles", "image": name, "group_id": "p0",
         "labels": {"alignment": 2.0 + i}, "histograms": {"realism": histogram}, "rationales": {"alignment": "two"},
         "meta": {"seed": i}, "extra": "ignored"}
        for i, name in enumerate(names)
    ])
    dataset = read_records(tmp_path / "data.jsonl")
    assert dataset.root == tmp_path
    assert [record.record_id for record in dataset.records] == ["r0", "r1", "r2"]
    assert dataset.records[2] == Record("r2", "two circles", "img/2.png", "p0", {"alignment": 4.0},
                                        {"realism": histogram}, {"alignment": "two"}, {"seed": 2})
    assert dataset.load_image(dataset.records[1]).getpixel((0, 0)) == (30, 0, 0)


def test_csv_column_map_with_dotted_targets(tmp_path):
    names = write_images(tmp_path / "pictures", 3)
    with open(tmp_path / "data.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["caption", "file", "prompt_id", "align_score", "realism_votes", "why", "source", "id"])
        writer.writerow(["a cat", names[0], "7", "3.5", json.dumps([0, 1, 2, 0, 0, 0, 0, 0, 0]), "a cat indeed",
                         "sd15", "a"])
        writer.writerow(["a cat", names[1], "7", "", "", "", "sdxl", "b"])  # unlabelled cells
        writer.writerow(["a dog", names[2], "", "5", "", "it is a dog\non two lines", "flux", "c"])
    column_map = {"prompt": "caption", "image": "file", "group_id": "prompt_id", "record_id": "id",
                  "labels.alignment": "align_score", "histograms.realism": "realism_votes",
                  "rationales.alignment": "why", "meta.generator": "source"}
    dataset = read_records(tmp_path / "data.csv", column_map, root=tmp_path / "pictures")
    first, second, third = dataset.records
    assert first == Record("a", "a cat", names[0], "7", {"alignment": 3.5}, {"realism": [0, 1, 2, 0, 0, 0, 0, 0, 0]},
                           {"alignment": "a cat indeed"}, {"generator": "sd15"})
    assert (second.labels, second.histograms, second.rationales) == ({}, {}, {})
    assert third.group_id == "a dog"  # no group id: the prompt is the group
    assert third.rationales == {"alignment": "it is a dog\non two lines"}


def test_csv_bad_rows_name_their_line(tmp_path):
    names = write_images(tmp_path, 2)
    with open(tmp_path / "data.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "image", "score", "note"])
        writer.writerow(["a cat", names[0], "3", "spans\ntwo lines"])
        writer.writerow(["a cat", "img/missing.png", "3", ""])  # line 4
        writer.writerow(["", names[1], "high", ""])  # line 5
    with pytest.raises(DataValidationError) as error:
        read_records(tmp_path / "data.csv", {"labels.alignment": "score"})
    message = str(error.value)
    assert "data.csv line 4, field 'image': image file not found" in message
    assert "data.csv line 5, field 'prompt': must be a non-empty string, got ''" in message


def test_parquet_with_image_bytes_and_struct_labels(tmp_path):
    table = pa.table({
        "prompt": ["a red cube", "a red cube"],
        "image": [png_bytes("red"), png_bytes("blue")],
        "labels": [{"alignment": 4.5, "realism": None}, {"alignment": None, "realism": 2.0}],
        "votes": [[0, 0, 0, 0, 1, 1, 0, 0, 0], None],
    })
    pq.write_table(table, tmp_path / "data.parquet")
    dataset = read_records(tmp_path / "data.parquet", {"histograms.aesthetics": "votes"})
    first, second = dataset.records
    assert (first.record_id, second.record_id) == ("0", "1")  # no id column: the row index
    assert first.labels == {"alignment": 4.5} and second.labels == {"realism": 2.0}
    assert first.histograms == {"aesthetics": [0, 0, 0, 0, 1, 1, 0, 0, 0]} and second.histograms == {}
    assert isinstance(first.image, Image.Image)
    assert dataset.load_image(second).getpixel((0, 0)) == (0, 0, 255)


def test_column_map_errors(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"caption": "a", "file": "x.png"}])
    with pytest.raises(ValueError, match=r"maps 'labels.alignment' to column 'align_score', which the source does "
                                         r"not have; its columns are \['caption', 'file'\]"):
        read_records(tmp_path / "data.jsonl",
                     {"prompt": "caption", "image": "file", "labels.alignment": "align_score"})
    with pytest.raises(ValueError, match="the source has no 'prompt' column; map one"):
        read_records(tmp_path / "data.jsonl", {"image": "file"})
    with pytest.raises(ValueError, match="unknown target 'label.alignment'"):
        read_records(tmp_path / "data.jsonl", {"prompt": "caption", "image": "file", "label.alignment": "file"})
    with pytest.raises(ValueError, match="names unknown dimension 'beauty'; the known dimensions are"):
        read_records(tmp_path / "data.jsonl", {"prompt": "caption", "image": "file", "labels.beauty": "file"})


def test_hf_dataset_with_pil_images_bytes_and_paths(tmp_path):
    names = write_images(tmp_path, 2)
    source = datasets.Dataset.from_dict({
        "caption": ["a red circle", "a red circle", "a blue square"],
        "picture": [Image.new("RGB", (8, 6), "red"), Image.new("RGB", (8, 6), "green"), Image.new("RGB", (8, 6))],
        "prompt_id": [1, 1, 2],
        "align": [4.0, None, 1.5],
    })
    assert isinstance(source.features["picture"], datasets.Image)
    dataset = from_hf_dataset(source, {"prompt": "caption", "image": "picture", "group_id": "prompt_id",
                                       "labels.alignment": "align"})
    assert [record.group_id for record in dataset.records] == ["1", "1", "2"]
    assert [record.labels for record in dataset.records] == [{"alignment": 4.0}, {}, {"alignment": 1.5}]
    assert dataset.load_image(dataset.records[1]).getpixel((0, 0)) == (0, 128, 0)
    # An Image feature read without decoding gives {"bytes", "path"} dicts.
    undecoded = from_hf_dataset(source.cast_column("picture", datasets.Image(decode=False)),
                                {"prompt": "caption", "image": "picture"})
    assert np.array_equal(np.asarray(undecoded.load_image(undecoded.records[0])),
                          np.asarray(dataset.load_image(dataset.records[0])))
    raw = datasets.Dataset.from_dict({"prompt": ["a", "b"], "image": [png_bytes("red"), png_bytes("blue")]})
    assert from_hf_dataset(raw).load_image(from_hf_dataset(raw).records[1]).getpixel((0, 0)) == (0, 0, 255)
    paths = datasets.Dataset.from_dict({"prompt": ["a", "b"], "image": names})
    assert [record.image for record in from_hf_dataset(paths, root=tmp_path).records] == names
    with pytest.raises(DataValidationError, match="Dataset row 0, field 'image': image file not found"):
        from_hf_dataset(paths, root=tmp_path / "elsewhere")
    with pytest.raises(TypeError, match="pass one split"):
        load_dataset(datasets.DatasetDict({"train": raw}))


def test_undecodable_bytes_are_a_bad_row():
    source = datasets.Dataset.from_dict({"prompt": ["a", "b"], "image": [png_bytes("red"), b"not an image"]})
    with pytest.raises(DataValidationError, match="Dataset row 1, field 'image': the bytes are not an image"):
        from_hf_dataset(source)


def test_skip_bad_rows_in_a_reader(tmp_path, caplog):
    names = write_images(tmp_path, 2)
    (tmp_path / "data.jsonl").write_text(
        json.dumps({"prompt": "a", "image": names[0]}) + "\n"
        + "{broken\n"
        + json.dumps({"prompt": "a", "image": names[1], "labels": {"alignment": 6}}) + "\n"
        + json.dumps({"prompt": "b", "image": names[1]}) + "\n"
    )
    with caplog.at_level(logging.WARNING):
        dataset = read_records(tmp_path / "data.jsonl", skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["1", "4"]  # ids default to the line number here
    assert [(bad.index, bad.field) for bad in dataset.skipped] == [(2, "(row)"), (3, "labels.alignment")]
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING and "skipped 2 bad rows" in warning.getMessage()
    assert "data.jsonl line 2, field '(row)': invalid JSON" in warning.getMessage()


def test_load_dataset_dispatches(tmp_path):
    names = write_images(tmp_path, 2)
    rows = [{"prompt": "a", "image": name, "labels": {"realism": 3.0}} for name in names]
    write_jsonl(tmp_path / "data.jsonl", rows)
    (tmp_path / "data.json").write_text(json.dumps(rows))
    with open(tmp_path / "data.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["prompt", "image", "labels"])
        writer.writeheader()
        writer.writerow({**rows[0], "labels": json.dumps(rows[0]["labels"])})
        writer.writerow({**rows[1], "labels": ""})  # an empty cell: no labels
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    expected = [Record(str(i), "a", name, "a", {"realism": 3.0}) for i, name in enumerate(names)]
    assert load_dataset(tmp_path / "data.parquet").records == expected
    assert load_dataset(tmp_path / "data.json").records == expected
    assert load_dataset(str(tmp_path / "data.jsonl")).records == [
        Record(str(i + 1), "a", name, "a", {"realism": 3.0}) for i, name in enumerate(names)]  # line numbers
    assert [record.labels for record in load_dataset(tmp_path / "data.csv").records] == [{"realism": 3.0}, {}]
    from_hf = load_dataset(datasets.Dataset.from_list(rows), root=tmp_path)
    assert [record.image for record in from_hf.records] == names

    saved = load_dataset(tmp_path / "data.parquet").save(tmp_path / "saved")  # referencing ../img/*.png
    assert isinstance(load_dataset(saved, allow_outside_root=True), RewardDataset)
    assert len(load_dataset(saved, allow_outside_root=True)) == 2
    with pytest.raises(ValueError, match=r"stores its own scale and image paths; do not pass \['levels'\]"):
        load_dataset(saved, levels=(1.0, 2.0))
    with pytest.raises(ValueError, match="a directory without dataset.json"):
        load_dataset(tmp_path / "img")
    (tmp_path / "data.txt").write_text("")
    with pytest.raises(ValueError, match="expected a file ending in one of"):
        load_dataset(tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nothing.jsonl")
