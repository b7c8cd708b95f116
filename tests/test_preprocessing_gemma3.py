"""Parity of the differentiable Gemma 3 transform with transformers' official image processors, and its gradients.

Official path: uint8 image → bilinear antialiased resize to a fixed size (uint8) → rescale 1/255 → normalise. The
torchvision backend (`Gemma3ImageProcessor`) is reproduced up to float rounding on the CPU; the PIL backend
(`Gemma3ImageProcessorPil`) rounds differently inside its resize, so it gets a measured tolerance.
"""

import pytest
import torch
from PIL import Image
from transformers import Gemma3ImageProcessor, Gemma3ImageProcessorPil

from zreward_diffusers.preprocessing.gemma3 import Gemma3ImageTransform
from zreward_diffusers.testing import build_tiny_backbone

SIZE = 56
STD = 0.5
PROCESSOR_KWARGS = dict(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[STD] * 3)
GREY_LEVEL = 1 / 255 / STD  # one uint8 step in normalised units
RESIZE_SHAPES = [(61, 83), (200, 37), (30, 30), (112, 112)]


def noise_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Uniform 8-bit noise `(1, 3, H, W)` in [0, 1], on the uint8 grid: the worst case for resize rounding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, height, width), generator=generator).float() / 255


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A colour gradient plus four soft Gaussian blobs `(1, 3, H, W)`, on the uint8 grid: typical generator output."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    ones = torch.ones(height, width)
    image = torch.stack([0.2 + 0.6 * x * ones, 0.3 + 0.5 * y * ones, 0.5 + 0.15 * (x - y)])
    for _ in range(4):
        cy, cx, radius = torch.rand(3, generator=generator)
        amplitude = torch.rand(3, 1, 1, generator=generator) * 0.4 - 0.2
        sigma = 0.05 + 0.15 * radius
        image = image + amplitude * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return (image.clamp(0, 1) * 255).round()[None] / 255


