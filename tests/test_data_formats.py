"""Public-format mappers, each on a small fabricated file with the schema of the dataset's card."""

import json
import logging

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import png_bytes, write_images
from PIL import Image

from zreward_diffusers.data import (
    IMAGEREWARD_RATING_LABELS,
    DataValidationError,
    Pair,
    from_hpdv2,
    from_imagereward_db,
    from_pickapic,
)


def imagereward_rows():
    """ImageRewardDB rows: prompt 11 has four images (ranks 1, 2, 2, 3), prompt 12 two (no ratings on one)."""
    rows = []
    for index, rank in enumerate([1, 2, 2, 3]):
        rows.append({"image_path": f"images/train/11_{index}.webp", "prompt_id": 11, "prompt": "a fox in snow",
                     "classification": "Animals", "image_amount_in_total": 4, "rank": rank,
                     "overall_rating": 7 - rank, "image_text_alignment_rating": 7 - 2 * (rank - 1),
                     "fidelity_rating": 4})
    rows.append({"image_path": "images/train/12_0.webp", "prompt_id": 12, "prompt": "a red bus",
                 "classification": "Vehicles", "image_amount_in_total": 2, "rank": 2,
                 "overall_rating": 1, "image_text_alignment_rating": 1, "fidelity_rating": 1})
    rows.append({"image_path": "images/train/12_1.webp", "prompt_id": 12, "prompt": "a red bus",
                 "classification": "Vehicles", "image_amount_in_total": 2, "rank": 1,
                 "overall_rating": None, "image_text_alignment_rating": None, "fidelity_rating": None})
    return rows


def test_imagereward_db_parquet(tmp_path):
    rows = imagereward_rows()
    write_images(tmp_path, [row["image_path"] for row in rows])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    dataset = from_imagereward_db(tmp_path / "train.parquet")
    assert len(dataset) == 6 and list(dataset.groups()) == ["11", "12"]
    first = dataset.records[0]
    assert (first.record_id, first.prompt, first.image, first.labels) == (
        "images/train/11_0.webp", "a fox in snow", "images/train/11_0.webp", {})
    assert first.meta == {"rank": 1, "overall_rating": 6, "image_text_alignment_rating": 7, "fidelity_rating": 4}
    assert dataset.records[5].meta == {"rank": 1}
    # 4 images -> 6 pairs (one tie between the two rank-2 images), 2 images -> 1 pair; all overall.
    preferences = {(pair.record_a[-9:-5], pair.record_b[-9:-5]): pair.preference for pair in dataset.pairs}
    assert preferences == {("11_0", "11_1"): 1, ("11_0", "11_2"): 1, ("11_0", "11_3"): 1, ("11_1", "11_2"): 0,
                           ("11_1", "11_3"): 1, ("11_2", "11_3"): 1, ("12_0", "12_1"): -1}
    assert all(pair.dimension is None for pair in dataset.pairs)
    assert dataset.load_image(dataset.records[1]).getpixel((0, 0)) == (20, 0, 0)


def test_imagereward_db_ratings_as_labels():
    rows = imagereward_rows()
    for row in rows:
        row["image"] = png_bytes("white")  # the Hugging Face version carries the image itself
    dataset = from_imagereward_db(rows, rating_labels=IMAGEREWARD_RATING_LABELS)
    # 1..7 -> 1.0..5.0 linearly: 7 -> 5.0, 5 -> 3.666..., 4 -> 3.0, 1 -> 1.0
    assert dataset.records[0].labels == {"alignment": 5.0, "realism": 3.0}
    assert dataset.records[1].labels["alignment"] == pytest.approx(1.0 + 4 * 4 / 6)
    assert dataset.records[4].labels == {"alignment": 1.0, "realism": 1.0}
    assert dataset.records[5].labels == {}
    assert isinstance(dataset.records[0].image, Image.Image)
    with pytest.raises(ValueError, match="unknown rating column 'aesthetic_rating'"):
        from_imagereward_db(rows, rating_labels={"aesthetic_rating": "aesthetics"})
    with pytest.raises(ValueError, match="maps to unknown dimension 'fidelity'"):
        from_imagereward_db(rows, rating_labels={"fidelity_rating": "fidelity"})


def test_imagereward_db_hf_dataset_and_bad_rows(tmp_path, caplog):
    rows = imagereward_rows()
    write_images(tmp_path, [row["image_path"] for row in rows])
    rows[2]["fidelity_rating"] = 9
    rows[4]["image_path"] = "images/train/gone.webp"
    source = datasets.Dataset.from_list(rows)
    with pytest.raises(DataValidationError) as error:
        from_imagereward_db(source, root=tmp_path)
    message = str(error.value)
    assert "Dataset row 2, field 'fidelity_rating': must be a rating in [1, 7], got 9" in message
    assert "Dataset row 4, field 'image': image file not found" in message
    with caplog.at_level(logging.WARNING):
        dataset = from_imagereward_db(source, root=tmp_path, skip_bad_rows=True)
    assert len(dataset) == 4 and len(dataset.skipped) == 2
    assert len(dataset.pairs) == 3  # the three remaining images of prompt 11; prompt 12 has one image left
    assert "skipped 2 bad rows" in caplog.text


