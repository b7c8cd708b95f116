"""`training.vision_attention`: one attention call for equal-sized images gives the library's values and gradients."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl import modeling_qwen2_vl

from training.vision_attention import batched_vision_attention
from zreward_diffusers.testing import build_tiny_backbone


def _pixels(processor, sizes, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    encoded = processor.image_processor(images=images, return_tensors="pt")
    return encoded["pixel_values"], encoded["image_grid_thw"]


def _run(tower, pixels, grid):
    """The tower's output for `pixels` and the gradients of a fixed function of it (parameters and pixels)."""
    pixels = pixels.clone().requires_grad_(True)
    tower.zero_grad(set_to_none=True)
    output = tower(pixels, grid_thw=grid)
    output = output.pooler_output if hasattr(output, "pooler_output") else output
    weights = torch.linspace(-1.0, 1.0, output.numel()).reshape(output.shape)
    (output * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in tower.named_parameters() if p.grad is not None}
    return output.detach(), grads, pixels.grad.clone()


@pytest.fixture(scope="module")
def model():
    model, processor = build_tiny_backbone("qwen2_vl", seed=3)
    return model.train(), processor


def _count_library_calls(layers):
    calls = []
    for layer in layers:
        library = layer._library_forward

        def counted(*args, _library=library, **kwargs):
            calls.append(1)
            return _library(*args, **kwargs)

        layer._library_forward = counted
    return calls


@pytest.mark.parametrize("sizes", [[(56, 56)] * 5, [(112, 56), (112, 56), (112, 56)]])
def test_equal_images_take_one_call_with_the_library_values_and_gradients(model, sizes):
    model, processor = model
    tower = model.model.visual
    pixels, grid = _pixels(processor, sizes)
    expected = _run(tower, pixels, grid)
    layers = [m for m in tower.modules() if isinstance(m, modeling_qwen2_vl.VisionAttention)]
    calls_to_sdpa = []
    original_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls_to_sdpa.append(args[0].shape)
        return original_sdpa(*args, **kwargs)

    with batched_vision_attention(model) as changed:
        assert changed == len(layers) == 2
        library_calls = _count_library_calls(layers)
        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            output, grads, pixel_grads = _run(tower, pixels, grid)
        finally:
            torch.nn.functional.scaled_dot_product_attention = original_sdpa
    assert not library_calls  # every layer took the batched path
    tokens = int(grid[0].prod())
    assert calls_to_sdpa == [torch.Size([len(sizes), 2, tokens, 16])] * 2  # one call per layer, images batched
    torch.testing.assert_close(output, expected[0], rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected[1].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[1][name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(pixel_grads, expected[2], rtol=1e-5, atol=1e-6)
    assert all("forward" not in layer.__dict__ for layer in layers)  # restored


def test_unequal_images_fall_back_to_the_library(model):
    model, processor = model
    tower = model.model.visual
    pixels, grid = _pixels(processor, [(56, 56), (112, 56), (56, 112)])
    expected = _run(tower, pixels, grid)
    layers = [m for m in tower.modules() if isinstance(m, modeling_qwen2_vl.VisionAttention)]
    with batched_vision_attention(model):
        library_calls = _count_library_calls(layers)
        output, grads, _ = _run(tower, pixels, grid)
    assert len(library_calls) == 2
    torch.testing.assert_close(output, expected[0], rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[1][name], rtol=0, atol=0, msg=name)


def test_whole_model_logits_match_and_layers_are_restored_after_an_error(model):
    model, processor = model
    pixels, grid = _pixels(processor, [(56, 56)] * 3)
    embeds = model.model.get_image_features(pixel_values=pixels, image_grid_thw=grid)
    embeds = torch.cat(list(embeds.pooler_output if hasattr(embeds, "pooler_output") else embeds))
    with batched_vision_attention(model, model):  # a model given twice is changed once
        batched = model.model.get_image_features(pixel_values=pixels, image_grid_thw=grid)
        batched = torch.cat(list(batched.pooler_output if hasattr(batched, "pooler_output") else batched))
    torch.testing.assert_close(batched, embeds, rtol=1e-6, atol=1e-6)
    layers = [m for m in model.modules() if isinstance(m, modeling_qwen2_vl.VisionAttention)]
    with pytest.raises(RuntimeError, match="inside"):
        with batched_vision_attention(model):
            assert all("forward" in layer.__dict__ for layer in layers)
            raise RuntimeError("inside")
    assert all("forward" not in layer.__dict__ and "_library_forward" not in layer.__dict__ for layer in layers)


def test_flash_attention_models_are_left_alone(model):
    model, _ = model
    vision_config = model.model.visual.config
    saved = vision_config._attn_implementation
    try:
        vision_config._attn_implementation = "flash_attention_2"
        with batched_vision_attention(model) as changed:
            assert changed == 0
    finally:
        vision_config._attn_implementation = saved
