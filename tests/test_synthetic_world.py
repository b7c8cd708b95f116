"""The synthetic world: grammar, renderer, oracle, annotator panel, rationales, questions, determinism."""

import dataclasses

import numpy as np
import pytest

from zreward_diffusers.synthetic import (
    DIMENSIONS,
    DeviationRates,
    PromptSpec,
    SyntheticWorld,
    WorldConfig,
    all_prompt_specs,
    describe,
    oracle_scores,
    perfect_scene,
    rationale,
    render,
    sample_scene,
)
from zreward_diffusers.synthetic.annotators import (
    AnnotatorPanel,
    consensus_labels,
    histograms,
    panel_preferences,
    round_to_half,
)
from zreward_diffusers.synthetic.grammar import PALETTE, SHAPES
from zreward_diffusers.synthetic.scene import GROUND_LINE

SPEC = PromptSpec(2, "red", "circle", "blue")


def test_grammar_has_hundreds_of_distinct_prompts():
    texts = {spec.text() for spec in all_prompt_specs()}
    assert len(texts) >= 500
    assert len({spec.text() for spec in all_prompt_specs(with_styles=True)}) > 5 * 500
    text = PromptSpec(1, "yellow", "star", "black", "a photo of").text()
    assert text == "a photo of a yellow star on a black background"
    assert PromptSpec(3, "green", "square", "white").text() == "three green squares on a white background"


def test_perfect_scene_follows_the_prompt_and_scores_top_marks():
    scene = perfect_scene(SPEC, np.random.default_rng(0))
    assert (scene.count, scene.colour, scene.shape, scene.background) == (2, "red", "circle", "blue")
    assert scene.shadows == "consistent" and scene.floating == 0 and scene.blur == 0 and not scene.overlap
    scores = oracle_scores(scene, SPEC)
    assert scores["alignment"] == 5.0 and scores["realism"] == 5.0 and scores["physical_plausibility"] == 5.0
    assert scores["aesthetics"] == pytest.approx(4.9)


def test_oracle_penalties_follow_the_documented_rules():
    rng = np.random.default_rng(0)
    scene = perfect_scene(SPEC, rng)
    scene.colour, scene.count = "green", 3  # wrong colour (-1.5) and count off by one (-1.0)
    assert oracle_scores(scene, SPEC)["alignment"] == pytest.approx(2.5)
    scene = perfect_scene(SPEC, rng)
    scene.shadows = "wrong"
    scene.objects[0].grounded = False  # one floating object (-1.0) and shadows towards the sun (-1.75)
    assert oracle_scores(scene, SPEC)["physical_plausibility"] == pytest.approx(2.25)
    scene = perfect_scene(SPEC, rng)
    scene.blur, scene.noise = 2.0, 20.0  # -0.9 * 2 - 0.045 * 20
    assert oracle_scores(scene, SPEC)["realism"] == pytest.approx(2.3)
    scene.noise = 200.0
    assert oracle_scores(scene, SPEC)["realism"] == 1.0  # clipped to the scale


def test_renderer_draws_what_the_scene_says():
    scene = perfect_scene(SPEC, np.random.default_rng(1))
    image = render(scene, size=112).astype(int)
    assert image.shape == (112, 112, 3)
    assert np.abs(image[30, 56] - np.array(PALETTE["blue"])).max() <= 2  # sky is the background colour
    for obj in scene.objects:  # object centres are red
        y, x = int(obj.y * 112), int(obj.x * 112)
        assert np.abs(image[y, x] - np.array(PALETTE["red"])).max() <= 40
    ground_row = int((GROUND_LINE + 0.1) * 112)
    assert image[ground_row].mean() < image[30].mean()  # the ground is darker than the sky
    sun_x = 11 if scene.light == "left" else 100
    assert image[11, sun_x].min() > 140  # the pale sun disk


