"""Checking and converting the images and prompts a reward is called with (docs/design.md, 'Public contract': errors).

Every check raises a `ValueError` or `TypeError` that names the argument and says what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# How far outside the declared range values may stray before we call it an error rather than VAE overshoot,
# as a fraction of the range's width: [-1, 1] accepts [-1.5, 1.5]; a 0..255 image given as [-1, 1] is refused.
RANGE_TOLERANCE = 0.25

IMAGE_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}


def check_image_range(image_range: str) -> tuple[float, float]:
    if image_range not in IMAGE_RANGES:
        raise ValueError(f"`image_range` must be one of {sorted(IMAGE_RANGES)}, got {image_range!r}")
    return IMAGE_RANGES[image_range]


def check_prompts(prompts, batch_size: int | None) -> list[str]:
    """`prompts` must be a non-empty list of strings, one per image."""
    if isinstance(prompts, str):
        raise TypeError("`prompts` must be a list of strings, one per image, got a single string")
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"`prompts` must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty: give one prompt per image")
    if batch_size is not None and len(prompts) != batch_size:
        raise ValueError(f"`prompts` has {len(prompts)} entries but `images` has batch size {batch_size}")
    return list(prompts)


def image_tensor_to_unit_range(images, image_range: str = "-1,1", clamp: bool = True) -> torch.Tensor:
    """Check a float image batch `(B, 3, H, W)` in `image_range` and map it to [0, 1], keeping autograd.

    Values a little outside the range (VAE overshoot) are clamped to it when `clamp` (as diffusers'
    `VaeImageProcessor.postprocess` and the uint8 official path do); values far outside raise.
    """
    low, high = check_image_range(image_range)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`images` must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"`images` must have rank 4 (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"`images` must have 3 channels in dim 1 (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("`images` is an empty batch")
    if not images.is_floating_point():
        raise TypeError(
            f"`images` must be a float tensor in [{low:g}, {high:g}], got dtype {images.dtype}; "
            "pass uint8 images to `score()` as PIL images or numpy arrays instead"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError("`images` contains NaN or Inf values")
    slack = RANGE_TOLERANCE * (high - low)
    found_low, found_high = float(images.detach().min()), float(images.detach().max())
    if found_low < low - slack or found_high > high + slack:
        hint = " (it looks like 0..255 pixel values)" if found_high > 2.0 else ""
        raise ValueError(
            f"`images` values must lie in [{low:g}, {high:g}] (image_range={image_range!r}), "
            f"got [{found_low:.3g}, {found_high:.3g}]{hint}"
        )
    unit = (images - low) / (high - low)
    return unit.clamp(0.0, 1.0) if clamp else unit


def to_pil_images(images) -> list[Image.Image]:
    """PIL images, a uint8 array `(H, W, 3)` / `(B, H, W, 3)`, or a list of those → a list of RGB PIL images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"`images` arrays must be uint8 (H, W, 3), got dtype {images.dtype}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"`images` arrays must have shape (H, W, 3) or (B, H, W, 3), got {images.shape}")
        return [Image.fromarray(image) for image in images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("`images` is empty")
        return [image for item in images for image in to_pil_images(item)]
    raise TypeError(
        "`images` must be a float tensor (B, 3, H, W), PIL images, or uint8 arrays (H, W, 3), "
        f"got {type(images).__name__}"
    )
