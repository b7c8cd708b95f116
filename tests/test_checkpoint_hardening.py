"""Checkpoint loading refuses what it must not read: pickle files, weights other than those the loader reads,
missing or unexpected tensors, and `zreward_config.json` fields of the wrong type or value."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from zreward_diffusers import ZRewardLoss, ZRewardScorer
from zreward_diffusers.checkpoint import CONFIG_NAME
from zreward_diffusers.testing import build_tiny_backbone, create_tiny_checkpoint, tiny_rubric


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "tiny"
    create_tiny_checkpoint(path, "qwen2_vl")
    return path


@pytest.fixture(scope="module")
def adapter_checkpoint(tmp_path_factory):
    """A LoRA adapter checkpoint over a tiny base saved on disk: `(adapter directory, its LoRA tensor names)`."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("peft")
    model, processor = build_tiny_backbone("qwen2_vl", seed=0)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ZRewardLoss(ZRewardScorer(lora, processor, tiny_rubric("qwen2_vl"))).save_pretrained(
        root / "adapter", base_model=str(root / "base"))
    return root / "adapter"


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    return shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")


@pytest.fixture
def adapter(adapter_checkpoint, tmp_path):
    return shutil.copytree(adapter_checkpoint, tmp_path / "adapter")


@pytest.fixture
def no_pickle_reads(monkeypatch):
    """Fail the test if anything unpickles a file (transformers and peft both read pickles through torch.load)."""
    reads = []

    def spy(*args, **kwargs):
        reads.append(args[0] if args else kwargs.get("f"))
        raise AssertionError(f"a pickle file was parsed: {reads[-1]}")

    monkeypatch.setattr(torch, "load", spy)
    return reads


def rewrite_tensors(path, change):
    tensors = load_file(str(path))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------ pickle files
def test_peft_pickle_behind_a_shard_named_safetensors_is_never_read(adapter, no_pickle_reads):
    """Defect 10: `adapter_model*.safetensors` passed the check while peft read `adapter_model.bin`."""
    weights = adapter / "adapter_model.safetensors"
    shutil.copy(weights, adapter / "adapter_model.bin")  # what it holds does not matter: it must never be read
    weights.rename(adapter / "adapter_model-00001-of-00001.safetensors")
    with pytest.raises(ValueError, match=r"adapter_model\.bin") as error:
        ZRewardLoss.from_pretrained(adapter)
    assert "pickle" in str(error.value) and "adapter_model.safetensors" in str(error.value)
    assert no_pickle_reads == []


def test_pickle_next_to_valid_adapter_weights_is_refused(adapter, no_pickle_reads):
    shutil.copy(adapter / "adapter_model.safetensors", adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"pickle files \['adapter_model\.bin'\]"):
        ZRewardLoss.from_pretrained(adapter)
    assert no_pickle_reads == []


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "extra.pth", "state.ckpt", "x.pkl"])
def test_pickle_next_to_valid_full_weights_is_refused(ckpt, no_pickle_reads, name):
    (ckpt / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match=rf"pickle files \[{name!r}\]"):
        ZRewardLoss.from_pretrained(ckpt)
    assert no_pickle_reads == []


def test_config_json_cannot_point_transformers_at_a_pickle(ckpt, no_pickle_reads):
    """transformers honours `transformers_weights` in config.json (even `adapter_model.bin`, a pickle)."""
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(config, transformers_weights="weights.safetensors.bak")))
    with pytest.raises(ValueError, match=r"transformers_weights.*weights\.safetensors\.bak"):
        ZRewardLoss.from_pretrained(ckpt)
    (ckpt / "config.json").write_text(json.dumps(dict(config, transformers_weights="../model.safetensors")))
    with pytest.raises(ValueError, match=r"transformers_weights"):
        ZRewardLoss.from_pretrained(ckpt)
    # A named safetensors file is what transformers reads, so it is the one checked.
    shutil.move(ckpt / "model.safetensors", ckpt / "weights.safetensors")
    (ckpt / "config.json").write_text(json.dumps(dict(config, transformers_weights="weights.safetensors")))
    assert ZRewardLoss.from_pretrained(ckpt).score(torch.rand(1, 3, 56, 56), ["a"]).probs.shape == (1, 4, 9)
    assert no_pickle_reads == []


# ------------------------------------------------------------------------------------------------ which files
def shard(ckpt):
    """Split model.safetensors into two shards and an index, as transformers writes a large model."""
    tensors = load_file(str(ckpt / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(ckpt / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
    (ckpt / "model.safetensors").unlink()
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_sharded_weights_are_checked_through_their_index(ckpt):
    index = shard(ckpt)
    assert ZRewardLoss.from_pretrained(ckpt).score(torch.rand(1, 3, 56, 56), ["a"]).probs.shape == (1, 4, 9)
    (ckpt / "model-00002-of-00002.safetensors").rename(ckpt / "model-00002-of-00002.safetensors.bak")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.*model-00002-of-00002\.safetensors"):
        ZRewardLoss.from_pretrained(ckpt)
    (ckpt / "model-00002-of-00002.safetensors.bak").rename(ckpt / "model-00002-of-00002.safetensors")
    escaping = dict(index, weight_map={key: f"../{file}" for key, file in index["weight_map"].items()})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(escaping))
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.*'\.\./model-0000"):
        ZRewardLoss.from_pretrained(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["not", "a", "dict"]}))
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json.*weight_map"):
        ZRewardLoss.from_pretrained(ckpt)


