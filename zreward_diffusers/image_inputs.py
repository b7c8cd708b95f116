"""Checking and converting the images and prompts a reward is called with (docs/design.md, 'Public contract': errors).

Every check raises a `ValueError` or `TypeError` that names the argument (`images`, `prompts`, `prompts[i]`) and says
what was expected. The same functions serve every public entry (`ZRewardLoss.forward` / `reward` / `score`,
`ZRewardScorer.__call__` / `score_pil` / `generate_reasoning`), so one bad input gets one error wherever it goes.

Prompts are data, never control: a prompt that contains a special token of the processor's tokenizer (chat-template
markers such as `<|im_end|>` or `<end_of_turn>`, image / video placeholders such as `<|image_pad|>` or
`<image_soft_token>`) is refused, as is an empty one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

# How far outside the declared range values may stray before we call it an error rather than VAE overshoot,
# as a fraction of the range's width: [-1, 1] accepts [-1.5, 1.5]; a 0..255 image given as [-1, 1] is refused.
RANGE_TOLERANCE = 0.25

IMAGE_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}

# Processor attributes that name a multimodal placeholder the processor expands inside the text (Qwen's image / video
# pads, Gemma's begin-of-image token); refused in prompts even where the tokenizer does not flag them as special.
_PROCESSOR_TOKEN_ATTRIBUTES = ("image_token", "video_token", "audio_token", "boi_token", "eoi_token",
                               "vision_start_token", "vision_end_token")

SHAPE = "(batch, 3, height, width)"


def check_image_range(image_range: str) -> tuple[float, float]:
    if image_range not in IMAGE_RANGES:
        raise ValueError(f"`image_range` must be one of {sorted(IMAGE_RANGES)}, got {image_range!r}")
    return IMAGE_RANGES[image_range]


def special_tokens_of(processor) -> tuple[str, ...]:
    """The strings a prompt may not contain: the tokenizer's special tokens (named ones and added tokens flagged
    special) and the processor's multimodal placeholders. Added tokens that are not special (Gemma's HTML tags,
    whitespace runs) are ordinary text and stay allowed. Longest first."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = set(getattr(tokenizer, "all_special_tokens", ()))
    tokens |= {str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
               if getattr(token, "special", False)}
    tokens |= {getattr(processor, name) for name in _PROCESSOR_TOKEN_ATTRIBUTES
               if isinstance(getattr(processor, name, None), str)}
    return tuple(sorted((t for t in tokens if t.strip()), key=lambda t: (-len(t), t)))


def special_token_pattern(tokens: Iterable[str]) -> re.Pattern | None:
    """One regex that finds the first of `tokens` in a text (None when there are none)."""
    tokens = list(tokens)
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


def check_prompt_list(prompts, batch_size: int | None, special_tokens: re.Pattern | None = None) -> list[str]:
    """`prompts` must be a list of non-empty strings, one per image, none containing a special token.

    `special_tokens` is a pattern from `special_token_pattern(special_tokens_of(processor))`; errors about one item
    name it as `prompts[i]`.
    """
    if isinstance(prompts, (str, bytes)):
        kind = "string" if isinstance(prompts, str) else "bytes object"
        raise TypeError(f"`prompts` must be a list of strings, one per image, got a single {kind}")
    if not isinstance(prompts, Sequence):
        raise TypeError(f"`prompts` must be a list of strings, one per image, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty: give one prompt per image")
    if batch_size is not None and len(prompts) != batch_size:
        raise ValueError(f"`prompts` has {len(prompts)} entries but `images` has batch size {batch_size}")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"`prompts[{index}]` must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError(f"`prompts[{index}]` is empty (or only whitespace): give the image's prompt")
        found = special_tokens.search(prompt) if special_tokens is not None else None
        if found is not None:
            raise ValueError(
                f"`prompts[{index}]` contains the special token {found.group()!r} of the model's tokenizer at "
                f"character {found.start()}; prompts are read as text, so chat-template markers and image or video "
                "placeholders are refused: remove it"
            )
    return list(prompts)


