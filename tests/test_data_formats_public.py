"""The HPDv3, RichHF-18K, EvalMuse-40K, Rapidata and GenAI-Bench mappers, each on a small fabricated source with the
column names and dtypes of the dataset's card (no file of the real datasets is read)."""

import json
import logging

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import png_bytes, write_images
from PIL import Image

from zreward_diffusers.data import (
    DataValidationError,
    Pair,
    from_evalmuse,
    from_genai_bench,
    from_hpdv3,
    from_rapidata,
    from_richhf18k,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# -- HPDv3 -----------------------------------------------------------------------------------------------------------


def hpdv3_rows():
    """`all.json` / `train.json` rows: an annotated pair, a Midjourney pair (nulls), a curated-HPDv2 pair sharing an
    image with the first, and a pair of another prompt."""
    return [
        {"prompt": "a fox in snow", "choice_dist": [12, 7], "confidence": 0.9999907, "path1": "images/a.jpg",
         "path2": "images/b.jpg", "model1": "flux", "model2": "infinity"},
        {"prompt": "a fox in snow", "choice_dist": None, "confidence": None, "path1": "images/c.jpg",
         "path2": "images/a.jpg", "model1": "midjourney", "model2": "midjourney"},
        {"prompt": "a red bus", "choice_dist": [3, 2], "confidence": 0.62, "path1": "images/d.jpg",
         "path2": "images/e.jpg", "model1": "hpdv2", "model2": "hpdv2"},
    ]


def test_hpdv3_json_pairs_path1_preferred(tmp_path):
    rows = hpdv3_rows()
    write_images(tmp_path, [f"images/{name}.jpg" for name in "abcde"])
    (tmp_path / "train.json").write_text(json.dumps(rows))  # HPDv3 ships JSON lists
    dataset = from_hpdv3(tmp_path / "train.json")
    # images/a.jpg is in two pairs: one record, first seen in row 0.
    assert [record.record_id for record in dataset.records] == [f"images/{name}.jpg" for name in "abcde"]
    assert dataset.by_id("images/a.jpg").meta == {"model": "flux"}
    assert dataset.by_id("images/c.jpg").meta == {"model": "midjourney"}
    assert dataset.pairs == [Pair("a fox in snow", "images/a.jpg", "images/b.jpg", 1),
                             Pair("a fox in snow", "images/c.jpg", "images/a.jpg", 1),
                             Pair("a red bus", "images/d.jpg", "images/e.jpg", 1)]
    assert list(dataset.groups()) == ["a fox in snow", "a red bus"]
    assert all(record.labels == {} and record.histograms == {} for record in dataset.records)


def test_hpdv3_test_split_parquet_and_min_confidence(tmp_path, caplog):
    write_images(tmp_path, [f"images/{name}.jpg" for name in "abcde"])
    # test.json: no choice_dist / confidence at all.
    test_rows = [{"prompt": "a kite", "path1": "images/a.jpg", "path2": "images/b.jpg", "model1": "flux",
                  "model2": "sd3"}]
    pq.write_table(pa.Table.from_pylist(test_rows), tmp_path / "test.parquet")
    assert from_hpdv3(tmp_path / "test.parquet").pairs == [Pair("a kite", "images/a.jpg", "images/b.jpg", 1)]
    # HPDv3-derived releases write choice_dist as JSON text and confidence as a numeric string, "null" for none.
    rows = hpdv3_rows()
    rows[0].update(choice_dist="[12, 7]", confidence="0.9999907")
    rows[1].update(choice_dist="null", confidence="null")
    with caplog.at_level(logging.INFO, logger="zreward_diffusers.data.formats"):
        dataset = from_hpdv3(rows, root=tmp_path, min_confidence=0.95)
    # row 2 (0.62) is left out, row 1 (no confidence) is kept: as HPSv3's confidence_threshold.
    assert [(pair.record_a, pair.record_b) for pair in dataset.pairs] == [("images/a.jpg", "images/b.jpg"),
                                                                          ("images/c.jpg", "images/a.jpg")]
    assert "left out 1 pairs with a confidence below 0.95" in caplog.text
    assert len(dataset.skipped) == 0 and len(dataset) == 3


def test_hpdv3_bad_rows_and_root(tmp_path, caplog):
    rows = hpdv3_rows()
    write_images(tmp_path / "data", [f"images/{name}.jpg" for name in "abcde"])
    rows[0]["choice_dist"] = [12]
    rows[1]["confidence"] = "very"
    rows[2]["path2"] = "../outside.jpg"
    write_images(tmp_path, ["outside.jpg"])
    rows.append({"prompt": "a red bus", "path1": "images/d.jpg", "path2": None})
    with pytest.raises(DataValidationError) as error:
        from_hpdv3(rows, root=tmp_path / "data")
    message = str(error.value)
    assert "rows row 0, field 'choice_dist': must be two non-negative vote counts" in message
    assert "rows row 1, field 'confidence': must be a finite number or null, got 'very'" in message
    assert "rows row 2, field 'image':" in message and "is outside the dataset root" in message
    assert "rows row 3, field 'path2': must be an image path, got None" in message
    with caplog.at_level(logging.WARNING):
        dataset = from_hpdv3(rows, root=tmp_path / "data", skip_bad_rows=True)
    assert len(dataset.skipped) == 4 and dataset.pairs == [] and "skipped 4 bad rows" in caplog.text
    assert len(from_hpdv3(rows[2:3], root=tmp_path / "data", allow_outside_root=True).pairs) == 1
    with pytest.raises(ValueError, match=r"needs the columns \['path2'\]"):
        from_hpdv3([{"prompt": "x", "path1": "a.jpg"}])


# -- RichHF-18K ------------------------------------------------------------------------------------------------------


def richhf_rows():
    """Rows converted from the TFRecords (heatmaps as encoded PNG bytes, token labels as text)."""
    return [
        {"filename": "train/u-1.png", "aesthetics_score": 0.75, "artifact_score": 0.5, "misalignment_score": 1.0,
         "overall_score": 0.6666667, "artifact_map": png_bytes("black"), "misalignment_map": png_bytes("black"),
         "prompt_misalignment_label": "1 1 0"},
        {"filename": "train/u-2.png", "aesthetics_score": 0.0, "artifact_score": 0.25,
         "misalignment_score": 0.5833333, "overall_score": 0.25, "prompt_misalignment_label": "1 1 1"},
        {"filename": "dev/u-3.png", "aesthetics_score": 1.0, "artifact_score": None, "misalignment_score": 0.125,
         "overall_score": 0.5, "prompt_misalignment_label": "0 1"},
    ]


def test_richhf18k_scale_mapping(tmp_path):
    rows = richhf_rows()
    write_images(tmp_path, [row["filename"] for row in rows])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    prompts = {"u-1": "a cat on a sofa", "train/u-2.png": "a cat on a sofa", "u-3": "two dogs"}  # uid or filename
    dataset = from_richhf18k(tmp_path / "train.parquet", prompts=prompts)
    assert [record.record_id for record in dataset.records] == ["u-1", "u-2", "u-3"]
    first, second, third = dataset.records
    # [0, 1] -> [1.0, 5.0] linearly, by hand: 0.75 -> 1 + 0.75 * 4 = 4.0, 0.5 -> 3.0, 1.0 -> 5.0
    assert first.labels == {"physical_plausibility": 3.0, "alignment": 5.0, "aesthetics": 4.0}
    # 0.25 -> 2.0, 0.5833333 (7/12: a mean of three ratings) -> 1 + 7/3 = 3.3333, 0.0 -> 1.0, 0.125 -> 1.5
    assert second.labels == pytest.approx({"physical_plausibility": 2.0, "alignment": 10 / 3, "aesthetics": 1.0})
    assert third.labels == {"alignment": 1.5, "aesthetics": 5.0}  # no artifact score: no plausibility label
    assert all(record.histograms == {} for record in dataset.records)  # the release has means only
    assert first.meta == {"filename": "train/u-1.png", "artifact_score": 0.5, "misalignment_score": 1.0,
                          "aesthetics_score": 0.75, "overall_score": pytest.approx(0.6666667)}
    assert [record.group_id for record in dataset.records] == ["a cat on a sofa", "a cat on a sofa", "two dogs"]
    assert dataset.pairs == []


def test_richhf18k_prompt_column_image_bytes_and_options():
    rows = [{"filename": "train/u-9.png", "caption": "a boat", "image": png_bytes("blue"), "aesthetics_score": 0.5,
             "artifact_score": 0.75, "misalignment_score": 0.25, "overall_score": 0.5}]
    record = from_richhf18k(rows).records[0]
    assert (record.prompt, record.labels["physical_plausibility"]) == ("a boat", 4.0)
    assert record.image.getpixel((0, 0)) == (0, 0, 255)
    custom = from_richhf18k(rows, score_labels={"artifact_score": "realism", "overall_score": "alignment"},
                            levels=[0.0, 0.5, 1.0]).records[0]
    assert custom.labels == {"realism": 0.75, "alignment": 0.5}
    raw = [{**rows[0], "aesthetics_score": 4, "artifact_score": 2, "misalignment_score": 5, "overall_score": 1}]
    assert from_richhf18k(raw, score_range=(1, 5)).records[0].labels == {
        "physical_plausibility": 2.0, "alignment": 5.0, "aesthetics": 4.0}
    with pytest.raises(ValueError, match="unknown score column 'plausibility_score'"):
        from_richhf18k(rows, score_labels={"plausibility_score": "realism"})
    with pytest.raises(ValueError, match="score_range must be two finite numbers"):
        from_richhf18k(rows, score_range=(1, 1))


def test_richhf18k_bad_rows(tmp_path, caplog):
    rows = richhf_rows()
    write_images(tmp_path / "pickapic", [row["filename"] for row in rows])
    write_images(tmp_path, ["elsewhere/u-4.png"])
    rows[0]["aesthetics_score"] = 3.5  # the raw 1-5 scale, not what the release stores
    rows[1]["prompt"] = None
    rows.append({"filename": "../elsewhere/u-4.png", "prompt": "a cat", "aesthetics_score": 0.5})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({k: v for k, v in row.items() if "map" not in k}) + "\n"
                                                 for row in rows))
    prompts = {"u-1": "a cat", "u-3": "two dogs"}
    with pytest.raises(DataValidationError) as error:
        from_richhf18k(tmp_path / "rows.jsonl", root=tmp_path / "pickapic", prompts=prompts)
    message = str(error.value)
    assert "rows.jsonl line 1, field 'aesthetics_score': must be a score in [0, 1]" in message
    assert "got 3.5" in message
    assert "rows.jsonl line 2, field 'prompt': no prompt for 'train/u-2.png'" in message
    assert "rows.jsonl line 4, field 'image':" in message and "outside the dataset root" in message
    with caplog.at_level(logging.WARNING):
        dataset = from_richhf18k(tmp_path / "rows.jsonl", root=tmp_path / "pickapic", prompts=prompts,
                                 skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["u-3"] and "skipped 3 bad rows" in caplog.text


# -- EvalMuse-40K ----------------------------------------------------------------------------------------------------


def evalmuse_rows():
    """`train_list.json` rows: prompt 1001 has two images, prompt 1002 one; a test.json-like row has no scores."""
    return [
        {"prompt_id": "1001", "prompt": "a puffin on a rock", "type": "real", "img_path": "SDXL-Turbo/1001_0.png",
         "total_score": [3, 4, 4], "element_score": {"puffin (animal)": [1, 1, 1], "rock (object)": [1, 0, 1]},
         "promt_meaningless": [0, 0, 0], "split_confidence": [0, 0, 0], "attribute_confidence": [1, 1, 1],
         "fidelity_label": ["no", "no", "yes"]},
        {"prompt_id": "1001", "prompt": "a puffin on a rock", "type": "real", "img_path": "Kandinsky/1001_1.png",
         "total_score": [1, 5], "element_score": {"puffin (animal)": [0, 1], "rock (object)": [0, 1]},
         "promt_meaningless": [0, 0], "split_confidence": [0, 0], "attribute_confidence": [1, 1],
         "fidelity_label": ["no", "no"]},
        {"prompt_id": "1002", "prompt": "three red cubes", "type": "synthetic", "img_path": "SD3/1002_0.png",
         "total_score": [2, 2, 2, 2], "element_score": {"cubes (object)": [1, 1, 0, 1]},
         "promt_meaningless": [0, 0, 0, 0], "split_confidence": [1, 1, 1, 1], "attribute_confidence": [1, 1, 1, 1],
         "fidelity_label": ["no", "no", "no", "no"]},
        {"prompt_id": "1003", "prompt": "an abstract feeling", "type": "real", "img_path": "SD3/1003_0.png"},
    ]


def test_evalmuse_histograms_labels_and_groups(tmp_path):
    rows = evalmuse_rows()
    write_images(tmp_path, [row["img_path"] for row in rows])
    (tmp_path / "train_list.json").write_text(json.dumps(rows))
    dataset = from_evalmuse(tmp_path / "train_list.json")
    assert len(dataset) == 4 and list(dataset.groups()) == ["1001", "1002", "1003"]
    assert [len(members) for members in dataset.groups().values()] == [2, 1, 1]
    first, second, third, unlabelled = dataset.records
    # each 1-5 score lands on the level equal to it (levels 1.0, 1.5, ..., 5.0)
    assert first.histograms == {"alignment": [0, 0, 0, 0, 1, 0, 2, 0, 0]}
    assert first.labels["alignment"] == pytest.approx(11 / 3)
    assert second.histograms == {"alignment": [1, 0, 0, 0, 0, 0, 0, 0, 1]} and second.labels == {"alignment": 3.0}
    assert third.histograms == {"alignment": [0, 0, 4, 0, 0, 0, 0, 0, 0]} and third.labels == {"alignment": 2.0}
    assert (unlabelled.labels, unlabelled.histograms) == ({}, {})
    assert first.record_id == first.image == "SDXL-Turbo/1001_0.png"
    assert first.meta == {"total_score": [3, 4, 4], "type": "real", "promt_meaningless": [0, 0, 0],
                          "split_confidence": [0, 0, 0], "attribute_confidence": [1, 1, 1],
                          "fidelity_label": ["no", "no", "yes"],
                          "element_score": {"puffin (animal)": [1, 1, 1], "rock (object)": [1, 0, 1]}}


def test_evalmuse_csv_means_and_other_levels(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "rows.csv").write_text(
        "prompt_id,prompt,img_path,total_score,element_score\n"
        '7,a cat,a.png,"[2, 3]","{""cat (animal)"": [1, 1]}"\n'
        "8,a dog,b.png,3.5,\n")
    dataset = from_evalmuse(tmp_path / "rows.csv")
    assert dataset.records[0].histograms == {"alignment": [0, 0, 1, 0, 1, 0, 0, 0, 0]}
    assert dataset.records[0].meta["element_score"] == {"cat (animal)": [1, 1]}
    assert (dataset.records[1].labels, dataset.records[1].histograms) == ({"alignment": 3.5}, {})  # a mean: label
    assert [record.group_id for record in dataset.records] == ["7", "8"]
    # On levels (1, 4, 9), 1-5 maps to [1, 9]: 2 -> 3.0 splits 1/3 : 2/3 between 1 and 4, 3 -> 5.0 splits 0.8 : 0.2
    # between 4 and 9; the histogram mean stays the mean of the mapped scores, 4.0.
    coarse = from_evalmuse(tmp_path / "rows.csv", levels=[1.0, 4.0, 9.0]).records[0]
    assert coarse.histograms["alignment"] == pytest.approx([1 / 3, 2 / 3 + 0.8, 0.2])
    assert coarse.labels == {"alignment": pytest.approx(4.0)}
    with pytest.raises(ValueError, match="EvalMuse scores alignment"):
        from_evalmuse(tmp_path / "rows.csv", dimensions=["realism"])


def test_evalmuse_bad_rows(tmp_path, caplog):
    rows = evalmuse_rows()
    write_images(tmp_path / "images", [row["img_path"] for row in rows])
    write_images(tmp_path, ["secret.png"])
    rows[0]["total_score"] = [3, 6]
    rows[1]["total_score"] = [2.5, 4]
    rows[2]["element_score"] = "not json"
    rows[3]["img_path"] = "../secret.png"
    datasets_source = datasets.Dataset.from_list(rows[:1] + rows[3:])
    with pytest.raises(DataValidationError) as error:
        from_evalmuse(rows, root=tmp_path / "images")
    message = str(error.value)
    assert "rows row 0, field 'total_score': per-annotator ratings must be integers 1-5, got [3, 6]" in message
    assert "rows row 1, field 'total_score': per-annotator ratings must be integers 1-5" in message
    assert "rows row 2, field 'element_score': must be a dict" in message
    assert "rows row 3, field 'image':" in message and "outside the dataset root" in message
    with caplog.at_level(logging.WARNING):
        dataset = from_evalmuse(datasets_source, root=tmp_path / "images", skip_bad_rows=True)
    assert len(dataset) == 0 and len(dataset.skipped) == 2 and "skipped 2 bad rows" in caplog.text


# -- Rapidata --------------------------------------------------------------------------------------------------------


def rapidata_rich_source(**extra):
    """The rich-feedback set's columns: an Image feature, JSON-text word scores, normalised and raw means, heatmaps."""
    columns = {
        "image": [Image.new("RGB", (8, 6), "red"), Image.new("RGB", (8, 6), "green")],
        "prompt": ["The bright green grass contrasted with the dull grey pavement.", "a dog in a supermarket"],
        "word_scores": ['[["The", 1.3686], ["bright", 0.7992]]', '[["a", 1.5134], ["dog", 0.983]]'],
        "alignment_score_norm": [0.649863, 0.624388],
        "coherence_score_norm": [0.552199, 0.743565],
        "style_score_norm": [0.852295, 0.896313],
        "coherence_heatmap": [[[0.0, 0.5], [0.25, 0.0]], None],
        "alignment_heatmap": [None, None],
        "alignment_score": [3.4574, 3.4003],
        "coherence_score": [3.5963, 3.9851],
        "style_score": [3.8143, 3.9096],
        **extra,
    }
    return datasets.Dataset.from_dict(columns)


def test_rapidata_rich_feedback_means_to_labels():
    dataset = from_rapidata(rapidata_rich_source())
    first, second = dataset.records
    assert (first.record_id, second.record_id) == ("0", "1")
    # 1-5 means -> [1.0, 5.0]: the identity on the default levels; the *_norm columns are not read
    assert first.labels == pytest.approx({"alignment": 3.4574, "physical_plausibility": 3.5963,
                                          "aesthetics": 3.8143})
    assert first.histograms == {}  # the release has no per-annotator responses
    assert first.meta == pytest.approx({"alignment_score": 3.4574, "coherence_score": 3.5963, "style_score": 3.8143})
    assert first.group_id == "The bright green grass contrasted with the dull grey pavement."
    assert dataset.load_image(first).getpixel((0, 0)) == (255, 0, 0)
    on_nine = from_rapidata(rapidata_rich_source(), levels=[1.0, 9.0], score_labels={"coherence_score": "realism"})
    assert on_nine.records[1].labels == pytest.approx({"realism": 1 + 2.9851 * 2})  # 3.9851 on [1, 9]


def test_rapidata_per_annotator_responses_to_histograms():
    responses = ["[5, 4, 4, 2]", "[1, 1, 3]"]  # JSON text here; lists below
    dataset = from_rapidata(rapidata_rich_source(style_responses=responses),
                            response_columns={"style_score": "style_responses"})
    first, second = dataset.records
    assert first.histograms == {"aesthetics": [0, 0, 1, 0, 0, 0, 2, 0, 1]}
    assert first.labels["aesthetics"] == 3.75  # the histogram mean, not the stored mean 3.8143
    assert second.histograms == {"aesthetics": [2, 0, 0, 0, 1, 0, 0, 0, 0]}
    assert second.labels["aesthetics"] == pytest.approx(5 / 3)
    assert first.labels["alignment"] == pytest.approx(3.4574)  # no responses for alignment: its mean
    bad = rapidata_rich_source(style_responses=[[5, 0], [3]])
    with pytest.raises(DataValidationError, match=r"Dataset row 0, field 'style_responses': per-annotator ratings "
                                                  r"must be integers 1-5, got \[5, 0\]"):
        from_rapidata(bad, response_columns={"style_score": "style_responses"})
    with pytest.raises(ValueError, match="which the source does not have"):
        from_rapidata(rapidata_rich_source(), response_columns={"style_score": "style_responses"})


def test_rapidata_rich_feedback_bad_rows(caplog):
    source = rapidata_rich_source().to_list()
    source[0]["coherence_score"] = 0.55  # a normalised value in the raw column
    source[1]["image"] = b"not an image"
    with pytest.raises(DataValidationError) as error:
        from_rapidata(source)
    message = str(error.value)
    assert "rows row 0, field 'coherence_score': must be a score in [1, 5] (a mean 1-5 rating), got 0.55" in message
    assert "rows row 1, field 'image': the bytes are not an image" in message
    with caplog.at_level(logging.WARNING):
        assert len(from_rapidata(source, skip_bad_rows=True)) == 0
    assert "skipped 2 bad rows" in caplog.text


def test_rapidata_preference_sets(tmp_path):
    # HunyuanImage-2.1-style: weighted votes for three criteria per row.
    source = datasets.Dataset.from_dict({
        "prompt": ["a castle", "a castle"],
        "image1": [Image.new("RGB", (8, 6), "red"), Image.new("RGB", (8, 6), "red")],
        "image2": [Image.new("RGB", (8, 6), "blue"), Image.new("RGB", (8, 6), "blue")],
        "model1": ["hunyuan", "hunyuan"],
        "model2": ["flux", "imagen"],
        "weighted_results_image1_preference": [7.5, 2.0],
        "weighted_results_image2_preference": [2.5, 2.0],
        "detailed_results_preference": ["[]", "[]"],
        "weighted_results_image1_coherence": [1.0, 6.0],
        "weighted_results_image2_coherence": [9.0, 4.0],
        "detailed_results_coherence": ["[]", "[]"],
        "weighted_results_image1_alignment": [5.0, None],
        "weighted_results_image2_alignment": [5.0, None],
        "detailed_results_alignment": ["[]", "[]"],
    })
    dataset = from_rapidata(source)
    assert [record.record_id for record in dataset.records] == ["0:1", "0:2", "1:1", "1:2"]
    assert dataset.by_id("1:2").meta == {"model": "imagen"}
    assert dataset.pairs == [
        Pair("a castle", "0:1", "0:2", 1, None), Pair("a castle", "0:1", "0:2", 0, "alignment"),
        Pair("a castle", "0:1", "0:2", -1, "physical_plausibility"),
        Pair("a castle", "1:1", "1:2", 0, None), Pair("a castle", "1:1", "1:2", 1, "physical_plausibility"),
    ]
    # Older sets: one criterion per dataset (e.g. the coherence set), image paths, integer votes.
    write_images(tmp_path, ["flux/1.png", "dalle/1.png", "mj/1.png"])
    rows = [{"prompt": "a fox", "image1_path": "flux/1.png", "image2_path": "dalle/1.png", "votes_image1": 3,
             "votes_image2": 20, "model1": "flux", "model2": "dalle3", "detailed_results": "[]"},
            {"prompt": "a fox", "image1_path": "flux/1.png", "image2_path": "mj/1.png", "votes_image1": 11,
             "votes_image2": 11, "model1": "flux", "model2": "midjourney", "detailed_results": "[]"},
            {"prompt": "a fox", "image1_path": "../x.png", "image2_path": "mj/1.png", "votes_image1": -1,
             "votes_image2": 2},
            {"prompt": "a fox", "image1_path": "../x.png", "image2_path": "mj/1.png", "votes_image1": 1,
             "votes_image2": 2}]
    write_jsonl(tmp_path / "coherence.jsonl", rows)
    with pytest.raises(DataValidationError) as error:
        from_rapidata(tmp_path / "coherence.jsonl", pair_dimension="physical_plausibility")
    message = str(error.value)
    assert "coherence.jsonl line 3, field 'votes_image1': votes_image1, votes_image2 must be non-negative" in message
    assert "coherence.jsonl line 4, field 'image':" in message and "outside the dataset root" in message
    dataset = from_rapidata(tmp_path / "coherence.jsonl", pair_dimension="physical_plausibility",
                            skip_bad_rows=True)
    assert dataset.pairs == [Pair("a fox", "flux/1.png", "dalle/1.png", -1, "physical_plausibility"),
                             Pair("a fox", "flux/1.png", "mj/1.png", 0, "physical_plausibility")]
    with pytest.raises(ValueError, match="pair_dimension 'coherence' is not one of the dimensions"):
        from_rapidata(tmp_path / "coherence.jsonl", pair_dimension="coherence")


# -- GenAI-Bench -----------------------------------------------------------------------------------------------------


def genai_bench_rows():
    votes = ["leftvote", "rightvote", "tievote", "bothbad_vote"]
    return [{"prompt": "a kite" if index < 2 else "a lamp", "left_model": "sdxl", "right_model": "pixart",
             "left_image": {"bytes": png_bytes((index, 0, 0)), "path": None},
             "right_image": {"bytes": png_bytes((0, index, 0)), "path": None}, "vote_type": vote}
            for index, vote in enumerate(votes)]


def test_genai_bench_votes_and_ties_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(genai_bench_rows()), tmp_path / "train.parquet")  # Image feature storage
    dataset = from_genai_bench(tmp_path / "train.parquet")
    assert [record.record_id for record in dataset.records] == ["0:left", "0:right", "1:left", "1:right",
                                                                "2:left", "2:right", "3:left", "3:right"]
    assert dataset.pairs == [Pair("a kite", "0:left", "0:right", 1), Pair("a kite", "1:left", "1:right", -1),
                             Pair("a lamp", "2:left", "2:right", 0), Pair("a lamp", "3:left", "3:right", 0)]
    # the two kinds of tie stay apart through the records' meta
    kinds = [dataset.by_id(pair.record_a).meta["vote_type"] for pair in dataset.pairs]
    assert kinds == ["leftvote", "rightvote", "tievote", "bothbad_vote"]
    assert dataset.by_id("3:right").meta == {"model": "pixart", "side": "right", "vote_type": "bothbad_vote"}
    assert dataset.load_image(dataset.by_id("2:right")).getpixel((0, 0)) == (0, 2, 0)
    assert list(dataset.groups()) == ["a kite", "a lamp"]


