"""ZRewardLoss: the reward shaping, the loss conventions and every bad-input case (DESIGN §3)."""

import math

import numpy as np
import pytest
import torch
from helpers import random_images, sharp_scorer

from zreward_diffusers import ZRewardLoss

PROMPTS = ["two red circles on a blue background", "a yellow square"]


@pytest.fixture
def loss_fn():
    return ZRewardLoss(sharp_scorer("qwen2_vl"))


def test_loss_is_minus_the_weighted_normalised_expectation(loss_fn):
    images = random_images(2, 56, 56)
    out = loss_fn.score(images, PROMPTS)
    expected_reward = ((out.expected - 1.0) / 4.0).mean(-1)  # uniform weights over 4 dimensions, levels 1..5
    torch.testing.assert_close(loss_fn.reward(images, PROMPTS), expected_reward)
    torch.testing.assert_close(loss_fn(images, PROMPTS), -expected_reward.mean())
    torch.testing.assert_close(out.reward, expected_reward)


def test_reductions_and_saturating_margin():
    scorer = sharp_scorer("qwen2_vl")
    images = random_images(2, 56, 56)
    reward = ZRewardLoss(scorer).reward(images, PROMPTS)
    torch.testing.assert_close(ZRewardLoss(scorer, reduction="none")(images, PROMPTS), -reward)
    torch.testing.assert_close(ZRewardLoss(scorer, reduction="sum")(images, PROMPTS), -reward.sum())
    margin = float(reward.max()) - 1e-3  # one image above the margin (zero loss), one below
    per_image = ZRewardLoss(scorer, reduction="none", margin=margin)(images, PROMPTS)
    by_hand = [margin - r if r < margin else 0.0 for r in reward.tolist()]  # ReFL's φ(r) = max(0, margin − r)
    torch.testing.assert_close(per_image, torch.tensor(by_hand), atol=1e-6, rtol=1e-6)
    assert (per_image == 0).sum() == 1


def test_kappa_subtracts_weighted_std():
    scorer = sharp_scorer("qwen2_vl")
    images = random_images(2, 56, 56)
    out = scorer((images + 1) / 2, PROMPTS)
    base = ZRewardLoss(scorer).reward(images, PROMPTS)
    averse = ZRewardLoss(scorer, kappa=0.5).reward(images, PROMPTS)
    torch.testing.assert_close(averse, base - 0.5 * (out.std / 4.0).mean(-1))


def test_dimension_weights_come_from_the_rubric():
    from dataclasses import replace

    from zreward_diffusers import ZRewardScorer

    base = sharp_scorer("qwen2_vl")
    weighted = ZRewardScorer(base.model, base.processor, replace(base.rubric, weights=(1, 0, 0, 3)))
    images = random_images(2, 56, 56)
    out = base((images + 1) / 2, PROMPTS)
    r = (out.expected - 1.0) / 4.0
    torch.testing.assert_close(ZRewardLoss(weighted).reward(images, PROMPTS), 0.25 * r[:, 0] + 0.75 * r[:, 3])


def test_running_normalisation_standardises_each_dimension():
    scorer = sharp_scorer("qwen2_vl")
    loss_fn = ZRewardLoss(scorer, normalize=True, momentum=0.5)
    images = random_images(4, 56, 56, seed=3)
    prompts = PROMPTS * 2
    expected = scorer((images + 1) / 2, prompts).expected
    reward = loss_fn.reward(images, prompts)  # first batch initialises the statistics from itself
    mean, var = expected.mean(0), expected.var(0, unbiased=False)
    torch.testing.assert_close(loss_fn.running_mean, mean)
    torch.testing.assert_close(loss_fn.running_var, var)
    torch.testing.assert_close(reward, ((expected - mean) / (var + 1e-6).sqrt()).mean(-1))
    loss_fn.reward(images[:2], prompts[:2])  # EMA update with momentum 0.5
    second = expected[:2]
    torch.testing.assert_close(loss_fn.running_mean, 0.5 * mean + 0.5 * second.mean(0))
    assert int(loss_fn.num_batches_tracked) == 2
    loss_fn.update_running_stats = False
    before = loss_fn.running_mean.clone()
    loss_fn.reward(images, prompts)
    torch.testing.assert_close(loss_fn.running_mean, before)