def official(image: torch.Tensor, backend: str) -> torch.Tensor:
    """`pixel_values` of the official processor on the uint8 version of `image` `(1, 3, H, W)`."""
    uint8 = (image[0] * 255).round().to(torch.uint8)
    if backend == "torchvision":
        return Gemma3ImageProcessor(**PROCESSOR_KWARGS)(images=[uint8], return_tensors="pt")["pixel_values"]
    pil_image = Image.fromarray(uint8.permute(1, 2, 0).numpy())
    return Gemma3ImageProcessorPil(**PROCESSOR_KWARGS)(images=[pil_image], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def transform() -> Gemma3ImageTransform:
    return Gemma3ImageTransform.from_image_processor(Gemma3ImageProcessor(**PROCESSOR_KWARGS), image_seq_length=4)


def test_from_image_processor_reads_constants(transform):
    assert transform.size == [SIZE, SIZE]
    assert transform.resample == "bilinear"  # Gemma 3's PILImageResampling.BILINEAR (2)
    assert transform.image_mean == [0.5] * 3 and transform.image_std == [STD] * 3
    assert transform.rescale_factor == pytest.approx(1 / 255)
    assert transform.num_image_tokens(61, 83) == 4
    assert transform.to_dict()["name"] == "Gemma3ImageTransform"
    pil_transform = Gemma3ImageTransform.from_image_processor(Gemma3ImageProcessorPil(**PROCESSOR_KWARGS))
    assert pil_transform.to_dict() == dict(transform.to_dict(), image_seq_length=256)


def test_from_processor_reads_image_seq_length():
    _, processor = build_tiny_backbone("gemma3")
    transform = Gemma3ImageTransform.from_processor(processor)
    assert transform.image_seq_length == processor.image_seq_length == 4
    assert transform.size == [SIZE, SIZE]


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("make_image", [noise_image, smooth_image])
def test_no_resize_matches_official(transform, backend, make_image):
    image = make_image(SIZE, SIZE)
    ours = transform(image)["pixel_values"]
    assert ours.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(ours, official(image, backend), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", RESIZE_SHAPES)
@pytest.mark.parametrize("make_image", [noise_image, smooth_image])
def test_resize_matches_torchvision_backend_up_to_float_rounding_on_the_cpu(transform, shape, make_image):
    # the README's claim: on the CPU both run torch's uint8 antialiased kernel (measured: 1.5e-5 of a grey level)
    image = make_image(*shape)
    difference = (transform(image)["pixel_values"] - official(image, "torchvision")).abs()
    assert difference.max() <= 1e-3 * GREY_LEVEL


@pytest.mark.parametrize("shape", RESIZE_SHAPES)
def test_resize_matches_pil_backend_on_smooth_image(transform, shape):
    # PIL's bilinear kernel rounds its fixed-point coefficients differently from torchvision's uint8 kernel. Measured
    # on these smooth images, in grey levels: mean |Δ| 0.003-0.015, max 1.0 for all four shapes (uniform noise: mean
    # up to 0.22 for 200x37, max still 1.0). The README claims mean < 0.02 and max one level on natural-looking images.
    image = smooth_image(*shape)
    difference = (transform(image)["pixel_values"] - official(image, "pil")).abs()
    assert difference.mean() < 0.02 * GREY_LEVEL
    assert difference.max() <= GREY_LEVEL + 1e-5


def test_gradcheck_through_resize():
    # 5x11 → 8x8: upsampling rows, downsampling columns, both separable passes active.
    transform = Gemma3ImageTransform(size=(8, 8), image_mean=[0.5, 0.4, 0.3], image_std=[0.5, 0.6, 0.7])
    image = torch.rand(1, 3, 5, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: transform(x, quantize=False)["pixel_values"], (image,))


def test_quantize_keeps_identity_gradient(transform):
    image = smooth_image(61, 83).requires_grad_(True)
    transform(image, quantize=True)["pixel_values"].sum().backward()
    image_float = image.detach().clone().requires_grad_(True)
    transform(image_float, quantize=False)["pixel_values"].sum().backward()
    torch.testing.assert_close(image.grad, image_float.grad)


def test_tiny_backbone_gradient_reaches_pixels():
    model, processor = build_tiny_backbone("gemma3")
    transform = Gemma3ImageTransform.from_processor(processor)
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate the image."}]}]
    # The chat template writes its own <bos>, as Gemma 3's does: tokenise without adding another.
    text = processor.apply_chat_template(messages, add_generation_prompt=True) + "Score: "
    image = smooth_image(61, 83).requires_grad_(True)
    uint8 = (image.detach()[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    inputs = processor(text=[text], images=[Image.fromarray(uint8)], return_tensors="pt", add_special_tokens=False)
    start_of_turn = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    assert inputs["input_ids"][0, :2].tolist() == [tokenizer.bos_token_id, start_of_turn]  # a single BOS
    assert (inputs["input_ids"] == tokenizer.image_token_id).sum() == transform.num_image_tokens(61, 83)
    # token_type_ids (1 on image soft tokens) switch on bidirectional attention within the image block.
    assert inputs["token_type_ids"].sum() == 4

    pixel_values = transform(image)["pixel_values"]
    assert (pixel_values - inputs["pixel_values"]).abs().max() <= GREY_LEVEL + 1e-5
    logits = model(**dict(inputs, pixel_values=pixel_values)).logits[0, -1]
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 10)]
    expected_score = (logits[digits].softmax(-1) * torch.arange(1.0, 10.0)).sum()
    expected_score.backward()
    assert torch.isfinite(image.grad).all()
    assert image.grad.abs().sum() > 0


def test_tiny_tokenizer_score_digits_are_single_tokens():
    _, processor = build_tiny_backbone("gemma3")
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": "Rate."}]
    prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "Score: "
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(prefix_ids[-2:]) == ["Score:", "▁"]
    for digit in "123456789":
        (digit_id,) = tokenizer.encode(digit, add_special_tokens=False)
        assert tokenizer.encode(prefix + digit, add_special_tokens=False) == prefix_ids + [digit_id]


def test_pan_and_scan_is_rejected():
    image_processor = Gemma3ImageProcessor(**PROCESSOR_KWARGS, do_pan_and_scan=True)
    with pytest.raises(ValueError, match="pan-and-scan"):
        Gemma3ImageTransform.from_image_processor(image_processor)
