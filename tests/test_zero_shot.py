"""Any VLM on day one: `ZRewardLoss.from_pretrained` on a plain transformers VLM directory (saved with
transformers' own `save_pretrained`, no `zreward_config.json`) reads it zero-shot with the default rubric."""

import logging

import pytest
import torch
from helpers import random_images

from zreward_diffusers import ZRewardLoss, ZRewardScorer
from zreward_diffusers.rubric import Rubric
from zreward_diffusers.testing import TINY_FAMILIES, build_tiny_backbone

PROMPTS = ["two red circles on a blue background", "a yellow square"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_plain_vlm_loads_zero_shot_warns_and_scores_like_the_scorer(family, tmp_path, caplog):
    model, processor = build_tiny_backbone(family, seed=0)
    model.save_pretrained(tmp_path)  # transformers' own files only: config.json, model.safetensors, ...
    processor.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="zreward_diffusers.loss"):
        loss_fn = ZRewardLoss.from_pretrained(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "zero-shot" in r.getMessage()]
    assert len(warnings) == 1 and f"plain {model.config.model_type} checkpoint" in warnings[0]
    assert loss_fn.rubric == Rubric()
    # the reported mass is the scorer's own on the blank image, read independently here
    reference = ZRewardScorer(model.eval(), processor, Rubric())
    mass = reference(torch.full((1, 3, 56, 56), 0.5), ["a photo"]).score_token_mass.mean()
    assert f"{float(mass):.3f} of its next-token probability" in warnings[0]
    images = random_images(2, 56, 56)
    torch.testing.assert_close(loss_fn.score(images, PROMPTS).probs, reference(images.add(1).div(2), PROMPTS).probs)
    scorer = ZRewardScorer.from_pretrained(tmp_path)  # the scorer alone, read the same way
    unit = images.add(1).div(2)
    torch.testing.assert_close(scorer(unit, PROMPTS).probs, reference(unit, PROMPTS).probs)
    images.requires_grad_()
    loss_fn(images, PROMPTS).backward()
    assert images.grad.abs().sum() > 0


def test_a_directory_without_any_config_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a Z-Reward checkpoint"):
        ZRewardLoss.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": []}')
    with pytest.raises(ValueError, match="model_type"):
        ZRewardLoss.from_pretrained(tmp_path)