def test_degradations_change_the_pixels_in_the_expected_direction():
    rng = np.random.default_rng(2)
    clean = perfect_scene(SPEC, rng)
    blurred = perfect_scene(SPEC, np.random.default_rng(2))
    blurred.blur = 2.0
    noisy = perfect_scene(SPEC, np.random.default_rng(2))
    noisy.noise, noisy.extra["noise_seed"] = 30.0, 5
    sharpness = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()  # noqa: E731
    assert sharpness(render(blurred)) < sharpness(render(clean)) < sharpness(render(noisy))


def test_rendering_is_deterministic_and_fast_enough_in_bulk():
    rng = np.random.default_rng(3)
    scenes = [sample_scene(SPEC, rng) for _ in range(50)]
    first = [render(s) for s in scenes]
    assert all(np.array_equal(a, render(s)) for a, s in zip(first, scenes, strict=True))
    with pytest.raises(ValueError, match="size"):
        render(scenes[0], size=8)


def test_panel_rounding_histograms_and_adjustment():
    assert round_to_half(np.array([0.2, 1.24, 1.26, 3.74, 9.0])).tolist() == [1.0, 1.0, 1.5, 3.5, 5.0]
    ratings = np.array([[[3.0], [3.5], [3.0]], [[4.0], [4.0], [3.5]]])  # (N=2, A=3, D=1)
    counts = histograms(ratings)
    assert counts.shape == (2, 1, 9) and counts[0, 0, 4] == 2 and counts[0, 0, 5] == 1 and counts.sum() == 6
    # means 3.17 and 3.83 round to 3.0 and 4.0: no adjustment needed
    assert consensus_labels(ratings, 0.4)[:, 0].tolist() == [3.0, 4.0]
    tied = np.array([[[3.0], [3.0], [3.5]], [[3.5], [3.5], [3.5]]])  # means 3.17 / 3.5 -> 3.0 / 3.5
    close = np.array([[[3.5], [3.5], [3.0]], [[3.5], [3.5], [3.5]]])  # means 3.33 / 3.5 -> both 3.5, gap < 0.4
    wide = np.array([[[3.0], [3.5], [3.0]], [[3.5], [3.5], [4.0]]])  # means 3.17 / 3.67 -> 3.0 / 3.5, fine
    assert consensus_labels(tied, 0.4)[:, 0].tolist() == [3.0, 3.5]
    assert consensus_labels(close, 0.4)[:, 0].tolist() == [3.5, 3.5]  # ties stay when the panel is close
    assert consensus_labels(wide, 0.4)[:, 0].tolist() == [3.0, 3.5]
    spread = np.array([[[3.0], [3.0], [3.5]], [[3.0], [3.5], [3.5]], [[4.0], [3.5], [3.5]]])
    # means 3.17, 3.33, 3.67: labels 3.0, 3.5, 3.5; 3.67 - 3.17 >= 0.4 but only neighbours are compared;
    # 3.67 - 3.33 < 0.4, so the top two stay tied
    assert consensus_labels(spread, 0.4)[:, 0].tolist() == [3.0, 3.5, 3.5]
    forced = np.array([[[3.0], [3.0], [3.0]], [[3.5], [3.0], [3.0]], [[3.5], [3.5], [3.5]]])
    # means 3.0, 3.17, 3.5: the jump of 0.33 from the second to the third is below the margin, labels stay
    assert consensus_labels(forced, 0.3)[:, 0].tolist() == [3.0, 3.0, 3.5]


def test_panel_preferences_are_majority_votes_with_ties():
    ratings = np.array([[[4.0], [3.0], [3.0]], [[3.0], [3.0], [4.0]], [[2.0], [2.0], [2.0]]])
    prefs = panel_preferences(ratings)
    assert prefs.shape == (3, 3, 2)
    assert prefs[0, 1, 0] == 0  # one vote each way and one tie: a tie
    assert prefs[0, 2, 0] == 1 and prefs[2, 0, 0] == -1
    assert (prefs[..., 0] == -prefs[..., 0].T).all()


