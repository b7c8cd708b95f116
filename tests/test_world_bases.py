"""The world's shipped models (`world/`, `recipes.world_bases`): each file is the one its manifest hashes, nothing
else is there, and each model loads and does what the manifest says it was measured doing."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

WORLD = Path(__file__).resolve().parents[1] / "world"
MANIFEST = json.loads((WORLD / "manifest.json").read_text())
MODELS = MANIFEST["models"]


def test_the_manifest_names_the_shipped_models_with_their_commands():
    assert {"base_teacher", "base_student", "generator", "student_risd"} <= set(MODELS)
    for name, entry in MODELS.items():
        assert entry["command"].startswith(("python -m ", "make ")), name
        assert (WORLD.parent / entry["config"]).is_file(), (name, entry["config"])
        assert entry["commit"] and entry["date"], name
    total = sum(path.stat().st_size for path in WORLD.rglob("*") if path.is_file())
    assert total < 40 * 2**20, f"world/ holds {total / 2**20:.1f} MB"  # the budget


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_file_is_the_one_the_manifest_hashes(name):
    from zreward_diffusers.saving import MARKER_NAME

    folder = WORLD / name
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*")
               if path.is_file() and path.name != MARKER_NAME}
    assert present == set(MODELS[name]["files"]), "files added or missing since the manifest was written"
    for relative, digest in MODELS[name]["files"].items():
        assert hashlib.sha256((folder / relative).read_bytes()).hexdigest() == digest, relative


@pytest.mark.parametrize("name", [name for name in ("base_teacher", "base_student") if name in MODELS])
def test_the_bases_load_in_float32_and_name_colour_shape_and_count(name):
    """The fp16 weights load back as float32 and name the attributes of unseen images about as the manifest says
    (64 images here, against its 1,024 per set: within 0.15)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.pretrain_base import name_attributes
    from training.sequences import ConversationEncoder
    from zreward_diffusers.synthetic import SyntheticWorld
    from zreward_diffusers.synthetic.questions import true_answer

    model = AutoModelForImageTextToText.from_pretrained(WORLD / name).eval()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    items = [item for group in SyntheticWorld(0).groups(16, start=3_000_000) for item in group.items]
    images = torch.from_numpy(np.stack([item.image for item in items]))
    answers = name_attributes(model, ConversationEncoder(AutoProcessor.from_pretrained(WORLD / name), images),
                              list(range(len(items))), batch_size=64)
    measured = MODELS[name]["colour_shape_count_on_unseen_images"]
    for attribute in ("colour", "shape", "count"):
        accuracy = np.mean([answers[attribute][i] == true_answer(attribute, item.scene)
                            for i, item in enumerate(items)])
        shipped = min(sets[attribute] for sets in measured.values())
        assert accuracy >= shipped - 0.15, (attribute, accuracy, shipped)


def test_the_shipped_student_discriminates_as_its_manifest_says():
    """The quickstart's reward is a trained one: its held-out preference accuracy, recomputed from the shipped fp16
    weights, is the manifest's, well above chance (0.5)."""
    from recipes.world_bases import measure_student

    measured = measure_student(WORLD / "student_risd")
    shipped = MODELS["student_risd"]["held_out"]
    assert measured["preference_accuracy"] == pytest.approx(shipped["preference_accuracy"], abs=0.005)
    assert measured["per_dimension"] == pytest.approx(shipped["per_dimension"], abs=0.01)
    assert measured["preference_accuracy"] > 0.6


def test_the_shipped_generator_draws_what_its_prompts_ask_for_as_its_manifest_says():
    """The base generator follows its prompts: on 24 of the held-out prompts its samples show the background asked
    for, and the count and colour far more often than chance, as the manifest measured on 128 (within 0.2)."""
    from diffusers import StableDiffusionPipeline

    from pipelines.judging import generate, oracle_report
    from pipelines.reward_finetune import world_prompts

    pipe = StableDiffusionPipeline.from_pretrained(WORLD / "generator", use_safetensors=True)
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    prompts = world_prompts(512, 24, seed=0)[1]
    images = generate(pipe, prompts, list(range(len(prompts))), num_inference_steps=20, guidance_scale=3.0)
    hits = oracle_report(images, prompts)["hit_rates"]
    shipped = MODELS["generator"]["held_out_prompts"]["guidance_3"]["hit_rates"]
    for attribute in ("count", "colour", "background"):
        assert hits[attribute] >= shipped[attribute] - 0.2, (attribute, hits[attribute], shipped[attribute])
    assert hits["background"] > 0.8 and shipped["count"] > 0.4 and shipped["colour"] > 0.4  # chance: 1/4 to 1/8


def test_shipping_halves_the_weights_and_they_load_back_in_float32(tmp_path):
    """`recipes.world_bases.ship_vlm`: the copy's safetensors hold fp16 tensors (half the bytes), the config still
    says float32, and the model loads back in float32 with the original weights rounded to fp16."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from recipes.world_bases import file_hashes, ship_vlm
    from zreward_diffusers.testing import build_tiny_backbone

    model, processor = build_tiny_backbone("qwen2_vl", seed=0)
    model.save_pretrained(tmp_path / "source")
    processor.save_pretrained(tmp_path / "source")
    ship_vlm(tmp_path / "source", tmp_path / "shipped")
    with safe_open(tmp_path / "shipped" / "model.safetensors", framework="pt") as file:
        assert {file.get_tensor(key).dtype for key in file.keys()} == {torch.float16}
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "shipped")
    original = dict(model.named_parameters())
    for name, parameter in loaded.named_parameters():
        assert parameter.dtype == torch.float32
        torch.testing.assert_close(parameter, original[name].detach().half().float(), atol=0, rtol=0)
    hashes = file_hashes(tmp_path / "shipped")
    assert "model.safetensors" in hashes and not any(name.startswith(".") for name in hashes)
