"""Checkpoints: save → load gives identical scores; PEFT adapters; refusal of pickle, missing and corrupt files."""

import json
import os

import pytest
import torch
from helpers import random_images, sharp_scorer

from zreward_diffusers import ZRewardLoss, ZRewardScorer
from zreward_diffusers.checkpoint import CONFIG_NAME
from zreward_diffusers.saving import atomic_directory
from zreward_diffusers.testing import build_tiny_backbone, create_tiny_checkpoint, tiny_rubric

PROMPTS = ["two red circles on a blue background", "a yellow square"]


def test_save_load_round_trip_gives_identical_scores(family, tmp_path):
    loss_fn = ZRewardLoss(sharp_scorer(family), kappa=0.25, margin=0.8, normalize=True)
    images = random_images(2, 61, 83)
    loss_fn.reward(images, PROMPTS)  # populate running statistics
    loss_fn.save_pretrained(tmp_path / "ckpt")
    loaded = ZRewardLoss.from_pretrained(tmp_path / "ckpt")
    assert loaded.kappa == 0.25 and loaded.margin == 0.8 and loaded.normalize
    torch.testing.assert_close(loaded.running_mean, loss_fn.running_mean)
    assert int(loaded.num_batches_tracked) == int(loss_fn.num_batches_tracked)
    a, b = loss_fn.score(images, PROMPTS), loaded.score(images, PROMPTS)
    assert torch.equal(a.probs, b.probs)
    loss_fn.update_running_stats = loaded.update_running_stats = False
    assert torch.equal(loss_fn(images, PROMPTS), loaded(images, PROMPTS))
    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert config["family"] == family and config["rubric"]["levels"][0] == 1.0
    assert config["preprocessing"]["name"].endswith("ImageTransform")
    assert not list((tmp_path / "ckpt").glob("*.bin"))


def test_overrides_and_unknown_keyword(tmp_path):
    create_tiny_checkpoint(tmp_path / "tiny", "qwen2_vl")
    assert ZRewardLoss.from_pretrained(tmp_path / "tiny", kappa=1.5).kappa == 1.5
    with pytest.raises(TypeError, match="unexpected keyword"):
        ZRewardLoss.from_pretrained(tmp_path / "tiny", sharpness=2.0)


def test_torch_dtype_and_device(tmp_path):
    create_tiny_checkpoint(tmp_path / "tiny", "qwen2_vl")
    loss_fn = ZRewardLoss.from_pretrained(tmp_path / "tiny", torch_dtype=torch.bfloat16, device="cpu")
    assert next(loss_fn.parameters()).dtype == torch.bfloat16
    out = loss_fn.score(random_images(1, 56, 56), PROMPTS[:1])
    assert out.probs.dtype == torch.float32  # softmax in float32 whatever the backbone dtype
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(1, 4))