def test_genai_bench_hf_dataset_bad_rows_and_root(tmp_path, caplog):
    features = datasets.Features({"prompt": datasets.Value("string"), "left_model": datasets.Value("string"),
                                  "left_image": datasets.Image(), "right_model": datasets.Value("string"),
                                  "right_image": datasets.Image(), "vote_type": datasets.Value("string")})
    rows = [{"prompt": "a kite", "left_model": "a", "left_image": Image.new("RGB", (8, 6)), "right_model": "b",
             "right_image": Image.new("RGB", (8, 6)), "vote_type": vote} for vote in ("rightvote", "upvote", "")]
    source = datasets.Dataset.from_list(rows, features=features)
    with pytest.raises(DataValidationError) as error:
        from_genai_bench(source)
    message = str(error.value)
    assert "Dataset row 1, field 'vote_type': must be one of ['leftvote', 'rightvote', 'tievote', " in message
    assert "Dataset row 2, field 'vote_type'" in message
    with caplog.at_level(logging.WARNING):
        dataset = from_genai_bench(source, skip_bad_rows=True)
    assert dataset.pairs == [Pair("a kite", "0:left", "0:right", -1)] and "skipped 2 bad rows" in caplog.text
    write_images(tmp_path, ["root/a.png", "b.png"])
    path_rows = [{"prompt": "a kite", "left_image": "a.png", "right_image": "../b.png", "vote_type": "tievote"}]
    with pytest.raises(DataValidationError, match=r"rows row 0, field 'image': .*outside the dataset root"):
        from_genai_bench(path_rows, root=tmp_path / "root")