def test_zero_one_range_equals_minus_one_one_range():
    scorer = sharp_scorer("qwen2_vl")
    images = random_images(2, 61, 83)
    a = ZRewardLoss(scorer)(images, PROMPTS)
    b = ZRewardLoss(scorer, image_range="0,1")((images + 1) / 2, PROMPTS)
    torch.testing.assert_close(a, b)


def test_gradients_reach_images_and_parameters_stay_frozen(loss_fn):
    images = random_images(2, 61, 83).requires_grad_(True)
    loss_fn(images, PROMPTS).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss_fn.parameters())
    assert not loss_fn.training and not loss_fn.scorer.model.training
    loss_fn.train()  # a training loop calling .train() on everything must not turn on dropout in the reward
    assert not loss_fn.scorer.model.training


def test_to_dtype_float64_gives_the_same_scores(loss_fn):
    import copy

    images = random_images(2, 56, 56)
    reference = loss_fn.score(images, PROMPTS).expected
    double = copy.deepcopy(loss_fn).to(torch.float64)
    assert next(double.parameters()).dtype == torch.float64
    scores = double.score(images.double(), PROMPTS).expected
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores.float(), reference, atol=1e-4, rtol=0)


def test_pil_and_uint8_inputs_go_through_score(loss_fn):
    images = random_images(2, 56, 56)
    arrays = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = loss_fn.score(arrays, PROMPTS)
    assert (out.expected - loss_fn.score(images, PROMPTS).expected).abs().max() < 0.02


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make_images, prompts, error, match",
    [
        (lambda: random_images(2, 56, 56).index_fill(2, torch.tensor([3]), math.nan), PROMPTS, ValueError, "NaN or"),
        (lambda: random_images(2, 56, 56).index_fill(3, torch.tensor([0]), math.inf), PROMPTS, ValueError, "NaN or"),
        (lambda: random_images(2, 56, 56)[0], PROMPTS, ValueError, "rank 4"),
        (lambda: random_images(2, 56, 56)[:, :1], PROMPTS, ValueError, "3 channels"),
        (lambda: random_images(2, 56, 56).repeat(1, 4, 1, 1)[:, :4], PROMPTS, ValueError, "3 channels"),
        (lambda: (random_images(2, 56, 56) + 1) * 127.5, PROMPTS, ValueError, "0..255"),
        (lambda: random_images(2, 56, 56) - 3, PROMPTS, ValueError, r"must lie in \[-1, 1\]"),
        (lambda: random_images(2, 56, 56), PROMPTS[:1], ValueError, "`prompts` has 1 entries but `images` has batch"),
        (lambda: random_images(2, 56, 56), [], ValueError, "`prompts` is empty"),
        (lambda: random_images(2, 56, 56), "one prompt", TypeError, "single string"),
        (lambda: random_images(2, 56, 56), [1, 2], TypeError, r"`prompts\[0\]` must be a string, got int"),
        (lambda: random_images(0, 56, 56), [], ValueError, "empty batch"),
        (lambda: torch.zeros(2, 3, 56, 56, dtype=torch.uint8), PROMPTS, TypeError, "float tensor"),
        (lambda: [[0.0]], PROMPTS, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_raises_a_clear_error(loss_fn, make_images, prompts, error, match):
    with pytest.raises(error, match=match):
        loss_fn(make_images(), prompts)


def test_bad_pil_path_inputs(loss_fn):
    with pytest.raises(TypeError, match="uint8"):
        loss_fn.score(np.zeros((56, 56, 3), dtype=np.float32), PROMPTS[:1])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        loss_fn.score(np.zeros((56, 56, 4), dtype=np.uint8), PROMPTS[:1])
    with pytest.raises(ValueError, match="`prompts` has 2 entries"):
        loss_fn.score(np.zeros((56, 56, 3), dtype=np.uint8), PROMPTS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_range="0,255"), "image_range"),
        (dict(reduction="avg"), "reduction"),
        (dict(kappa=-1.0), "kappa"),
        (dict(momentum=0.0), "momentum"),
        (dict(dimensions=["colour"]), "unknown rubric dimension"),
    ],
)
def test_bad_loss_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZRewardLoss(sharp_scorer("qwen2_vl"), **kwargs)
