"""ZRewardScorer on every supported family, with tiny real architectures built from config."""

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from helpers import random_images, sharp_scorer
from PIL import Image

from zreward_diffusers import Rubric, ZRewardScorer
from zreward_diffusers.testing import build_tiny_backbone

PROMPTS = ["two red circles on a blue background", "a yellow square", "three white stars on black"]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] float images → uint8 PIL, as a diffusers pipeline's output_type='pil' does."""
    arrays = ((images.detach() + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


def test_distributions_are_normalised_and_moments_in_range(family):
    scorer = sharp_scorer(family)
    out = scorer((random_images(3, 61, 83) + 1) / 2, PROMPTS)
    assert out.probs.shape == (3, 4, 9) and out.expected.shape == (3, 4) and out.reward.shape == (3,)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(3, 4))
    assert (out.expected >= 1.0).all() and (out.expected <= 5.0).all()
    assert (out.std >= 0).all() and (out.std <= 2.0).all()
    assert (out.reward >= 0).all() and (out.reward <= 1).all()
    assert ((out.score_token_mass > 0) & (out.score_token_mass <= 1)).all()
    # the sharpened head makes the distributions far from uniform (entropy of uniform over 9 = 2.197 nats)
    assert out.entropy.mean() < 2.0
    # the moments recomputed in float64 from the score tokens' raw logits: scipy's softmax, then Σ p v, Σ p (v − μ)²
    # and −Σ p log p over the 9 levels 1, 1.5, ..., 5
    assert out.levels == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    levels = np.linspace(1.0, 5.0, 9)
    probs = scipy.special.softmax(out.logits.detach().double().numpy(), axis=-1)
    mean = probs @ levels
    np.testing.assert_allclose(out.probs.detach().numpy(), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.expected.detach().numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.std.detach().numpy(), np.sqrt((probs * (levels - mean[..., None]) ** 2).sum(-1)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.entropy.detach().numpy(), scipy.stats.entropy(probs, axis=-1), rtol=1e-4,
                               atol=1e-5)


def test_gradient_reaches_input_pixels(family):
    scorer = sharp_scorer(family)
    images = ((random_images(2, 61, 83) + 1) / 2).requires_grad_(True)
    scorer(images, PROMPTS[:2]).expected.sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in scorer.parameters())


def test_batch_equals_items_one_at_a_time(family):
    scorer = sharp_scorer(family)
    images = (random_images(3, 61, 83, seed=5) + 1) / 2
    batched = scorer(images, PROMPTS).probs
    single = torch.cat([scorer(images[i : i + 1], PROMPTS[i : i + 1]).probs for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_float_tensor_path_matches_pil_path(family):
    scorer = sharp_scorer(family)
    images = random_images(3, 61, 83, seed=7)
    tensor_scores = scorer((images + 1) / 2, PROMPTS)
    pil_scores = scorer.score_pil(to_pil(images), PROMPTS)
    assert (tensor_scores.expected - pil_scores.expected).abs().max() < 0.02
    # uint8 numpy arrays go through the same official path
    arrays = np.stack([np.asarray(im) for im in to_pil(images)])
    torch.testing.assert_close(scorer.score_pil(arrays, PROMPTS).expected, pil_scores.expected)


def test_token_inputs_equal_the_official_processor(family):
    """input_ids / attention mask / token types built for the tensor path equal the processor's on the real image."""
    scorer = sharp_scorer(family)
    images = random_images(1, 61, 83)
    text = scorer.build_text(PROMPTS[0], "realism")
    ours = scorer._encode_text(text, 61, 83)
    theirs = scorer.processor(text=[text], images=to_pil(images), return_tensors="pt", add_special_tokens=False)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key
    image_inputs = scorer.image_transform((images + 1) / 2)
    for key in image_inputs:
        assert image_inputs[key].shape == theirs[key].shape, key


def test_answer_position_is_read_after_the_answer_prefix(family):
    scorer = sharp_scorer(family)
    text = scorer.build_text("a red circle", "alignment")
    assert text.endswith(Rubric().answer_prefix)
    teacher_text = scorer.build_text("a red circle", "alignment", reasoning="I count one circle.")
    assert teacher_text.endswith("<think>\nI count one circle.\n</think>\nScore: ")


def test_teacher_mode_reads_after_reasoning_and_reasoning_changes_the_distribution(family):
    scorer = sharp_scorer(family)
    images = (random_images(1, 56, 56) + 1) / 2
    reasoning_a = [["the prompt asks for two circles; I count two"] * 4]
    reasoning_b = [["the colour is wrong and the image is blurry"] * 4]
    a = scorer(images, PROMPTS[:1], reasoning=reasoning_a)
    b = scorer(images, PROMPTS[:1], reasoning=reasoning_b)
    student = scorer(images, PROMPTS[:1])
    assert not torch.allclose(a.probs, b.probs) and not torch.allclose(a.probs, student.probs)
    with pytest.raises(ValueError, match="reasoning"):
        scorer(images, PROMPTS[:1], reasoning=[["only one"]])


def test_generate_then_read(family):
    scorer = sharp_scorer(family)
    torch.manual_seed(0)
    images = (random_images(2, 56, 56) + 1) / 2
    chains = scorer.generate_reasoning(images, PROMPTS[:2], dimensions=["alignment"], num_samples=3, max_new_tokens=8)
    assert len(chains) == 2 and all(len(c) == 1 and len(c[0]) == 3 for c in chains)
    assert all(isinstance(s, str) for c in chains for s in c[0])
    reasoning = [[chains[b][0][0]] for b in range(2)]
    out = scorer(images, PROMPTS[:2], dimensions=["alignment"], reasoning=reasoning)
    assert out.probs.shape == (2, 1, 9)
    pil_chains = scorer.generate_reasoning(to_pil(images * 2 - 1), PROMPTS[:2], dimensions=["realism"],
                                           max_new_tokens=4)
    assert len(pil_chains) == 2 and len(pil_chains[0][0]) == 1


def test_dimension_subset_and_unknown_dimension():
    scorer = sharp_scorer("qwen2_vl")
    images = (random_images(2, 56, 56) + 1) / 2
    full = scorer(images, PROMPTS[:2])
    subset = scorer(images, PROMPTS[:2], dimensions=["realism", "alignment"])
    torch.testing.assert_close(subset.probs[:, 0], full.probs[:, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(subset.probs[:, 1], full.probs[:, 0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown rubric dimension 'sharpness'"):
        scorer(images, PROMPTS[:2], dimensions=["sharpness"])


def test_gradient_checkpointing_gives_the_same_gradient():
    scorer = sharp_scorer("qwen2_vl")
    images = ((random_images(2, 56, 56) + 1) / 2).requires_grad_(True)
    scorer(images, PROMPTS[:2]).expected.sum().backward()
    reference = images.grad.clone()
    images.grad = None
    scorer.enable_gradient_checkpointing()
    try:
        layers = [m for m in scorer.model.modules() if getattr(m, "gradient_checkpointing", False)]
        assert layers and all(m.training for m in layers)
        assert not any(m.training for m in scorer.model.modules() if isinstance(m, torch.nn.Dropout))
        scorer(images, PROMPTS[:2]).expected.sum().backward()
    finally:
        scorer.disable_gradient_checkpointing()
    torch.testing.assert_close(images.grad, reference, atol=1e-6, rtol=1e-4)


def test_score_tokens_must_be_single_tokens():
    model, processor = build_tiny_backbone("qwen2_vl")
    with pytest.raises(ValueError, match="not a single token"):
        ZRewardScorer(model, processor, Rubric(score_tokens=tuple(f"{k}0" for k in range(1, 10))))


def test_to_records_is_json_ready():
    import json

    scorer = sharp_scorer("qwen2_vl")
    records = scorer((random_images(1, 56, 56) + 1) / 2, PROMPTS[:1]).to_records()
    record = json.loads(json.dumps(records[0]))
    assert set(record["dimensions"]) == set(Rubric().dimension_names)
    assert abs(sum(record["dimensions"]["realism"]["distribution"]) - 1) < 1e-4


def test_token_cache_is_bounded_and_gives_the_same_scores(monkeypatch):
    import zreward_diffusers.scorer as scorer_module

    scorer = sharp_scorer("qwen2_vl")
    images = (random_images(3, 56, 56) + 1) / 2
    reference = scorer(images, PROMPTS).probs
    monkeypatch.setattr(scorer_module, "TEXT_CACHE_SIZE", 5)
    scorer._text_cache.clear()
    again = scorer(images, PROMPTS).probs  # 12 rows through a 5-entry cache
    assert len(scorer._text_cache) == 5
    torch.testing.assert_close(again, reference, atol=0, rtol=0)
    scorer._text_cache.clear()
