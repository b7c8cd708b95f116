"""Attribution maps: each dimension's gradient against central finite differences (float64, no 8-bit rounding),
and the figure."""

import pytest
import torch

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.attribution import attribution_figure, attribution_maps
from zreward_diffusers.testing import build_tiny_scorer

PROMPTS = ["a red circle", "two blue stars"]


@pytest.fixture(scope="module")
def loss_fn():
    scorer = build_tiny_scorer("qwen2_vl", seed=1).to(torch.float64)
    scorer.quantize = False  # the straight-through 8-bit rounding has no finite-difference counterpart
    return ZRewardLoss(scorer)


def expected_scores(loss_fn, images):
    with torch.no_grad():
        return loss_fn.scorer(images, PROMPTS).expected


def test_maps_are_the_gradients_of_each_expected_score(loss_fn):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 40, 48, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    attribution = attribution_maps(loss_fn, images, PROMPTS)
    assert attribution.gradients.shape == (2, 4, 3, 40, 48) and attribution.maps.shape == (2, 4, 40, 48)
    assert attribution.dimensions == tuple(loss_fn.dimensions)
    eps = 1e-3  # the preprocessing computes in float32: a smaller step drowns in its rounding
    for _ in range(2):
        direction = torch.randn(images.shape, generator=generator, dtype=torch.float64)
        slope = (expected_scores(loss_fn, images + eps * direction)
                 - expected_scores(loss_fn, images - eps * direction)) / (2 * eps)  # (B, D)
        predicted = (attribution.gradients * direction[:, None]).flatten(2).sum(-1)
        torch.testing.assert_close(predicted, slope, rtol=1e-3, atol=1e-7)
    # each image's map is its own gradient: perturbing image 1 does not move image 0's score
    bump = torch.zeros_like(images)
    bump[1] = 1e-3
    torch.testing.assert_close(expected_scores(loss_fn, images + bump)[0], expected_scores(loss_fn, images)[0])


def test_maps_leave_no_gradient_and_check_their_input(loss_fn):
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    weight = next(loss_fn.scorer.model.parameters())
    weight.requires_grad_(True)  # a trainable weight would collect a .grad from a plain backward
    try:
        attribution_maps(loss_fn, images, PROMPTS, dimensions=["realism"])
        assert images.grad is None and weight.grad is None
    finally:
        weight.requires_grad_(False)
    with pytest.raises(ValueError, match="images"):
        attribution_maps(loss_fn, images * 4, PROMPTS)
    with pytest.raises(ValueError, match="prompts"):
        attribution_maps(loss_fn, images, PROMPTS[:1])


def test_figure_is_written(loss_fn, tmp_path):
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    attribution = attribution_maps(loss_fn, images, PROMPTS)
    path = attribution_figure(images, attribution, PROMPTS, tmp_path / "maps.png", title="where the reward looks")
    from PIL import Image

    with Image.open(path) as figure:
        width, height = figure.size
    assert width > height > 100  # two rows, five columns
