"""Differentiable image preprocessing for Gemma 3 (`Gemma3ImageProcessor`, SigLIP-style).

A torch re-implementation of transformers' `Gemma3ImageProcessor` (torchvision backend) and
`Gemma3ImageProcessorPil` on float tensors, so that gradients flow from `pixel_values` back to a generator's decoded
image (docs/design.md, 'Differentiable preprocessing'). Steps, in the official order:

1. resize to the fixed `size` (896x896 in the released checkpoints), aspect ratio *not* preserved, with
   antialiased **bilinear** interpolation as the official uint8 path computes it (`resize.processor_pixels`);
2. rescale by `rescale_factor` (1/255), normalise with the checkpoint's mean/std (0.5 / 0.5).

There is no patchify step: the SigLIP tower takes `(B, 3, S, S)` images and the model average-pools its patch states
to `image_seq_length` (256) soft tokens, a number fixed by the processor, not by the image size. Pan-and-scan (extra
crops of elongated images, each with its own token block) is not supported.

With `quantize=True` the 8-bit roundings of the official path (uint8 input, uint8 resize output) are applied with a
straight-through gradient, so the forward pass matches the torchvision backend to within one grey level (exactly
when no resize is needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .resize import processor_pixels

# PILImageResampling values the resize helper reproduces.
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


class Gemma3ImageTransform:
    """Float image batch `(B, 3, H, W)` in [0, 1] → `{"pixel_values": (B, 3, S, S)}`, keeping autograd.

    Build it from the checkpoint's processor with `from_processor` (or its image processor with
    `from_image_processor`) so that size, mean/std and the number of image tokens come from its config files.

    >>> transform = Gemma3ImageTransform(size=(56, 56), image_mean=[0.5] * 3, image_std=[0.5] * 3, image_seq_length=4)
    >>> transform(torch.rand(2, 3, 61, 83))["pixel_values"].shape
    torch.Size([2, 3, 56, 56])
    >>> transform.num_image_tokens(61, 83)
    4
    """

    def __init__(
        self,
        size: Sequence[int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        rescale_factor: float = 1 / 255,
        resample: str = "bilinear",
        image_seq_length: int = 256,
    ):
        """`size` is `(height, width)`; `resample` is `"bilinear"` (Gemma 3) or `"bicubic"`; `image_seq_length` is
        the processor's number of `<image_soft_token>`s per image (256 in the released checkpoints)."""
        if resample not in _RESAMPLE_MODES.values():
            raise ValueError(f"`resample` must be one of {sorted(_RESAMPLE_MODES.values())}, got {resample!r}")
        height, width = size
        self.size = [int(height), int(width)]
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        self.rescale_factor = float(rescale_factor)
        self.resample = resample
        self.image_seq_length = int(image_seq_length)

    @classmethod
    def from_image_processor(cls, image_processor, image_seq_length: int = 256) -> Gemma3ImageTransform:
        """Read the constants of a transformers `Gemma3ImageProcessor` or `Gemma3ImageProcessorPil`.

        The image processor does not know the number of image tokens; `image_seq_length` defaults to
        `Gemma3Processor`'s default (256). Prefer `from_processor`, which reads it.
        """
        if getattr(image_processor, "do_pan_and_scan", None):
            raise ValueError(
                "the image processor has `do_pan_and_scan=True`; pan-and-scan crops are not supported by the "
                "differentiable Gemma 3 transform. Set `image_processor.do_pan_and_scan = False`."
            )
        for flag in ("do_resize", "do_rescale", "do_normalize"):
            if getattr(image_processor, flag, True) is False:
                raise ValueError(f"the image processor has `{flag}=False`, which is not supported")
        resample = int(getattr(image_processor.resample, "value", image_processor.resample))
        if resample not in _RESAMPLE_MODES:
            raise ValueError(f"only bilinear (2) or bicubic (3) resampling is supported, got {resample}")
        size = image_processor.size
        if not (size["height"] and size["width"]):
            raise ValueError(f"the image processor must resize to a fixed height and width, got {size}")
        return cls(
            size=(size["height"], size["width"]),
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
            rescale_factor=image_processor.rescale_factor,
            resample=_RESAMPLE_MODES[resample],
            image_seq_length=image_seq_length,
        )

    @classmethod
    def from_processor(cls, processor) -> Gemma3ImageTransform:
        """Read a transformers `Gemma3Processor`: its image processor's constants and its `image_seq_length`."""
        return cls.from_image_processor(processor.image_processor, image_seq_length=processor.image_seq_length)

    def to_dict(self) -> dict:
        return dict(vars(self), name=type(self).__name__)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The fixed `(height, width)` every image is resized to, whatever its own size."""
        return self.size[0], self.size[1]

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of `<image_soft_token>` placeholders the language model sees: fixed, whatever the image size."""
        return self.image_seq_length

    def __call__(self, images: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
        """`images` `(B, 3, H, W)` in [0, 1] → `{"pixel_values": (B, 3, height, width)}`, float32 for
        half-precision `images` (computed in float32, gradient back in their dtype), else in their dtype.

        `quantize` applies the official path's 8-bit roundings with an identity gradient; turn it off for
        `gradcheck` or smooth losses.
        """
        channels = images.shape[1]
        pixels = processor_pixels(images, self.resized_size(*images.shape[-2:]), self.resample, quantize)
        # rescale and normalise, fused into one affine map: (p * rescale_factor - mean) / std
        std = pixels.new_tensor(self.image_std).view(1, channels, 1, 1)
        mean = pixels.new_tensor(self.image_mean).view(1, channels, 1, 1)
        return {"pixel_values": torch.addcmul(-mean / std, pixels, self.rescale_factor / std)}