def test_pickapic_bytes_with_repeated_images_and_ties(tmp_path):
    red, blue, green = png_bytes("red"), png_bytes("blue"), png_bytes("green")
    rows = [
        {"caption": "a cat", "jpg_0": red, "jpg_1": blue, "label_0": 1.0, "label_1": 0.0,
         "image_0_uid": "u-red", "image_1_uid": "u-blue", "model_0": "sdxl", "model_1": "sd15",
         "best_image_uid": "u-red", "has_label": True, "are_different": True},
        {"caption": "a cat", "jpg_0": blue, "jpg_1": green, "label_0": 0.5, "label_1": 0.5,
         "image_0_uid": "u-blue", "image_1_uid": "u-green", "model_0": "sd15", "model_1": "sdxl",
         "best_image_uid": "", "has_label": True, "are_different": True},
        {"caption": "a dog", "jpg_0": green, "jpg_1": red, "label_0": 0.0, "label_1": 1.0,
         "image_0_uid": "u-green-dog", "image_1_uid": "u-red-dog", "model_0": "sdxl", "model_1": "sdxl",
         "best_image_uid": "u-red-dog", "has_label": True, "are_different": True},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    dataset = from_pickapic(tmp_path / "train.parquet")
    assert [record.record_id for record in dataset.records] == ["u-red", "u-blue", "u-green", "u-green-dog",
                                                                "u-red-dog"]  # u-blue seen twice, one record
    assert dataset.by_id("u-blue").meta == {"model": "sd15"}
    assert dataset.pairs == [Pair("a cat", "u-red", "u-blue", 1), Pair("a cat", "u-blue", "u-green", 0),
                             Pair("a dog", "u-green-dog", "u-red-dog", -1)]
    assert dataset.load_image(dataset.by_id("u-green")).getpixel((0, 0)) == (0, 128, 0)
    assert list(dataset.groups()) == ["a cat", "a dog"]


def test_pickapic_paths_and_bad_labels(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    rows = [{"caption": "a cube", "image_0_path": "a.png", "image_1_path": "b.png", "label_0": 0, "label_1": 1},
            {"caption": "a cube", "image_0_path": "b.png", "image_1_path": "c.png", "label_0": 0, "label_1": 0},
            {"caption": "a cube", "image_0_path": "a.png", "image_1_path": "c.png", "label_0": 0.5, "label_1": 0.5}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataValidationError, match=r"pairs.jsonl line 2, field 'label_0': label_0, label_1 must be "
                                                  r"1/0, 0/1 or 0.5/0.5, got 0/0"):
        from_pickapic(tmp_path / "pairs.jsonl")
    dataset = from_pickapic(tmp_path / "pairs.jsonl", skip_bad_rows=True)
    # Without uids, ids are "<line>:<side>"; the same path in two rows is two records.
    assert [record.record_id for record in dataset.records] == ["1:0", "1:1", "3:0", "3:1"]
    assert [pair.preference for pair in dataset.pairs] == [-1, 0]
    with pytest.raises(ValueError, match=r"needs the columns \['label_1'\]"):
        from_pickapic([{"caption": "x", "jpg_0": b"", "jpg_1": b"", "label_0": 1}])


def test_hpdv2_rank_json(tmp_path):
    names = [f"test/{i:05d}.jpg" for i in range(6)]
    write_images(tmp_path, names)
    rows = [{"prompt": "a castle at dusk", "image_path": names[:4], "rank": [3, 1, 2, 1],
             "raw_annotations": [[3, 1, 2, 1]], "user_hash": ["x"]},
            {"prompt": "a bowl of fruit", "image_path": names[4:], "rank": [2, 1]}]
    (tmp_path / "test.json").write_text(json.dumps(rows))  # HPDv2 ships a JSON list
    dataset = from_hpdv2(tmp_path / "test.json")
    assert len(dataset) == 6 and list(dataset.groups()) == ["a castle at dusk", "a bowl of fruit"]
    assert dataset.records[0].meta == {"rank": 3}
    preferences = [(pair.record_a[-5], pair.record_b[-5], pair.preference) for pair in dataset.pairs]
    assert preferences == [("0", "1", -1), ("0", "2", -1), ("0", "3", -1), ("1", "2", 1), ("1", "3", 0),
                           ("2", "3", -1), ("4", "5", -1)]


def test_hpdv2_human_preference_and_bad_rows(tmp_path):
    write_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    rows = [{"prompt": "a kite", "image_path": ["a.jpg", "b.jpg"], "human_preference": [0, 1]},
            {"prompt": "a kite", "image_path": ["a.jpg", "c.jpg"], "human_preference": [1, 0]},
            {"prompt": "a boat", "image_path": ["b.jpg", "c.jpg"], "rank": [1]},
            {"prompt": "a boat", "image_path": ["b.jpg", "c.jpg"], "human_preference": [0, 0]}]
    with pytest.raises(DataValidationError) as error:
        from_hpdv2(rows, root=tmp_path)
    message = str(error.value)
    assert "rows row 2, field 'rank': has 1 entries for 2 images" in message
    assert "rows row 3, field 'human_preference': must be 0/1 flags with at least one 1" in message
    dataset = from_hpdv2(rows, root=tmp_path, skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["a.jpg", "b.jpg", "c.jpg"]
    assert dataset.pairs == [Pair("a kite", "b.jpg", "a.jpg", 1), Pair("a kite", "a.jpg", "c.jpg", 1)]


def test_hpdv2_in_memory_images():
    source = datasets.Dataset.from_dict({
        "prompt": ["a tree"],
        "image": [[Image.new("RGB", (8, 6), "red"), Image.new("RGB", (8, 6), "blue")]],
        "human_preference": [[1, 0]],
    })
    dataset = from_hpdv2(source)
    assert [record.record_id for record in dataset.records] == ["0:0", "0:1"]
    assert dataset.pairs == [Pair("a tree", "0:0", "0:1", 1)]
    assert dataset.load_image(dataset.records[1]).getpixel((0, 0)) == (0, 0, 255)