def test_annotators_have_personal_bias_and_the_panel_agrees_with_the_oracle_on_average():
    panel = AnnotatorPanel(num_dimensions=4, seed=0)
    oracle = np.tile(np.linspace(1.5, 4.5, 40)[:, None], (1, 4))
    ratings = panel.rate(oracle, np.random.default_rng(0))
    assert ratings.shape == (40, 5, 4) and set(np.unique(ratings)) <= set(np.arange(1.0, 5.01, 0.5))
    assert np.abs(ratings.mean(axis=1) - oracle).mean() < 0.3
    assert np.corrcoef(ratings.mean(axis=1)[:, 0], oracle[:, 0])[0, 1] > 0.95
    assert not np.allclose(panel.bias[0], panel.bias[1])


def test_rationales_describe_before_they_judge_with_varied_wording():
    rng = np.random.default_rng(4)
    scene = perfect_scene(SPEC, rng)
    scene.count = 1
    text = rationale("alignment", scene, SPEC, rng)
    assert "two red circles" in text and "one red circle" in text and "count is wrong" in text
    texts = {rationale("alignment", scene, SPEC, np.random.default_rng(s)) for s in range(20)}
    assert len(texts) > 2
    scene.shadows = "wrong"
    assert "towards the sun" in rationale("physical_plausibility", scene, SPEC, rng)
    assert "Shadows fall to the" in describe(scene)
    with pytest.raises(ValueError, match="unknown rubric dimension"):
        rationale("sharpness", scene, SPEC, rng)


def test_world_groups_labels_and_determinism():
    world = SyntheticWorld(seed=0)
    items = world.generate(40)
    assert len(items) == 40 and len({i.group_id for i in items}) == 10
    for group in range(10):
        members = items[group * 4 : group * 4 + 4]
        assert len({m.prompt for m in members}) == 1
    for item in items:
        assert set(item.labels) == set(DIMENSIONS) and item.histograms.shape == (4, 9)
        assert (item.histograms.sum(axis=1) == 5).all()
        assert all(1.0 <= v <= 5.0 and v * 2 == int(v * 2) for v in item.labels.values())
    again = SyntheticWorld(seed=0).generate(40)
    assert all(np.array_equal(a.image, b.image) and a.labels == b.labels and a.rationales == b.rationales
               for a, b in zip(items, again, strict=True))
    # a prefix of a bigger run equals a smaller run; another seed differs
    assert np.array_equal(SyntheticWorld(seed=0).generate(10)[7].image, items[7].image)
    other = SyntheticWorld(seed=1).generate(40)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(items, other, strict=True))
    with pytest.raises(ValueError, match="`n`"):
        world.generate(0)


def test_labels_have_spread_within_groups_and_ties_happen():
    world = SyntheticWorld(seed=5)
    groups = world.groups(200)
    spreads = [np.ptp([i.labels["alignment"] for i in g.items]) for g in groups]
    assert np.mean(np.array(spreads) > 0) > 0.6
    overall = np.concatenate([g.preferences[..., -1][np.triu_indices(4, 1)] for g in groups])
    assert 0.02 < np.mean(overall == 0) < 0.5


def test_no_deviation_rates_give_perfect_scenes():
    none = DeviationRates(**{name: 0.0 for name in DeviationRates.__dataclass_fields__})
    rng = np.random.default_rng(6)
    for _ in range(20):
        assert oracle_scores(sample_scene(SPEC, rng, none), SPEC)["alignment"] == 5.0


def test_ceiling_oracle_beats_a_single_annotator_on_held_out_groups():
    from zreward_diffusers.synthetic.ceiling import human_ceiling

    report = human_ceiling(SyntheticWorld(seed=99).groups(150))
    for channel in [*DIMENSIONS, "overall"]:
        assert report[channel]["num_pairs"] > 500
        assert 0.5 < report[channel]["single_annotator"] < report[channel]["oracle"] <= 1.0


