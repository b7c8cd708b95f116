"""The data layer against hostile or broken input: images verified by default (corrupt, empty, decompression
bombs), image paths kept inside the dataset root, NaN never read as "missing" in JSON, and `skip_bad_rows=True`
surviving any single bad row (huge numbers, deep nesting, bad bytes), with a seeded fuzz test over all of it."""

import csv
import io
import json
import logging
import os
from pathlib import Path

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
    from_hpdv2,
    from_imagereward_db,
    from_pickapic,
    load_dataset,
    read_records,
)


def png(path, colour="red", size=(8, 6)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def png_bytes(colour="red", size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_bytes() -> bytes:
    """A 9500 x 9500 PNG (90 M pixels, more than PIL's 89.5 M limit) of 11 kB: a small decompression bomb."""
    buffer = io.BytesIO()
    Image.new("1", (9500, 9500)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_lines(path, lines) -> None:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))


def row(record_id, image, **fields) -> str:
    return json.dumps({"record_id": record_id, "prompt": "a red circle", "image": image, **fields})


def lines_of(error: DataValidationError) -> list[int]:
    return sorted(bad.index for bad in error.bad_rows)


# ------------------------------------------------------------------------------------------------ images
@pytest.fixture
def broken_images(tmp_path):
    png(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(png_bytes()[:40])  # a PNG header, then nothing
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    return tmp_path


def test_images_are_verified_by_default(broken_images):
    """Defect 12: corrupt and 0-byte images passed validation and crashed `zreward eval` later."""
    write_lines(broken_images / "data.jsonl", [row("a", "good.png"), row("b", "corrupt.png"), row("c", "empty.png"),
                                               row("d", "text.png")])
    with pytest.raises(DataValidationError) as error:
        read_records(broken_images / "data.jsonl")
    assert lines_of(error.value) == [2, 3, 4]
    message = str(error.value)
    for line, name in [(2, "corrupt.png"), (3, "empty.png"), (4, "text.png")]:
        assert f"data.jsonl line {line}, field 'image': " in message and name in message
    # Opting out (for speed) checks existence only.
    assert len(read_records(broken_images / "data.jsonl", verify_images=False)) == 4


def test_every_reader_verifies_images_by_default(broken_images, tmp_path):
    rows = [{"prompt": "a", "image": "good.png"}, {"prompt": "b", "image": "corrupt.png"}]
    root = broken_images
    (root / "data.json").write_text(json.dumps(rows))
    with open(root / "data.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["prompt", "image"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), root / "data.parquet")
    sources = {
        "data.json row 1": lambda: read_records(root / "data.json"),
        "data.csv line 3": lambda: load_dataset(root / "data.csv"),
        "data.parquet row 1": lambda: read_records(root / "data.parquet"),
        "Dataset row 1": lambda: from_hf_dataset(datasets.Dataset.from_list(rows), root=root),
        "records row 1": lambda: RewardDataset.from_records(
            [Record("a", "a", "good.png", "g"), Record("b", "b", "corrupt.png", "g")], root=root),
        "rows row 1": lambda: from_imagereward_db(
            [{"prompt": "p", "image_path": "good.png", "rank": 1}, {"prompt": "p", "image_path": "corrupt.png",
                                                                   "rank": 2}], root=root),
        "rows row 0": lambda: from_hpdv2([{"prompt": "p", "image_path": ["good.png", "corrupt.png"],
                                           "rank": [1, 2]}], root=root),
    }
    saved = RewardDataset.from_records([Record("a", "a", Image.new("RGB", (4, 4)), "g")]).save(tmp_path / "saved")
    (saved / "images" / os.listdir(saved / "images")[0]).write_bytes(b"\x89PNG truncated")
    sources["records.jsonl line 1"] = lambda: RewardDataset.load(saved)
    for where, read in sources.items():
        with pytest.raises(DataValidationError, match=rf"{where}, field '[a-z_]+': .*(decoded|image)"):
            read()
    # Encoded images are verified on a throwaway copy: the dataset keeps them encoded, not decoded in memory.
    pq.write_table(pa.table({"prompt": ["a"], "image": [png_bytes(size=(64, 64))]}), root / "good.parquet")
    [record] = read_records(root / "good.parquet").records
    assert record.image.fp is not None  # not loaded yet
    assert record.image.size == (64, 64) and record.image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_decompression_bombs_are_refused_by_pixel_count(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_bytes())
    png(tmp_path / "good.png")
    write_lines(tmp_path / "data.jsonl", [row("a", "good.png"), row("b", "bomb.png")])
    with pytest.raises(DataValidationError, match=r"data.jsonl line 2, field 'image': .*90250000 pixels"):
        read_records(tmp_path / "data.jsonl")
    dataset = read_records(tmp_path / "data.jsonl", skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["a"]
    # Encoded bytes (parquet, datasets) are checked the same way, whatever PIL's own limit is set to.
    pq.write_table(pa.table({"prompt": ["a", "b"], "image": [png_bytes(), bomb_bytes()]}), tmp_path / "b.parquet")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with pytest.raises(DataValidationError, match=r"b.parquet row 1, field 'image': .*90250000 pixels"):
            read_records(tmp_path / "b.parquet")
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_a_bomb_over_pils_hard_limit_is_a_bad_row_not_a_crash(tmp_path, monkeypatch):
    """Over twice its limit PIL raises `DecompressionBombError` (not an OSError) when the bytes are opened."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    source = datasets.Dataset.from_dict({"prompt": ["a", "b"], "image": [png_bytes(size=(4, 4)),
                                                                         png_bytes(size=(64, 64))]})
    with pytest.raises(DataValidationError, match=r"Dataset row 1, field 'image'"):
        from_hf_dataset(source)
    rows = [{"caption": "c", "jpg_0": png_bytes(size=(4, 4)), "jpg_1": png_bytes(size=(64, 64)), "label_0": 1,
             "label_1": 0}]
    with pytest.raises(DataValidationError, match=r"rows row 0, field 'image'"):
        from_pickapic(rows)


def test_a_dataset_row_datasets_cannot_decode_is_a_bad_row():
    """An `Image` feature is decoded by `datasets` while the rows are read: a corrupt one used to end the read."""
    features = datasets.Features({"prompt": datasets.Value("string"), "image": datasets.Image()})
    source = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "image": [
        {"bytes": png_bytes("red"), "path": None}, {"bytes": b"junk", "path": None},
        {"bytes": png_bytes("blue"), "path": None}]}, features=features)
    with pytest.raises(DataValidationError, match=r"Dataset row 1, field '\(row\)': cannot be read"):
        from_hf_dataset(source)
    dataset = from_hf_dataset(source, skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["0", "2"]
    assert dataset.load_image(dataset.records[1]).getpixel((0, 0)) == (0, 0, 255)


# ------------------------------------------------------------------------------------------------ paths
@pytest.fixture
def escapes(tmp_path):
    """A dataset root with one image inside and three ways out of it: `..`, an absolute path and a symlink."""
    root = tmp_path / "root"
    png(root / "in.png")
    png(tmp_path / "secret.png")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    return root, {"..": "../secret.png", "absolute": str(tmp_path / "secret.png"), "symlink": "link.png"}


def test_image_paths_must_stay_inside_the_dataset_root(escapes):
    """Defect 12: image paths could name any file on the machine."""
    root, outside = escapes
    (root / "sub").mkdir()
    write_lines(root / "data.jsonl", [row("ok", "in.png"), row("ok2", "sub/../in.png"),
                                      row("ok3", str(root / "in.png")),
                                      *(row(kind, path) for kind, path in outside.items())])
    with pytest.raises(DataValidationError) as error:
        read_records(root / "data.jsonl")
    assert lines_of(error.value) == [4, 5, 6]
    assert all(bad.field == "image" and "outside the dataset root" in bad.reason and "allow_outside_root=True"
               in bad.reason for bad in error.value.bad_rows)
    dataset = read_records(root / "data.jsonl", allow_outside_root=True)
    assert [record.record_id for record in dataset.records] == ["ok", "ok2", "ok3", *outside]
    assert dataset.load_image(dataset.by_id("symlink")).size == (8, 6)
    # The same rule in the other readers and mappers.
    with pytest.raises(DataValidationError, match="outside the dataset root"):
        from_hf_dataset(datasets.Dataset.from_dict({"prompt": ["a"], "image": ["../secret.png"]}), root=root)
    with pytest.raises(DataValidationError, match="outside the dataset root"):
        RewardDataset.from_records([Record("a", "a", outside["absolute"], "g")], root=root)
    with pytest.raises(DataValidationError, match="outside the dataset root"):
        from_hpdv2([{"prompt": "p", "image_path": ["in.png", "../secret.png"], "rank": [1, 2]}], root=root)
    assert len(from_hpdv2([{"prompt": "p", "image_path": ["in.png", "../secret.png"], "rank": [1, 2]}], root=root,
                          allow_outside_root=True)) == 2


def test_saved_dataset_referencing_images_outside_needs_allow_outside_root(tmp_path, caplog):
    png(tmp_path / "source" / "a.png")
    dataset = RewardDataset.from_records([Record("a", "a", "a.png", "g")], root=tmp_path / "source")
    with caplog.at_level(logging.WARNING, logger="zreward_diffusers.data"):
        saved = dataset.save(tmp_path / "saved")
    assert "allow_outside_root=True" in caplog.text
    with pytest.raises(DataValidationError, match=r"records.jsonl line 1, field 'image': .*outside the dataset root"):
        RewardDataset.load(saved)
    assert len(RewardDataset.load(saved, allow_outside_root=True)) == 1
    assert len(load_dataset(saved, allow_outside_root=True)) == 1
    # copy_images: a self-contained dataset that loads without the switch, with the same pixels
    contained = dataset.save(tmp_path / "contained", copy_images=True)
    loaded = RewardDataset.load(contained)
    path = loaded.image_path(loaded.records[0])
    assert Path(path).resolve().is_relative_to(contained.resolve())
    assert Path(path).read_bytes() == (tmp_path / "source" / "a.png").read_bytes()


# ------------------------------------------------------------------------------------------------ JSON values
def test_nan_label_in_json_is_rejected_not_dropped(tmp_path):
    """Defect 12: `read_records` dropped a NaN label of a JSONL row silently (`RewardDataset.load` rejects it)."""
    png(tmp_path / "a.png")
    (tmp_path / "data.jsonl").write_text(
        '{"prompt": "a", "image": "a.png", "labels": {"alignment": NaN, "realism": 3.0}}\n'
        '{"prompt": "b", "image": "a.png", "nan_score": NaN}\n')
    with pytest.raises(DataValidationError, match=r"data.jsonl line 1, field 'labels.alignment': must be a finite "
                                                  r"number, got nan"):
        read_records(tmp_path / "data.jsonl")
    with pytest.raises(DataValidationError, match=r"data.jsonl line 2, field 'labels.alignment': must be a finite"):
        read_records(tmp_path / "data.jsonl", {"labels.alignment": "nan_score"})
    (tmp_path / "data.json").write_text('[{"prompt": "a", "image": "a.png", "labels": {"alignment": NaN}}]')
    with pytest.raises(DataValidationError, match=r"data.json row 0, field 'labels.alignment'"):
        read_records(tmp_path / "data.json")


DEEP = "[" * 3000 + "]" * 3000

BAD_LINES = {
    # name: (the bad line, the field its BadRow names)
    "int too large for a float": ('{"record_id": "x", "prompt": "p", "image": "a.png", "labels": {"alignment": 1'
                                  + "0" * 400 + "}}", "labels.alignment"),
    "int of 5000 digits": ('{"record_id": "x", "prompt": "p", "image": "a.png", "meta": {"n": ' + "9" * 5000 + "}}",
                           "(row)"),
    "deeply nested row": (DEEP, "(row)"),
    "deeply nested value": ('{"record_id": "x", "prompt": "p", "image": "a.png", "meta": {"m": ' + DEEP + "}}",
                            "(row)"),
    "nested deeper than the limit": ('{"record_id": "x", "prompt": "p", "image": "a.png", "meta": '
                                     + '{"m": ' * 200 + "1" + "}" * 201, "(row)"),
    "not UTF-8": (b'{"record_id": "x", "prompt": "caf\xe9", "image": "a.png"}', "(row)"),
    "histogram count too large": ('{"record_id": "x", "prompt": "p", "image": "a.png", "histograms": {"realism": ['
                                  + ", ".join(["1" + "0" * 400] * 9) + "]}}", "histograms.realism"),
    "group id an object": ('{"record_id": "x", "prompt": "p", "image": "a.png", "group_id": {"a": 1}}', "group_id"),
    "file name too long": ('{"record_id": "x", "prompt": "p", "image": "' + "n" * 5000 + '.png"}', "image"),
    "labels text nested too deep": ('{"record_id": "x", "prompt": "p", "image": "a.png", "labels": "' + DEEP + '"}',
                                    "labels"),
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_skip_bad_rows_survives_any_single_bad_row(tmp_path, caplog, name):
    """Defect 12: an oversized number or deep nesting crashed the whole load even with `skip_bad_rows=True`."""
    line, field = BAD_LINES[name]
    png(tmp_path / "a.png")
    write_lines(tmp_path / "data.jsonl", [row("first", "a.png"), line, row("last", "a.png")])
    with pytest.raises(DataValidationError) as error:
        read_records(tmp_path / "data.jsonl")
    [bad] = error.value.bad_rows
    assert (bad.source, bad.unit, bad.index, bad.field) == ("data.jsonl", "line", 2, field)
    assert len(str(error.value)) < 2000  # a huge value is abbreviated in the message
    with caplog.at_level(logging.WARNING, logger="zreward_diffusers.data"):
        dataset = read_records(tmp_path / "data.jsonl", skip_bad_rows=True)
    assert [record.record_id for record in dataset.records] == ["first", "last"]
    assert [(bad.index, bad.field) for bad in dataset.skipped] == [(2, field)]
    assert "data.jsonl line 2" in caplog.text


def test_saved_dataset_survives_bad_rows_too(tmp_path):
    saved = RewardDataset.from_records([Record("a", "a", Image.new("RGB", (4, 4)), "g"),
                                        Record("b", "b", Image.new("RGB", (4, 4)), "g")]).save(tmp_path / "saved")
    lines = (saved / "records.jsonl").read_text().splitlines()
    write_lines(saved / "records.jsonl", [lines[0], DEEP, BAD_LINES["int of 5000 digits"][0], b"\xff\xfe", lines[1]])
    with pytest.raises(DataValidationError) as error:
        RewardDataset.load(saved)
    assert lines_of(error.value) == [2, 3, 4]
    assert [record.record_id for record in RewardDataset.load(saved, skip_bad_rows=True).records] == ["a", "b"]
    (saved / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"dataset\.json"):
        RewardDataset.load(saved)
    (saved / "dataset.json").write_text(json.dumps({"format": "zreward-dataset", "format_version": 1,
                                                    "dimensions": "alignment", "levels": [1, 5]}))
    with pytest.raises(ValueError, match=r"dataset\.json.*dimensions"):
        RewardDataset.load(saved)


def test_format_mappers_survive_huge_numbers(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    rows = [{"prompt": "p", "image_path": "a.png", "rank": 1},
            {"prompt": "p", "image_path": "b.png", "rank": 10 ** 400}]
    with pytest.raises(DataValidationError, match=r"rows row 1, field 'rank'"):
        from_imagereward_db(rows, root=tmp_path)
    assert len(from_imagereward_db(rows, root=tmp_path, skip_bad_rows=True)) == 1
    rows = [{"prompt": "p", "image_path": ["a.png", "b.png"], "rank": [1, 10 ** 400]}]
    with pytest.raises(DataValidationError, match=r"rows row 0, field 'rank'"):
        from_hpdv2(rows, root=tmp_path)
    rows = [{"caption": "c", "image_0_path": "a.png", "image_1_path": "b.png", "label_0": 10 ** 400, "label_1": 0}]
    with pytest.raises(DataValidationError, match=r"rows row 0, field 'label_0'"):
        from_pickapic(rows, root=tmp_path)


def test_csv_structure_errors_name_the_file_and_line(tmp_path):
    png(tmp_path / "a.png")
    limit = csv.field_size_limit()
    (tmp_path / "data.csv").write_text(f"prompt,image\na,a.png\n{'x' * (limit + 1)},a.png\n")
    with pytest.raises(ValueError, match=r"data\.csv.* line 3"):
        read_records(tmp_path / "data.csv")
    (tmp_path / "data.csv").write_bytes(b"prompt,image\ncaf\xe9,a.png\n")
    with pytest.raises(ValueError, match=r"data\.csv.*UTF-8"):
        read_records(tmp_path / "data.csv")


# ------------------------------------------------------------------------------------------------ fuzz
FUZZ_DIMENSIONS = ("alignment", "aesthetics", "realism", "physical_plausibility")


def _fuzz_files(root, outside):
    png(root / "img" / "0.png")
    png(root / "img" / "1.png", "blue")
    (root / "img" / "corrupt.png").write_bytes(png_bytes()[:50])
    (root / "img" / "empty.png").write_bytes(b"")
    (root / "img" / "bomb.png").write_bytes(bomb_bytes())
    png(outside)
    (root / "img" / "link.png").symlink_to(outside)


def _bad_line(rng, index, outside) -> bytes:
    """One malformed row, chosen at random from many kinds of damage."""
    base = {"record_id": f"bad{index}", "prompt": "a prompt", "image": "img/0.png", "group_id": "g"}
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    kind = int(rng.integers(14))
    if kind == 0:  # not JSON, or not UTF-8
        return pick([b"{", b'{"prompt": "a"', b"nul\x00l", b'{"a": 1} trailing', b"\xff\xfe{}", b"\x80"])
    if kind == 1:  # not an object
        return pick([b"[]", b'"row"', b"3", b"null", b"true", b'[{"prompt": "a"}]'])
    if kind == 2:  # huge numbers (a repeated key replaces the first)
        number = pick(["1" + "0" * 400, "9" * 5000, "1e999", "-1e999", "1" + "0" * 4000])
        target = pick(['"labels": {"alignment": %s}', '"prompt": %s', '"image": %s',
                       '"histograms": {"realism": [%s, 1, 1, 1, 1, 1, 1, 1, 1]}'])
        return (json.dumps(base)[:-1] + ", " + target % number + "}").encode()
    if kind == 3:  # deep nesting, within a value or as the row
        depth = int(pick([150, 3000, 20000]))
        nested = "[" * depth + "]" * depth
        return pick([nested, json.dumps(base)[:-1] + ', "meta": {"m": ' + nested + "}}",
                     json.dumps(base)[:-1] + ', "labels": "' + nested + '"}']).encode()
    if kind == 4:  # NaN and infinities, bad label values
        value = pick([float("nan"), float("inf"), float("-inf"), "high", [3.0], {"a": 1}, True, None, 0.0, 9.0])
        if value is None:
            return json.dumps(dict(base, labels={"beauty": 3.0})).encode()
        return json.dumps(dict(base, labels={pick(FUZZ_DIMENSIONS): value})).encode()
    if kind == 5:  # bad types of the text fields (numeric ids are read as text, by design)
        field = pick(["prompt", "record_id", "group_id"])
        values = {"prompt": [3, [1], {"a": 1}, True, "", "  ", 2.5], "record_id": [[1], {"a": 1}, True, "", 2.5],
                  "group_id": [[1], {"a": 1}, True, float("inf"), float("nan")]}[field]
        return json.dumps(dict(base, **{field: pick(values)})).encode()
    if kind == 6:  # missing fields
        dropped = pick(["prompt", "image", "record_id"])
        return json.dumps({key: value for key, value in base.items() if key != dropped}).encode()
    if kind == 7:  # bad paths
        path = pick(["../secret.png", str(outside), "img/link.png", "img/missing.png", "", "img", "a\u0000b.png",
                     "n" * 5000, "img/../../secret.png", "/", "//etc/passwd"])
        return json.dumps(dict(base, image=path)).encode()
    if kind == 8:  # broken images
        return json.dumps(dict(base, image=pick(["img/corrupt.png", "img/empty.png", "img/bomb.png"]))).encode()
    if kind == 9:  # bad image values
        value = pick([3, [1, 2], {"bytes": "not bytes"}, {"path": 7}, {"other": 1}, None, True, {"bytes": None}])
        return json.dumps(dict(base, image=value)).encode()
    if kind == 10:  # bad histograms
        value = pick([[1, 2], [0] * 9, [-1] + [1] * 8, ["a"] * 9, "[1]", {"a": 1}, [float("nan")] * 9, 3])
        return json.dumps(dict(base, histograms={"realism": value})).encode()
    if kind == 11:  # bad rationales and meta
        return json.dumps(pick([dict(base, rationales={"alignment": 3}), dict(base, rationales=[1]),
                                dict(base, meta=[1]), dict(base, meta="x"), dict(base, rationales={"beauty": "x"})])
                          ).encode()
    if kind == 12:  # bad per-field containers
        return json.dumps(dict(base, **{pick(["labels", "histograms", "rationales", "meta"]): pick([[1], 3, True])})
                          ).encode()
    return json.dumps(dict(base, labels={"alignment": float(rng.choice([0.5, 5.5, -3.0, 1e308]))})).encode()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzz_malformed_jsonl_only_raises_documented_errors(tmp_path, seed, caplog):
    """A few hundred randomly malformed rows, read as a JSONL file and as a saved dataset's records.jsonl: without
    `skip_bad_rows` a `DataValidationError` (a ValueError) names exactly the bad lines, each with a field; with it,
    exactly the good rows load and every bad line is kept and logged."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "root"
    _fuzz_files(root, tmp_path / "secret.png")
    lines, good_ids, bad_lines = [], [], []
    for index in range(150):
        if rng.random() < 0.4:
            record_id = f"good{index}"
            lines.append(json.dumps({
                "record_id": record_id, "prompt": f"prompt {index % 7}", "image": f"img/{index % 2}.png",
                "group_id": f"g{index % 7}", "labels": {"alignment": float(rng.uniform(1, 5))},
                "histograms": {"realism": [1 + int(rng.integers(3)), *(int(v) for v in rng.integers(0, 3, 8))]},
                "meta": {"index": index}}).encode())
            good_ids.append(record_id)
        else:
            lines.append(_bad_line(rng, index, tmp_path / "secret.png"))
            bad_lines.append(len(lines))
        if rng.random() < 0.05:
            lines.append(b"   ")  # blank lines are skipped but counted
    write_lines(root / "data.jsonl", lines)
    write_lines(root / "records.jsonl", lines)
    (root / "dataset.json").write_text(json.dumps({"format": "zreward-dataset", "format_version": 1,
                                                   "dimensions": list(FUZZ_DIMENSIONS),
                                                   "levels": [1.0 + 0.5 * k for k in range(9)]}))
    for name, read in [("data.jsonl", lambda **options: read_records(root / "data.jsonl", **options)),
                       ("records.jsonl", lambda **options: RewardDataset.load(root, **options))]:
        try:
            read()
        except DataValidationError as error:
            assert isinstance(error, ValueError)
            assert lines_of(error) == bad_lines, name
            assert all(bad.source == name and bad.unit == "line" and bad.field for bad in error.bad_rows)
            assert f"{name} line {min(bad_lines)}, field " in str(error)
        else:
            pytest.fail(f"{name}: the malformed rows were accepted")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zreward_diffusers.data"):
            dataset = read(skip_bad_rows=True)
        assert [record.record_id for record in dataset.records] == good_ids, name
        assert sorted(bad.index for bad in dataset.skipped) == bad_lines, name
        assert f"skipped {len(bad_lines)} bad rows" in caplog.text