def test_older_mappers_read_csv_copies(tmp_path):
    """CSV cells are text: ranks, ratings, labels and JSON lists in a CSV copy read as they do from parquet."""
    import csv

    from zreward_diffusers.data import from_hpdv2, from_imagereward_db, from_pickapic

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4), "red").save(tmp_path / name)

    def write_csv(path, rows):
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    imagereward = from_imagereward_db(write_csv(tmp_path / "ir.csv", [
        {"prompt_id": 1, "prompt": "a cat", "image_path": "a.png", "rank": 2, "fidelity_rating": 7},
        {"prompt_id": 1, "prompt": "a cat", "image_path": "b.png", "rank": 1, "fidelity_rating": 4}]),
        rating_labels={"fidelity_rating": "realism"})
    assert [r.labels for r in imagereward.records] == [{"realism": 5.0}, {"realism": 3.0}]
    assert [(p.record_a, p.record_b, p.preference) for p in imagereward.pairs] == [("a.png", "b.png", -1)]
    pickapic = from_pickapic(write_csv(tmp_path / "pp.csv", [
        {"caption": "a dog", "image_0_path": "a.png", "image_1_path": "b.png", "label_0": 0, "label_1": 1},
        {"caption": "a dog", "image_0_path": "b.png", "image_1_path": "c.png", "label_0": 0.5, "label_1": 0.5}]))
    assert [p.preference for p in pickapic.pairs] == [-1, 0]
    hpdv2 = from_hpdv2(write_csv(tmp_path / "hp.csv", [
        {"prompt": "a fox", "image_path": json.dumps(["a.png", "b.png", "c.png"]), "rank": json.dumps([3, 1, 2])}]))
    assert [(p.record_a, p.record_b, p.preference) for p in hpdv2.pairs] == [
        ("a.png", "b.png", -1), ("a.png", "c.png", -1), ("b.png", "c.png", 1)]
    with pytest.raises(DataValidationError, match="rank"):
        from_imagereward_db(write_csv(tmp_path / "bad.csv", [
            {"prompt_id": 1, "prompt": "a cat", "image_path": "a.png", "rank": "first"}]))
