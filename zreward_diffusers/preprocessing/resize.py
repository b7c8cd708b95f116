"""From a float image in [0, 1] to the official processors' resized 8-bit pixels, keeping autograd.

transformers' image processors work on uint8 images: a diffusers pipeline's PIL output is uint8, and the resize of
the default (torchvision) backend takes uint8 and returns uint8 — a horizontal antialiased pass, rounding and
clipping to uint8, then a vertical pass and rounding again (PIL's slow backend does the same). A single float
`F.interpolate(..., antialias=True)` skips the middle rounding and clipping and, on high-contrast content where the
bicubic kernel rings, differs by up to ~20 grey levels.

`processor_pixels(..., quantize=True)` therefore computes the forward pass exactly as the official path does (on
the CPU with torch's own uint8 kernel, the one torchvision calls, so the result is bit-identical; elsewhere with two
float passes rounded in between, within one grey level) and uses as gradient the adjoint of the float antialiased
resize, i.e. straight-through rounding. With `quantize=False` it is one float resize, differentiable exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_AA_BACKWARD = {
    "bicubic": torch.ops.aten._upsample_bicubic2d_aa_backward,
    "bilinear": torch.ops.aten._upsample_bilinear2d_aa_backward,
}


def _resize(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    return F.interpolate(pixels, size=size, mode=mode, align_corners=False, antialias=True)


def rounded_two_pass_resize(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """The uint8 resize emulated in float, for devices without torch's uint8 antialiased kernel: a horizontal pass,
    rounding and clipping, a vertical pass, rounding. Within one grey level of the uint8 kernel (tested)."""
    pixels = _resize(pixels, (pixels.shape[-2], size[1]), mode).round_().clamp_(0, 255)
    return _resize(pixels, size, mode).round_().clamp_(0, 255)


class _QuantizedResize(torch.autograd.Function):
    """Forward: round to 8 bits, resize as the official uint8 path. Backward: 255 × the float resize's adjoint."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        ctx.input_size, ctx.size, ctx.mode = tuple(images.shape), size, mode
        pixels = (images * 255.0).round_().clamp_(0, 255)
        if tuple(images.shape[-2:]) == tuple(size):
            return pixels
        if pixels.device.type == "cpu":
            return _resize(pixels.to(torch.uint8), size, mode).to(images.dtype)
        return rounded_two_pass_resize(pixels, size, mode)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if tuple(ctx.input_size[-2:]) == tuple(ctx.size):
            return grad_output * 255.0, None, None
        adjoint = _AA_BACKWARD[ctx.mode]
        grad = adjoint(grad_output.contiguous(), list(ctx.size), list(ctx.input_size), False, None, None)
        return grad * 255.0, None, None


def processor_pixels(images: torch.Tensor, size: tuple[int, int], mode: str, quantize: bool) -> torch.Tensor:
    """`images` `(B, C, H, W)` in [0, 1] → pixels in [0, 255] at `size`, resized with antialiasing like the processor.

    `mode` is `"bicubic"` or `"bilinear"`. `quantize=True` reproduces the official uint8 path in the forward pass
    with a straight-through gradient; `quantize=False` is a plain float resize. Half-precision images are computed
    in float32 (8-bit rounding needs more than bf16's 8 bits, and the CPU has no half-precision backward of these
    resizes): the pixels are float32 then, float64 stays float64; the gradient comes back in the input's dtype.
    """
    if mode not in _AA_BACKWARD:
        raise ValueError(f"`mode` must be one of {sorted(_AA_BACKWARD)}, got {mode!r}")
    images = images.to(torch.promote_types(images.dtype, torch.float32))
    if quantize:
        return _QuantizedResize.apply(images, tuple(size), mode)
    pixels = images * 255.0
    return pixels if tuple(images.shape[-2:]) == tuple(size) else _resize(pixels, size, mode)
