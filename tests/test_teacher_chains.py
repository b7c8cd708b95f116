"""`benchmarks.teacher_chains`: the share of a teacher's alignment chains that name the scene's count, colour and
shape, checked on the world's own rationales (right by construction) and on hand-corrupted copies of them."""

import json

import pytest

from benchmarks.teacher_chains import chain_report, main, parse_clause
from zreward_diffusers.synthetic import SyntheticWorld, WorldConfig


@pytest.fixture(scope="module")
def items():
    world = SyntheticWorld(0, WorldConfig(image_size=56))
    return {item.record_id: item for group in world.groups(8) for item in group.items}


def entries_of(items, chain_for):
    return [{"record_id": rid, "dimension": d, "chains": [chain_for(item)]} for rid, item in items.items()
            for d in ("alignment", "realism")]


def test_the_worlds_own_rationales_are_right_on_every_column(items):
    report = chain_report(entries_of(items, lambda item: item.rationales["alignment"]), items)
    assert report["chains"] == len(items) == 32  # realism chains are not read
    for key in ("well_formed", "seen_count_right", "seen_colour_right", "seen_shape_right", "seen_background_right",
                "all_three_right", "prompt_quoted_right"):
        assert report[key] == 1.0, key


def test_wrong_words_and_garbled_chains_are_counted_as_such(items):
    ids = sorted(items)
    wrong_colour = set(ids[:8])  # 8 of 32 chains name another colour for what they see
    garbled = set(ids[8:12])  # 4 of 32 are not well formed

    def chain(item):
        seen = f"{item.scene.count} {item.scene.colour} {item.scene.shape}s"
        if item.record_id in garbled:
            return "The image shows% purple. The match."
        colour = "cyan" if item.scene.colour != "cyan" else "red"
        words = seen.replace(item.scene.colour, colour) if item.record_id in wrong_colour else seen
        return f"The text wants a thing. I count {words} on a {item.scene.background} background."

    report = chain_report(entries_of(items, chain), items)
    assert report["well_formed"] == pytest.approx(28 / 32)
    assert report["seen_colour_right"] == pytest.approx(20 / 28)
    assert report["seen_count_right"] == report["seen_shape_right"] == report["seen_background_right"] == 1.0
    assert report["all_three_right"] == pytest.approx(20 / 28)
    assert report["prompt_quoted_right"] == 0.0  # "a thing" is no count, colour and shape
    assert parse_clause("I see two red circles on a blue background.", ("I see",)) == {
        "count": 2, "colour": "red", "shape": "circle", "background": "blue"}
    assert parse_clause("I see two red blobs.", ("I see",)) is None
    with pytest.raises(ValueError, match="no alignment chain"):
        chain_report([{"record_id": "elsewhere", "dimension": "alignment", "chains": ["x"]}], items)


def test_the_command_reads_a_cache_directory(items, tmp_path, capsys):
    folder = tmp_path / "cache" / "abc"
    folder.mkdir(parents=True)
    rows = entries_of(items, lambda item: item.rationales["alignment"])
    (folder / "entries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = main(["--cache", str(tmp_path / "cache"), "--num_groups", "8", "--out", str(tmp_path / "r.json")])
    assert report["all_three_right"] == 1.0 and "| 32 | 1.000 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["chains"] == 32
    with pytest.raises(SystemExit, match="--cache"):
        main(["--cache", str(tmp_path / "empty")])