def check_image_tensor(images, image_range: str = "-1,1") -> tuple[float, float]:
    """Check a float image batch `(B, 3, H, W)` in `image_range`; return its `(min, max)`.

    Refuses, naming `images`: a non-tensor or a non-float tensor (`TypeError`); another rank, a single `(3, H, W)`
    image, channels-last `(B, H, W, 3)` / `(H, W, 3)` layouts (with the `permute` that fixes them), a channel count
    other than 3, an empty batch or side, NaN / Inf, values outside the range by more than `RANGE_TOLERANCE` of its
    width (`ValueError`).
    """
    low, high = check_image_range(image_range)
    if not isinstance(images, torch.Tensor):
        hint = " (convert with torch.from_numpy)" if isinstance(images, np.ndarray) else ""
        raise TypeError(f"`images` must be a torch.Tensor of shape {SHAPE}, got {type(images).__name__}{hint}")
    shape = tuple(images.shape)
    if images.dim() == 3:
        if shape[-1] == 3 and shape[0] != 3:
            hint = "it looks like one channels-last image (height, width, 3): use images.permute(2, 0, 1)[None]"
        else:
            hint = "it looks like a single image (3, height, width): add the batch dimension with images[None]"
        raise ValueError(f"`images` must have rank 4, {SHAPE}, got shape {shape}: {hint}")
    if images.dim() != 4:
        raise ValueError(f"`images` must have rank 4, {SHAPE}, got shape {shape}")
    if shape[1] != 3:
        hint = ": it looks channels-last (batch, height, width, 3), use images.permute(0, 3, 1, 2)" \
            if shape[-1] == 3 else ""
        raise ValueError(f"`images` must have 3 channels in dim 1, {SHAPE}, got shape {shape}{hint}")
    if shape[0] == 0:
        raise ValueError("`images` is an empty batch")
    if shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"`images` must have a positive height and width, got shape {shape}")
    if not images.is_floating_point():
        raise TypeError(
            f"`images` must be a float tensor {SHAPE}, got dtype {images.dtype}; convert 8-bit pixels with "
            "images.float() / 255 (values in [0, 1]), or pass uint8 images to `score()` as PIL images or numpy arrays"
        )
    found_low, found_high = torch.aminmax(images.detach())  # NaN propagates; one pass, one sync
    found_low, found_high = torch.stack([found_low, found_high]).tolist()
    if not (math.isfinite(found_low) and math.isfinite(found_high)):
        count = int((~torch.isfinite(images.detach())).sum())
        raise ValueError(f"`images` contains {count} NaN or Inf values")
    slack = RANGE_TOLERANCE * (high - low)
    if found_low < low - slack or found_high > high + slack:
        if found_high > 2.0:
            hint = " (it looks like 0..255 pixel values: divide by 255 for [0, 1])"
        elif found_low < low - slack and found_low >= -1.0 - slack:
            hint = " (it looks like [-1, 1] values: map them with (images + 1) / 2, or use ZRewardLoss with its " \
                "default image_range='-1,1')"
        else:
            hint = ""
        raise ValueError(
            f"`images` values must lie in [{low:g}, {high:g}] (image_range={image_range!r}), "
            f"got [{found_low:.3g}, {found_high:.3g}]{hint}"
        )
    return found_low, found_high


def to_unit_range(images: torch.Tensor, image_range: str = "-1,1", clamp: bool = True) -> torch.Tensor:
    """Map a checked image batch in `image_range` to [0, 1], in float32 (float64 stays float64), keeping autograd.

    Half-precision images are computed in float32 from here on (the CPU has no bf16 / fp16 backward of the
    antialiased resizes, and 8-bit rounding needs more than bf16's 8 bits); their gradient comes back in their dtype.
    Values a little outside the range (VAE overshoot, within `RANGE_TOLERANCE`) are clamped when `clamp`, as
    diffusers' `VaeImageProcessor.postprocess` and the uint8 official path do.
    """
    low, high = check_image_range(image_range)
    images = images.to(torch.promote_types(images.dtype, torch.float32))
    unit = images if (low, high) == (0.0, 1.0) else (images - low) / (high - low)
    return unit.clamp(0.0, 1.0) if clamp else unit


def image_tensor_to_unit_range(images, image_range: str = "-1,1", clamp: bool = True) -> torch.Tensor:
    """Check a float image batch `(B, 3, H, W)` in `image_range` (`check_image_tensor`) and map it to [0, 1] in
    float32 (`to_unit_range`), keeping autograd."""
    check_image_tensor(images, image_range)
    return to_unit_range(images, image_range, clamp)


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
            hint = ": it looks channels-first, use np.moveaxis(images, -3, -1)" if images.shape[-3:-2] == (3,) else ""
            raise ValueError(f"`images` arrays must have shape (H, W, 3) or (B, H, W, 3), got {images.shape}{hint}")
        if 0 in images.shape:
            raise ValueError(f"`images` arrays must have a positive batch, height and width, got {images.shape}")
        return [Image.fromarray(image) for image in images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("`images` is empty")
        return [image for item in images for image in to_pil_images(item)]
    raise TypeError(
        "`images` must be a float tensor (B, 3, H, W), PIL images, or uint8 arrays (H, W, 3), "
        f"got {type(images).__name__}"
    )
