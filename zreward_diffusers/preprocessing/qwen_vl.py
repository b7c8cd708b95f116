"""Differentiable image preprocessing for the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5).

A torch re-implementation of transformers' `Qwen2VLImageProcessor` (used by all four families) on float tensors, so
that gradients flow from `pixel_values` back to a generator's decoded image (docs/design.md, 'Differentiable
preprocessing'; HPSv3's `differentiable_image_processor.py` did the same with bilinear resizing). Steps, in the
official order:

1. `smart_resize`: both sides to multiples of `patch_size * merge_size`, area within `[min_pixels, max_pixels]`;
2. antialiased bicubic resize as the official uint8 path computes it (`resize.processor_pixels`);
3. rescale by 1/255, normalise with the checkpoint's mean/std;
4. repeat the single frame `temporal_patch_size` times and flatten patches in 2x2-merge-window-major order,
   each row laid out as (channel, time, patch_y, patch_x).

With `quantize=True` the 8-bit roundings of the official path (uint8 input, uint8 resize output) are applied with a
straight-through gradient, so the forward pass matches the processor's torchvision backend to float rounding.
"""

from __future__ import annotations

import math

import torch

from .resize import processor_pixels


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's target size: sides divisible by `factor`, area in `[min_pixels, max_pixels]`, aspect ratio kept.

    Same rule as `transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize` (a parity test checks it).
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio must be at most 200, got {height}x{width}")
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


class QwenVLImageTransform:
    """Float image batch `(B, 3, H, W)` in [0, 1] → `pixel_values` and `image_grid_thw`, keeping autograd.

    Build it from the checkpoint's image processor with `from_image_processor` so that `min_pixels` / `max_pixels`
    come from its `preprocessor_config.json`, not from class defaults.

    >>> transform = QwenVLImageTransform(patch_size=14, merge_size=2, temporal_patch_size=2,
    ...     min_pixels=56 * 56, max_pixels=112 * 112, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    >>> out = transform(torch.rand(2, 3, 61, 83))
    >>> out["pixel_values"].shape, out["image_grid_thw"].tolist()
    (torch.Size([48, 1176]), [[1, 4, 6], [1, 4, 6]])
    """

    def __init__(
        self,
        patch_size: int,
        merge_size: int,
        temporal_patch_size: int,
        min_pixels: int,
        max_pixels: int,
        image_mean: list[float],
        image_std: list[float],
    ):
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @classmethod
    def from_image_processor(cls, image_processor) -> QwenVLImageTransform:
        """Read the constants of a transformers `Qwen2VLImageProcessor` (either backend)."""
        resample = int(getattr(image_processor.resample, "value", image_processor.resample))
        if resample != 3:  # PILImageResampling.BICUBIC
            raise ValueError(f"only bicubic resampling (3) is supported, the image processor uses {resample}")
        size = image_processor.size
        return cls(
            patch_size=image_processor.patch_size,
            merge_size=image_processor.merge_size,
            temporal_patch_size=image_processor.temporal_patch_size,
            min_pixels=size["shortest_edge"],
            max_pixels=size["longest_edge"],
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
        )

    def to_dict(self) -> dict:
        return dict(vars(self), name=type(self).__name__)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of placeholder tokens the language model sees for an image of this size."""
        resized_height, resized_width = self.resized_size(height, width)
        return resized_height * resized_width // (self.patch_size * self.merge_size) ** 2

    def __call__(self, images: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
        """`images` `(B, 3, H, W)` in [0, 1] → `pixel_values` `(B * grid_h * grid_w, 3 * t * p * p)` (float32 for
        half-precision `images`, computed in float32 with the gradient back in their dtype; else their dtype) and
        `image_grid_thw` `(B, 3)`."""
        batch_size, channels, height, width = images.shape
        resized_height, resized_width = self.resized_size(height, width)
        pixels = processor_pixels(images, (resized_height, resized_width), "bicubic", quantize)
        # rescale by 1/255 and normalise, fused into one affine map: (p / 255 - mean) / std
        std = pixels.new_tensor(self.image_std).view(1, channels, 1, 1)
        mean = pixels.new_tensor(self.image_mean).view(1, channels, 1, 1)
        pixels = torch.addcmul(-mean / std, pixels, 1.0 / (255.0 * std))

        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_h, grid_w = resized_height // p, resized_width // p
        # (B, C, H, W) -> (B, C, gh/m, m, p, gw/m, m, p)
        patches = pixels.reshape(batch_size, channels, grid_h // m, m, p, grid_w // m, m, p)
        # -> (B, gh/m, gw/m, m, m, C, p, p): merge windows outermost, then the 2x2 window, then the patch.
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
        # repeat the single frame over time: (B, gh/m, gw/m, m, m, C, t, p, p)
        patches = patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)
        # -> (B * gh * gw, C * t * p * p)
        pixel_values = patches.reshape(batch_size * grid_h * grid_w, channels * t * p * p)
        image_grid_thw = torch.tensor([[1, grid_h, grid_w]] * batch_size, dtype=torch.long, device=images.device)
        return {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
