"""Shared helpers of the tests: sharpened tiny scorers and smooth random images."""

import functools

import torch

from zreward_diffusers.testing import build_tiny_scorer


@functools.cache
def sharp_scorer(family: str):
    """A tiny scorer whose score-token logits are scaled up, so its distributions are peaked and react to pixels.

    A randomly initialised tiny model gives near-uniform distributions, against which equality tests would be
    weak; scaling the score rows of the output head makes every comparison below sensitive.
    """
    scorer = build_tiny_scorer(family, seed=0)
    head = scorer.model.get_output_embeddings()
    with torch.no_grad():
        # Qwen2-VL ties nothing here; Gemma 3 ties the head to the input embeddings, so scale a copy.
        weight = head.weight.detach().clone()
        weight[scorer.score_token_ids] *= 40.0
        head.weight = torch.nn.Parameter(weight, requires_grad=False)
    return scorer


def random_images(batch_size: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: low-resolution noise upsampled, like decoded latents."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 3, max(2, height // 8), max(2, width // 8), generator=generator)
    up = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return up * 2 - 1
