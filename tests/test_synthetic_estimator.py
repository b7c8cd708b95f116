"""The pixel-only scene estimator and the oracle as a judge of any image (`synthetic/estimator.py`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from zreward_diffusers.synthetic import (
    DIMENSIONS,
    PromptSpec,
    Scene,
    SyntheticWorld,
    all_prompt_specs,
    oracle_scores,
    perfect_scene,
    render,
    sample_prompt_spec,
)
from zreward_diffusers.synthetic.estimator import estimate_scene, judge, judge_batch, parse_prompt
from zreward_diffusers.synthetic.grammar import BACKGROUND_COLOURS, OBJECT_COLOURS


def _perfect(count: int, rng: np.random.Generator) -> tuple[list[PromptSpec], list[Scene]]:
    """`count` prompts and flawless scenes for them (no deviation, error or degradation)."""
    specs, scenes = [], []
    for _ in range(count):
        spec = sample_prompt_spec(rng, style_probability=0.0)
        specs.append(spec)
        scenes.append(perfect_scene(spec, rng))
    return specs, scenes


# ------------------------------------------------------------------------------------------------------ prompts
def test_parse_prompt_inverts_every_prompt_of_the_grammar():
    specs = all_prompt_specs(with_styles=True)
    assert len(specs) > 3000
    for spec in specs:
        assert parse_prompt(spec.text()) == spec


def test_parse_prompt_forgives_case_spaces_and_a_full_stop():
    spec = PromptSpec(3, "cyan", "star", "brown", "a minimal drawing of")
    assert parse_prompt("  A Minimal  Drawing of THREE cyan stars on a brown background. ") == spec
    assert parse_prompt("one red circle on a blue background") == PromptSpec(1, "red", "circle", "blue")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "two red circles",
        "two red circles on blue background",
        "a red circles on a blue background",  # plural with one
        "two red circle on a blue background",  # singular with two
        "twelve red circles on a blue background",
        "two magenta circles on a blue background",
        "two red hexagons on a blue background",
        "two red circles on a red background",  # objects coloured like the background
        "two red circles on a purple background",  # not a background colour
        "an oil painting of two red circles on a blue background",
        "two red circles on a blue background, trending",
    ],
)
def test_parse_prompt_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="`prompt`"):
        parse_prompt(text)


def test_parse_prompt_rejects_non_strings():
    with pytest.raises(ValueError, match="`prompt`"):
        parse_prompt(None)


# ------------------------------------------------------------------------------------------------ clean images
def test_clean_images_count_colour_shape_background_are_right():
    # Measured: 300 of 300 all four right here (599 of 600 with more samples; the miss reads four small circles
    # as squares); assert 97% for margin.
    rng = np.random.default_rng(0)
    specs, scenes = _perfect(300, rng)
    right = 0
    for scene in scenes:
        estimate = estimate_scene(render(scene, 56))
        right += (estimate.count, estimate.colour, estimate.shape, estimate.background) == (
            scene.count,
            scene.colour,
            scene.shape,
            scene.background,
        )
    assert right / len(scenes) >= 0.97


def test_clean_images_show_no_degradation_error_or_crop():
    rng = np.random.default_rng(1)
    _, scenes = _perfect(60, rng)
    for scene in scenes:
        estimate = estimate_scene(render(scene, 56))
        assert estimate.shadows == "consistent" and estimate.light == scene.light
        assert estimate.floating == 0 and estimate.cut_objects == 0 and estimate.crop == 0.0
        assert estimate.noise == 0.0 and estimate.compression == 0.0 and estimate.cast_strength == 0.0
        assert estimate.blur < 0.8


def test_physical_errors_are_detected():
    # Measured: 40 of 40 floating objects, wrong shadows and missing shadows found here (200 of 200 with random
    # lifts); assert 90%.
    rng = np.random.default_rng(2)
    _, scenes = _perfect(40, rng)
    floating = wrong = missing = 0
    for scene in scenes:
        lifted = copy.deepcopy(scene)
        lifted.objects[0].grounded = False
        lifted.objects[0].y -= 0.2
        floating += estimate_scene(render(lifted)).floating == 1
        flipped = copy.deepcopy(scene)
        flipped.shadows = "wrong"
        wrong += estimate_scene(render(flipped)).shadows == "wrong"
        unlit = copy.deepcopy(scene)
        unlit.shadows = "none"
        missing += estimate_scene(render(unlit)).shadows == "none"
    assert min(floating, wrong, missing) >= 0.9 * len(scenes)


def test_degradations_are_measured():
    rng = np.random.default_rng(3)
    spec = PromptSpec(2, "red", "circle", "blue")
    scene = perfect_scene(spec, rng)
    blurred, noisy, compressed, cast = (copy.deepcopy(scene) for _ in range(4))
    blurred.blur = 1.6
    noisy.noise, noisy.extra["noise_seed"] = 30.0, 5
    compressed.compression = 0.8
    cast.cast = (0.0, 50.0, 0.0)
    assert estimate_scene(render(blurred)).blur == pytest.approx(1.6, abs=0.4)
    assert estimate_scene(render(noisy)).noise == pytest.approx(30.0, abs=5.0)
    assert estimate_scene(render(compressed)).compression == pytest.approx(0.8, abs=0.25)
    estimate = estimate_scene(render(cast))
    assert estimate.cast_strength == pytest.approx(50 / 60, abs=0.15) and estimate.background == "blue"


@pytest.mark.parametrize("size", [32, 80, 128])
def test_other_sizes(size):
    rng = np.random.default_rng(size)
    _, scenes = _perfect(12, rng)
    right = 0
    for scene in scenes:
        estimate = estimate_scene(render(scene, size))
        right += (estimate.count, estimate.colour, estimate.background) == (
            scene.count,
            scene.colour,
            scene.background,
        )
    assert right >= 11


# ------------------------------------------------------------------------------------------------------- judge
def test_judge_scores_a_perfect_image_high_and_a_wrong_colour_lower_by_the_colour_penalty():
    # Measured: 39 of 40 perfect images score 5.0 on alignment (one reads four cyan circles as squares: 3.5), and
    # each of those 39 recoloured loses exactly the oracle's 1.5 colour penalty.
    rng = np.random.default_rng(4)
    specs, scenes = _perfect(40, rng)
    high = 0
    for spec, scene in zip(specs, scenes, strict=True):
        good = judge(render(scene), spec.text())
        assert set(good) == set(DIMENSIONS)
        if good["alignment"] < 4.5:
            continue
        high += 1
        recoloured = copy.deepcopy(scene)
        recoloured.colour = next(c for c in OBJECT_COLOURS if c not in (scene.colour, scene.background))
        bad = judge(render(recoloured), spec.text())
        assert good["alignment"] - bad["alignment"] == pytest.approx(1.5, abs=0.25)
    assert high >= 0.9 * len(scenes)


def test_judge_agrees_with_the_oracle_on_world_items():
    items = SyntheticWorld(seed=5).generate(40)
    gaps = np.array([[judge(item.image, item.prompt)[d] - item.oracle[d] for d in DIMENSIONS] for item in items])
    assert np.abs(gaps).mean() < 0.35  # measured 0.17 (all dimensions, these 40 items)


def test_judge_batch_and_determinism():
    items = SyntheticWorld(seed=6).generate(8)
    images = np.stack([item.image for item in items])
    prompts = [item.prompt for item in items]
    batch = judge_batch(images, prompts)
    assert set(batch) == set(DIMENSIONS) and all(v.shape == (8,) for v in batch.values())
    for i, item in enumerate(items):
        single = judge(item.image, item.prompt)
        assert all(batch[d][i] == single[d] for d in DIMENSIONS)
        assert estimate_scene(item.image).to_dict() == estimate_scene(item.image.copy()).to_dict()
    again = judge_batch(list(images), prompts)
    assert all(np.array_equal(batch[d], again[d]) for d in DIMENSIONS)
    same_prompt = judge_batch(images[:2], prompts[0])
    assert same_prompt["alignment"].shape == (2,)
    with pytest.raises(ValueError, match="`prompts`"):
        judge_batch(images, prompts[:3])


def test_estimated_scene_is_a_valid_scene_for_the_oracle():
    item = SyntheticWorld(seed=8).generate(1)[0]
    scene = estimate_scene(item.image)
    assert scene.count == len(scene.objects)
    assert scene.colour in OBJECT_COLOURS and scene.background in BACKGROUND_COLOURS
    assert scene.extra["estimated"] is True
    scores = oracle_scores(scene, item.spec)
    assert all(1.0 <= v <= 5.0 for v in scores.values())


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((56, 56, 3), dtype=np.float32),
        np.zeros((56, 56), dtype=np.uint8),
        np.zeros((56, 56, 4), dtype=np.uint8),
        np.zeros((31, 56, 3), dtype=np.uint8),
        [[0, 0, 0]],
    ],
)
def test_bad_images_are_rejected(image):
    with pytest.raises(ValueError, match="`image`"):
        estimate_scene(image)


@pytest.mark.parametrize("fill", [0, 128, 255])
def test_blank_images_do_not_crash(fill):
    scene = estimate_scene(np.full((56, 56, 3), fill, dtype=np.uint8))
    assert scene.count == 0
    judge(np.full((64, 48, 3), fill, dtype=np.uint8), "a red circle on a blue background")
