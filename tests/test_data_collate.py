"""Collators: GDSO prompt groups, pairs from labels, and DataLoader batches of records and pairs."""

import functools
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zreward_diffusers.data import (
    Pair,
    Record,
    RewardDataset,
    collate_pairs,
    collate_records,
    label_pairs,
    prompt_groups,
)


def make_dataset(tmp_path=None) -> RewardDataset:
    """Prompt g0: 6 images with alignment labels 1,1,2,2,3,3; g1: 4 images all labelled 3; g2: 3 images, no labels."""
    records = []
    for index in range(6):
        histograms = {"realism": [0, 1, 2, 0, 0, 0, 0, 0, 0]} if index == 0 else {}
        records.append(Record(f"g0-{index}", "a red circle", Image.new("RGB", (8, 6), (index, 0, 0)), "g0",
                              labels={"alignment": 1.0 + index // 2}, histograms=histograms))
    for index in range(4):
        records.append(Record(f"g1-{index}", "a blue square", Image.new("RGB", (8, 6), (0, index, 0)), "g1",
                              labels={"alignment": 3.0, "realism": 1.0 + index}))
    for index in range(3):
        records.append(Record(f"g2-{index}", "a green star", Image.new("RGB", (8, 6), (0, 0, index)), "g2"))
    return RewardDataset.from_records(records)


def test_collate_records_shapes_and_masks():
    dataset = make_dataset()
    batch = collate_records(dataset.records[4:8], dataset)  # g0-4, g0-5, g1-0, g1-1
    assert batch["images"].shape == (4, 3, 6, 8) and batch["images"].dtype == torch.uint8
    assert batch["images"][0, 0, 0, 0] == 4 and batch["images"][3, 1, 0, 0] == 1  # (B, 3, H, W), RGB order
    assert batch["prompts"] == ["a red circle", "a red circle", "a blue square", "a blue square"]
    assert batch["group_ids"] == ["g0", "g0", "g1", "g1"]
    assert batch["record_ids"] == ["g0-4", "g0-5", "g1-0", "g1-1"]
    labels = batch["labels"]
    assert labels.shape == (4, 4) and labels.dtype == torch.float32
    alignment, realism = dataset.dimensions.index("alignment"), dataset.dimensions.index("realism")
    assert labels[:, alignment].tolist() == [3.0, 3.0, 3.0, 3.0]
    assert torch.isnan(labels[:2, realism]).all() and labels[2:, realism].tolist() == [1.0, 2.0]
    assert int(torch.isnan(labels).sum()) == 4 * 4 - 6
    assert batch["histograms"].shape == (4, 4, 9) and not batch["has_histogram"].any()
    assert batch["histograms"].abs().sum() == 0

    with_histogram = collate_records(dataset.records[:2], dataset)
    assert with_histogram["has_histogram"].tolist() == [[False, False, True, False], [False] * 4]
    assert with_histogram["histograms"][0, realism].tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 0]
    assert with_histogram["histograms"][1].abs().sum() == 0


def test_collate_records_sizes(tmp_path):
    records = [Record("a", "p", Image.new("RGB", (8, 6), "red"), "g"), Record("b", "p", "b.png", "g")]
    Image.new("RGB", (5, 5), "blue").save(tmp_path / "b.png")
    dataset = RewardDataset.from_records(records, root=tmp_path)
    with pytest.raises(ValueError, match=r"differ in size \(height x width; 'a': 6x8, 'b': 5x5, ...\); pass "
                                         r"`image_size`"):
        collate_records(dataset.records, dataset)
    assert collate_records(dataset.records, dataset, image_size=4)["images"].shape == (2, 3, 4, 4)
    resized = collate_records(dataset.records, dataset, image_size=(6, 8))["images"]
    assert resized.shape == (2, 3, 6, 8)
    assert np.array_equal(resized[0].permute(1, 2, 0).numpy(), np.asarray(dataset.load_image(records[0])))
    with pytest.raises(ValueError, match="empty"):
        collate_records([], dataset)
    stranger = Record("c", "p", Image.new("RGB", (8, 6)), "g", labels={"beauty": 2.0})
    with pytest.raises(ValueError, match=r"unknown dimensions \['beauty'\]"):
        collate_records([stranger], dataset)


def test_dataloader_over_records():
    dataset = make_dataset()
    loader = DataLoader(dataset.records, batch_size=5, shuffle=False,
                        collate_fn=functools.partial(collate_records, dataset=dataset))
    batches = list(loader)
    assert [batch["images"].shape[0] for batch in batches] == [5, 5, 3]
    assert [record_id for batch in batches for record_id in batch["record_ids"]] == [
        record.record_id for record in dataset.records]


def test_collate_pairs():
    dataset = make_dataset()
    pairs = label_pairs(dataset.records, "alignment")[:3] + [Pair("g1", "g1-0", "g1-3", -1, "realism")]
    batch = collate_pairs(pairs, dataset)
    assert batch["images_a"].shape == batch["images_b"].shape == (4, 3, 6, 8)
    assert batch["images_a"].dtype == torch.uint8
    assert batch["preference"].tolist() == [0, -1, -1, -1] and batch["preference"].dtype == torch.int64
    assert batch["prompts"] == ["a red circle"] * 3 + ["a blue square"]
    assert batch["dimensions"] == ["alignment"] * 3 + ["realism"]
    assert batch["record_ids_a"] == ["g0-0", "g0-0", "g0-0", "g1-0"]
    assert batch["record_ids_b"] == ["g0-1", "g0-2", "g0-3", "g1-3"]
    assert batch["images_b"][3, 1, 0, 0] == 3  # g1-3's green channel
    different = RewardDataset([Record("a", "one", Image.new("RGB", (4, 4)), "g"),
                               Record("b", "two", Image.new("RGB", (4, 4)), "g")])
    with pytest.raises(ValueError, match="compares images of different prompts"):
        collate_pairs([Pair("g", "a", "b", 1)], different)


def test_label_pairs():
    dataset = make_dataset()
    pairs = label_pairs(dataset.records, "alignment")
    # g0: 15 pairs (3 ties), g1: 6 pairs (all ties), g2 unlabelled: none; never across groups.
    assert len(pairs) == 15 + 6
    assert all(dataset.by_id(p.record_a).group_id == dataset.by_id(p.record_b).group_id == p.group_id for p in pairs)
    g0 = [pair for pair in pairs if pair.group_id == "g0"]
    assert sum(pair.preference == 0 for pair in g0) == 3
    assert Pair("g0", "g0-0", "g0-5", -1, "alignment") in g0  # record order: a before b
    assert Pair("g0", "g0-1", "g0-2", -1, "alignment") in g0 and Pair("g0", "g0-4", "g0-5", 0, "alignment") in g0
    assert all(pair.preference == 0 for pair in pairs if pair.group_id == "g1")
    realism = label_pairs(dataset.records, "realism")
    assert [(pair.record_a, pair.record_b, pair.preference) for pair in realism][:3] == [
        ("g1-0", "g1-1", -1), ("g1-0", "g1-2", -1), ("g1-0", "g1-3", -1)]
    overall = label_pairs(dataset.records, None)  # mean of each record's labels
    assert Pair("g1", "g1-3", "g1-0", 1) not in overall and Pair("g1", "g1-0", "g1-3", -1) in overall
    RewardDataset.from_records(dataset.records, pairs)  # the pairs validate


def test_prompt_groups_spread_leftovers_and_seed(caplog):
    dataset = make_dataset()
    with caplog.at_level(logging.INFO, logger="zreward_diffusers.data"):
        groups = prompt_groups(dataset, group_size=4, dimension="alignment", seed=0)
    # g0: one group of 4 (+2 left over); g1: one group without spread; g2: 3 < 4, all left over.
    assert len(groups) == 1 and isinstance(groups, list)
    assert (groups.num_without_spread, groups.num_leftover_records) == (1, 2 + 3)
    assert all(record.group_id == "g0" for record in groups[0]) and len(groups[0]) == 4
    assert "dropped 1 without label spread and 5 leftover records" in caplog.text

    unfiltered = prompt_groups(dataset, group_size=2, dimension="alignment", require_spread=False, seed=0)
    assert len(unfiltered) == 3 + 2 + 1 and unfiltered.num_without_spread == 0
    assert all(len({record.group_id for record in group}) == 1 for group in unfiltered)
    # dimension=None: spread on any dimension; g1 differs on realism.
    assert {group[0].group_id for group in prompt_groups(dataset, group_size=4)} == {"g0", "g1"}

    def ids(seed):
        return [[record.record_id for record in group]
                for group in prompt_groups(dataset, 2, "alignment", require_spread=False, seed=seed)]

    assert ids(1) == ids(1)
    assert len({str(ids(seed)) for seed in range(6)}) > 1
    with pytest.raises(ValueError, match="unknown dimension 'beauty'"):
        prompt_groups(dataset, 2, dimension="beauty")
    with pytest.raises(ValueError, match="positive integer"):
        prompt_groups(dataset, 0)