def test_only_the_files_the_loader_reads_are_checked(ckpt):
    """A stray unreadable `model-*.safetensors` beside `model.safetensors` is not read by transformers."""
    (ckpt / "model-old.safetensors").write_bytes(b"half a file")
    assert ZRewardLoss.from_pretrained(ckpt).score(torch.rand(1, 3, 56, 56), ["a"]).probs.shape == (1, 4, 9)
    (ckpt / "adapter_model.safetensors").write_bytes(b"not read either")
    assert ZRewardLoss.from_pretrained(ckpt).kappa == 0.0


def test_adapter_weights_must_be_named_exactly(adapter):
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model-00001-of-00001.safetensors")
    with pytest.raises(ValueError, match=r"no adapter_model\.safetensors"):
        ZRewardLoss.from_pretrained(adapter)


# ------------------------------------------------------------------------------------------------ tensors
def test_missing_or_unexpected_backbone_tensor_is_an_error(ckpt):
    """Defect 11: a missing tensor used to be randomly initialised, with only transformers' load report saying so."""
    weights = ckpt / "model.safetensors"
    original = weights.read_bytes()
    rewrite_tensors(weights, lambda t: t.pop("model.layers.0.self_attn.q_proj.weight"))
    with pytest.raises(ValueError, match=r"missing.*layers\.0\.self_attn\.q_proj\.weight") as error:
        ZRewardLoss.from_pretrained(ckpt)
    assert str(ckpt) in str(error.value)
    weights.write_bytes(original)
    rewrite_tensors(weights, lambda t: t.update(stray=torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected.*'stray'"):
        ZRewardLoss.from_pretrained(ckpt)


def test_missing_or_unexpected_adapter_tensor_is_an_error(adapter):
    weights = adapter / "adapter_model.safetensors"
    original = weights.read_bytes()
    dropped = sorted(load_file(str(weights)))[0]
    rewrite_tensors(weights, lambda t: t.pop(dropped))
    with pytest.raises(ValueError, match=rf"missing.*{dropped.rsplit('.', 1)[0]}"):
        ZRewardLoss.from_pretrained(adapter)
    weights.write_bytes(original)
    rewrite_tensors(weights, lambda t: t.update({"base_model.model.stray.lora_A.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match=r"unexpected.*stray"):
        ZRewardLoss.from_pretrained(adapter)


def test_clip_student_missing_tensor_and_bad_backbone_fields(tmp_path):
    from zreward_diffusers.clip_student import WEIGHTS_NAME, ClipStudentScorer

    ZRewardLoss(ClipStudentScorer.tiny()).save_pretrained(tmp_path / "clip")
    weights = tmp_path / "clip" / WEIGHTS_NAME
    dropped = sorted(load_file(str(weights)))[-1]
    rewrite_tensors(weights, lambda t: t.pop(dropped))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_NAME}.*missing.*{dropped}"):
        ZRewardLoss.from_pretrained(tmp_path / "clip")
    path = tmp_path / "clip" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["backbone"]["hidden"] = "128"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"backbone\.hidden") as error:
        ZRewardLoss.from_pretrained(tmp_path / "clip")
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------------------------ config fields
def _set(*keys):
    def change(config, value):
        target = config
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


BAD_CONFIGS = [
    ("format_version", _set("format_version"), "1"),
    ("format_version", _set("format_version"), 0),
    ("format_version", _set("format_version"), True),
    ("family", _set("family"), 3),
    ("backbone", _set("backbone"), "qwen2_vl"),
    ("backbone.type", _set("backbone", "type"), "lora"),
    ("rubric", _set("rubric"), ["alignment"]),
    ("rubric.dimensions", _set("rubric", "dimensions"), []),
    ("rubric.dimensions", _set("rubric", "dimensions"), [{"name": "", "question": "q"}]),
    ("rubric.dimensions", _set("rubric", "dimensions"), ["alignment"]),
    ("rubric.levels", _set("rubric", "levels"), ["1", "2"]),
    ("rubric.score_tokens", _set("rubric", "score_tokens"), [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("rubric.prompt_template", _set("rubric", "prompt_template"), 'Prompt: "{prompt}" in {style}'),
    ("rubric.prompt_template", _set("rubric", "prompt_template"), "Prompt: {prompt} {0}"),
    ("rubric.prompt_template", _set("rubric", "prompt_template"), "Prompt: {prompt.upper}"),
    ("rubric.prompt_template", _set("rubric", "prompt_template"), "Prompt: {prompt"),
    ("rubric.colour", _set("rubric", "colour"), "red"),
    ("rubric.weights", _set("rubric", "weights"), ["a", 1, 1, 1]),
    ("reward", _set("reward"), "mean"),
    ("reward.kappa", _set("reward", "kappa"), "0.1"),
    ("reward.kappa", _set("reward", "kappa"), math.nan),
    ("reward.kappa", _set("reward", "kappa"), -1.0),
    ("reward.margin", _set("reward", "margin"), "high"),
    ("reward.dimensions", _set("reward", "dimensions"), []),
    ("reward.dimensions", _set("reward", "dimensions"), ["beauty"]),
    ("reward.dimensions", _set("reward", "dimensions"), [""]),
    ("reward.normalize", _set("reward", "normalize"), "yes"),
    ("reward.momentum", _set("reward", "momentum"), 2.0),
    ("reward.reduction", _set("reward", "reduction"), "max"),
    ("reward.image_range", _set("reward", "image_range"), "0,255"),
    ("reward.running_mean", _set("reward", "running_mean"), [0.0]),
    ("reward.running_var", _set("reward", "running_var"), ["1"] * 4),
    ("reward.num_batches_tracked", _set("reward", "num_batches_tracked"), -1),
    ("reward.temperature", _set("reward", "temperature"), 2.0),
    ("reward.statistic", _set("reward", "statistic"), "median"),
    ("reward.floors", _set("reward", "floors"), {"beauty": 3.0}),
    ("reward.groupwise", _set("reward", "groupwise"), "yes"),
    ("quantize", _set("quantize"), "yes"),
]


@pytest.mark.parametrize(("field", "change", "value"), BAD_CONFIGS,
                         ids=[f"{field}={value!r}"[:40] for field, _, value in BAD_CONFIGS])
def test_every_config_field_is_checked_with_a_message_naming_file_and_field(ckpt, field, change, value):
    """Defect 11: wrong types used to fail with Python internals (TypeError, AttributeError, KeyError at scoring)."""
    path = ckpt / CONFIG_NAME
    config = json.loads(path.read_text())
    change(config, value)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        loss = ZRewardLoss.from_pretrained(ckpt)
        loss.score(torch.rand(1, 3, 56, 56), ["a"])  # a bad template would only fail here
    message = str(error.value)
    assert str(path) in message, message
    assert f"field '{field}" in message, message  # the field, or one of its entries ('rubric.weights[0]')


def test_peft_backbone_fields_are_checked(adapter):
    path = adapter / CONFIG_NAME
    good = json.loads(path.read_text())
    for backbone, field in [({"type": "peft"}, "backbone.base_model"),
                            ({"type": "peft", "base_model": 7}, "backbone.base_model"),
                            ({"type": "peft", "base_model": "x/y", "base_revision": 3}, "backbone.base_revision")]:
        path.write_text(json.dumps(dict(good, backbone=backbone)))
        with pytest.raises(ValueError, match=rf"{field}") as error:
            ZRewardLoss.from_pretrained(adapter)
        assert str(path) in str(error.value)


def _leaf_paths(value, path=()):
    """Every key and list position of a config, as paths of keys and indices."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from _leaf_paths(item, (*path, key))
    elif isinstance(value, list) and value:
        yield (*path, 0)
        yield from _leaf_paths(value[0], (*path, 0))


WEIRD_VALUES = [None, True, 0, -1, 1e308, math.inf, math.nan, "", "x", [], [1], {}, {"a": 1}, 10 ** 50,
                json.loads("[" * 40 + "]" * 40)]


def test_any_wrong_config_value_is_a_value_error_naming_the_file(ckpt):
    """Every field of zreward_config.json set to each of a set of wrong values: the load either works or raises a
    ValueError naming the file (no TypeError, KeyError, AttributeError, ...)."""
    from zreward_diffusers.checkpoint import read_config

    path = ckpt / CONFIG_NAME
    good = json.loads(path.read_text())
    loaded = 0
    for keys in _leaf_paths(good):
        for value in WEIRD_VALUES:
            config = json.loads(json.dumps(good))
            target = config
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
            path.write_text(json.dumps(config))
            try:
                read_config(ckpt)
            except ValueError as error:
                assert str(path) in str(error), (keys, value, str(error))
                continue
            except Exception as error:
                raise AssertionError(f"{keys} = {value!r}: {type(error).__name__}: {error}") from error
            loaded += 1
            if keys[0] == "preprocessing":  # a record of the transform, never read back: the processor defines it
                continue
            try:
                # two images of one prompt: a valid batch under every setting (groupwise=True compares them)
                ZRewardLoss.from_pretrained(ckpt).score(torch.rand(2, 3, 56, 56), ["a", "a"])
            except Exception as error:
                raise AssertionError(f"{keys} = {value!r} passed read_config, then {type(error).__name__}: "
                                     f"{error}") from error
    assert loaded > 0