def test_contact_sheet_writes_a_png(tmp_path):
    from PIL import Image

    from zreward_diffusers.synthetic.contact_sheet import contact_sheet

    path = contact_sheet(SyntheticWorld(seed=0).generate(8), tmp_path / "sheet.png", columns=4)
    with Image.open(path) as image:
        assert image.width > 800 and image.height > 300


def test_ideal_observer_names_the_shape_from_pixels_only_when_the_shape_is_drawn():
    from benchmarks.base_models import ideal_observer_shape

    items = SyntheticWorld(0).generate(24)
    drawn = [item for item in items if item.scene.count and not item.scene.noise]  # noise is not redrawn
    assert len(drawn) > 12
    assert all(ideal_observer_shape(item.scene, item.image) == item.scene.shape for item in drawn)
    blank = np.zeros_like(items[0].image)  # nothing drawn: the nearest redrawing is not a function of the true shape
    scene = items[0].scene
    named = {ideal_observer_shape(dataclasses.replace(scene, shape=shape), blank) for shape in SHAPES}
    assert len(named) == 1


def test_questions_are_answered_from_the_true_scene():
    from zreward_diffusers.synthetic.questions import (
        EVAL_CANDIDATES,
        conversation,
        evaluated_question,
        is_clean,
        true_answer,
    )

    items = SyntheticWorld(seed=0).generate(64)
    for item in items:  # every evaluated answer is one of the candidates
        assert all(true_answer(name, item.scene) in candidates for name, candidates in EVAL_CANDIDATES.items())
    assert evaluated_question("colour") == "What colour are the objects?"
    assert true_answer("colour", items[0].scene) == items[0].scene.colour
    assert is_clean(perfect_scene(SPEC, np.random.default_rng(0)))
    assert not is_clean(dataclasses.replace(perfect_scene(SPEC, np.random.default_rng(0)), blur=1.0))
    # "Describe the image." gives the others away: asked alone; otherwise three distinct question types
    rng = np.random.default_rng(0)
    weights = {"colour": 1, "shape": 1, "count": 1, "describe": 1}
    lengths = set()
    for item in items:
        turns = conversation(item, weights, 3, rng)
        if turns[0][0] == "Describe the image.":
            assert turns == [("Describe the image.", describe(item.scene))]
        else:
            assert len({question for question, _ in turns}) == 3 and "Describe the image." not in dict(turns)
        lengths.add(len(turns))
    assert lengths == {1, 3}
    with pytest.raises(ValueError, match="unknown `task_weights` keys"):
        conversation(items[0], {"bogus": 1}, 2, rng)


def test_parallel_rendering_does_not_depend_on_the_workers():
    from zreward_diffusers.synthetic.parallel import render_world

    items = [item for group in SyntheticWorld(seed=0).groups(3, start=2) for item in group.items][:9]
    assert [item.record_id for item in render_world(0, 56, 2, 9, workers=1)] == [item.record_id for item in items]
    images, scenes = render_world(0, 56, 2, 9, workers=2, items=False)
    assert images.dtype == np.uint8 and np.array_equal(images, np.stack([item.image for item in items]))
    assert scenes == [item.scene for item in items]
    with pytest.raises(ValueError, match="must be a positive integer"):
        render_world(0, 56, 2, 9, workers=0)


def test_parallel_groups_equal_the_worlds_own():
    from zreward_diffusers.synthetic.parallel import render_groups

    config = WorldConfig(image_size=32, group_size=3)
    expected = SyntheticWorld(seed=4, config=config).groups(5, start=7)
    for workers in (1, 2):
        groups = render_groups(4, config, 5, start_group=7, workers=workers)
        assert [item.record_id for group in groups for item in group.items] == [
            item.record_id for group in expected for item in group.items]
        assert all(np.array_equal(a.image, b.image) for g, e in zip(groups, expected, strict=True)
                   for a, b in zip(g.items, e.items, strict=True))
        assert [len(group.items) for group in groups] == [3] * 5
