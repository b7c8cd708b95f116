"""The straight-through resize: a quantized forward pass whose backward is the adjoint of the *float* resize.

The reference Jacobian J is built without autograd: the float path (`quantize=False`) is affine in the image, so its
columns are the outputs on the basis images minus the output on the zero image. The quantized path's input gradient
for random upstream gradients g must be Jᵀg — for bicubic and bilinear, up- and down-sampling, directly and through
the Qwen-VL and Gemma 3 transforms.
"""

import functools

import pytest
import torch

from zreward_diffusers.preprocessing import QwenVLImageTransform, processor_pixels
from zreward_diffusers.preprocessing.gemma3 import Gemma3ImageTransform

CHANNELS = 3


def float_jacobian(function, height: int, width: int) -> torch.Tensor:
    """Dense `(outputs, inputs)` Jacobian of an affine map of `(B, 3, H, W)` images, from forward passes only."""
    inputs = CHANNELS * height * width
    basis = torch.eye(inputs, dtype=torch.float64).view(inputs, CHANNELS, height, width)
    offset = function(torch.zeros(1, CHANNELS, height, width, dtype=torch.float64)).reshape(1, -1)
    return (function(basis).reshape(inputs, -1) - offset).T


def quantized_input_gradient(function, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x.grad, g) for the quantized output contracted with a random upstream gradient g."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(1, CHANNELS, height, width, generator=generator, dtype=torch.float64, requires_grad=True)
    out = function(images)
    upstream = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    (out * upstream).sum().backward()
    assert images.grad is not None, "the quantized path dropped the gradient"
    return images.grad.reshape(-1), upstream.reshape(-1)


CASES = [  # (input size, output size): up, down, mixed, same size
    ((6, 5), (9, 7)),
    ((12, 10), (5, 4)),
    ((6, 10), (9, 4)),
    ((7, 6), (7, 6)),
]


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size_in,size_out", CASES)
def test_quantized_resize_gradient_is_the_float_adjoint(mode, size_in, size_out):
    """processor_pixels(quantize=True): forward on the 8-bit grid, input gradient Jᵀg with J of the float resize."""
    jacobian = float_jacobian(lambda x: processor_pixels(x, size_out, mode, quantize=False), *size_in)
    assert jacobian.shape == (CHANNELS * size_out[0] * size_out[1], CHANNELS * size_in[0] * size_in[1])
    quantized = functools.partial(processor_pixels, size=size_out, mode=mode, quantize=True)
    with torch.no_grad():
        out = quantized(torch.rand(2, CHANNELS, *size_in, dtype=torch.float64))
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255  # really the quantized path
    for seed in range(2):
        grad, upstream = quantized_input_gradient(quantized, *size_in, seed)
        torch.testing.assert_close(grad, jacobian.T @ upstream, rtol=1e-9, atol=1e-9)


def test_float_jacobian_reference_sums_to_255_per_output():
    """Sanity of the reference: the antialiased kernels are normalised, so every row of J sums to 255 (a constant
    image stays constant, scaled to [0, 255]), and the float resize is the same on a random image as J x."""
    for mode in ("bicubic", "bilinear"):
        jacobian = float_jacobian(lambda x, mode=mode: processor_pixels(x, (5, 4), mode, quantize=False), 12, 10)
        torch.testing.assert_close(jacobian.sum(1), torch.full((jacobian.shape[0],), 255.0, dtype=torch.float64))
        image = torch.rand(1, CHANNELS, 12, 10, dtype=torch.float64)
        torch.testing.assert_close(processor_pixels(image, (5, 4), mode, quantize=False).reshape(-1),
                                   jacobian @ image.reshape(-1))


def qwen_transform(max_pixels: int) -> QwenVLImageTransform:
    return QwenVLImageTransform(patch_size=2, merge_size=2, temporal_patch_size=2, min_pixels=16,
                                max_pixels=max_pixels, image_mean=[0.48, 0.46, 0.41], image_std=[0.27, 0.26, 0.28])


@pytest.mark.parametrize("size_in,max_pixels,direction", [((6, 5), 1024, "up"), ((13, 11), 48, "down")])
def test_qwen_quantized_gradient_is_the_float_adjoint(size_in, max_pixels, direction):
    """Through the Qwen-VL transform (bicubic, normalise, patchify, repeat in time) with quantize=True."""
    transform = qwen_transform(max_pixels)
    resized = transform.resized_size(*size_in)
    grows = resized[0] * resized[1] > size_in[0] * size_in[1]
    assert grows == (direction == "up") and resized != size_in
    jacobian = float_jacobian(lambda x: transform(x, quantize=False)["pixel_values"], *size_in)
    for seed in range(2):
        grad, upstream = quantized_input_gradient(lambda x: transform(x, quantize=True)["pixel_values"], *size_in,
                                                  seed)
        torch.testing.assert_close(grad, jacobian.T @ upstream, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size_in,size_out", [((6, 5), (9, 7)), ((12, 10), (5, 4))])
def test_gemma3_quantized_gradient_is_the_float_adjoint(resample, size_in, size_out):
    """Through the Gemma 3 transform (fixed-size resize, rescale, normalise) with quantize=True."""
    transform = Gemma3ImageTransform(size=size_out, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=resample,
                                     image_seq_length=4)
    jacobian = float_jacobian(lambda x: transform(x, quantize=False)["pixel_values"], *size_in)
    for seed in range(2):
        grad, upstream = quantized_input_gradient(lambda x: transform(x, quantize=True)["pixel_values"], *size_in,
                                                  seed)
        torch.testing.assert_close(grad, jacobian.T @ upstream, rtol=1e-9, atol=1e-9)