def test_peft_adapter_over_a_named_base_round_trips(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_backbone("qwen2_vl", seed=0)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    loss_fn = ZRewardLoss(ZRewardScorer(lora, processor, tiny_rubric("qwen2_vl")))
    loss_fn.save_pretrained(tmp_path / "adapter", base_model=str(tmp_path / "base"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    loaded = ZRewardLoss.from_pretrained(tmp_path / "adapter")
    images = random_images(2, 56, 56)
    assert torch.equal(loss_fn.score(images, PROMPTS).probs, loaded.score(images, PROMPTS).probs)
    # and the adapter changes the scores relative to its base
    base = ZRewardLoss(ZRewardScorer(*build_tiny_backbone("qwen2_vl", seed=0), tiny_rubric("qwen2_vl")))
    assert not torch.allclose(base.score(images, PROMPTS).probs, loaded.score(images, PROMPTS).probs)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        ZRewardLoss.from_pretrained(tmp_path)
    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle files .* and no model"):
        ZRewardLoss.from_pretrained(tmp_path / "ckpt")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="not a Z-Reward checkpoint"):
        ZRewardLoss.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither an existing directory nor a hub id"):
        ZRewardLoss.from_pretrained(tmp_path / "does" / "not" / "exist")
    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl")
    config_path = tmp_path / "ckpt" / CONFIG_NAME
    good = config_path.read_text()
    config_path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        ZRewardLoss.from_pretrained(tmp_path / "ckpt")
    config_path.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "rubric"}))
    with pytest.raises(ValueError, match="lacks the field 'rubric'"):
        ZRewardLoss.from_pretrained(tmp_path / "ckpt")
    config_path.write_text(good)
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ZRewardLoss.from_pretrained(tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(ValueError, match="no model\\*.safetensors"):
        ZRewardLoss.from_pretrained(tmp_path / "ckpt")


def test_newer_format_version_is_refused(tmp_path):
    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl")
    path = tmp_path / "ckpt" / CONFIG_NAME
    path.write_text(json.dumps(dict(json.loads(path.read_text()), format_version=99)))
    with pytest.raises(ValueError, match="upgrade"):
        ZRewardLoss.from_pretrained(tmp_path / "ckpt")


def test_save_is_atomic(tmp_path):
    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "ckpt") as tmp:
        (tmp / "partial.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    assert before == after
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind


def test_a_save_killed_between_its_renames_loads_the_new_checkpoint(tmp_path, monkeypatch):
    """A crash right after `checkpoint -> old` left no checkpoint under its name; loading now recovers the newest
    complete state (the finished staging folder) and says so."""
    import zreward_diffusers.saving as saving

    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl", seed=0)
    calls, replace = [], os.replace

    def killed_at_the_second_rename(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here: nothing after this line of the save runs
        replace(source, target)

    monkeypatch.setattr(saving.os, "replace", killed_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl", seed=1)
    monkeypatch.setattr(saving.os, "replace", replace)
    assert not (tmp_path / "ckpt").exists()
    loaded = ZRewardLoss.from_pretrained(tmp_path / "ckpt")
    create_tiny_checkpoint(tmp_path / "fresh", "qwen2_vl", seed=1)
    expected = ZRewardLoss.from_pretrained(tmp_path / "fresh")
    images = random_images(1, 56, 56)
    torch.testing.assert_close(loaded.score(images, PROMPTS[:1]).probs, expected.score(images, PROMPTS[:1]).probs,
                               atol=0, rtol=0)


def test_trust_remote_code_is_off_by_default(tmp_path, monkeypatch):
    import transformers

    seen = {}
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl")
    ZRewardLoss.from_pretrained(tmp_path / "ckpt")
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_hub_ids_download_only_safe_files(tmp_path, monkeypatch):
    import huggingface_hub

    create_tiny_checkpoint(tmp_path / "ckpt", "qwen2_vl")
    calls = {}

    def fake_snapshot_download(repo_id, revision=None, token=None, allow_patterns=None):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(tmp_path / "ckpt")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loss_fn = ZRewardLoss.from_pretrained("some-org/zreward-student", revision="v1")
    assert calls["repo_id"] == "some-org/zreward-student" and calls["revision"] == "v1"
    assert not any(pattern.endswith((".bin", ".pt", ".pth", ".ckpt", "*")) for pattern in calls["allow_patterns"])
    assert loss_fn.score(random_images(1, 56, 56), PROMPTS[:1]).probs.shape == (1, 4, 9)


def test_push_to_hub_uploads_a_loadable_checkpoint(tmp_path, monkeypatch):
    import fnmatch
    import shutil

    import huggingface_hub

    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            assert repo_id == "me/my-reward" and exist_ok

        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns=()):
            # huggingface_hub matches `ignore_patterns` with fnmatch on paths relative to the folder
            shutil.copytree(folder_path, uploaded, ignore=lambda _, names: [
                name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns)])
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    loss_fn = ZRewardLoss(sharp_scorer("qwen2_vl"))
    assert loss_fn.push_to_hub("me/my-reward") == "commit"
    assert not any(path.name.startswith(".") for path in uploaded.iterdir())  # the save marker stays local
    images = random_images(1, 56, 56)
    torch.testing.assert_close(ZRewardLoss.from_pretrained(uploaded).score(images, PROMPTS[:1]).probs,
                               loss_fn.score(images, PROMPTS[:1]).probs, atol=0, rtol=0)
