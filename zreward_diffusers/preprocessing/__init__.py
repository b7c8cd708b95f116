"""Differentiable image preprocessing, one file per backbone family.

`image_transform_for(processor)` returns the torch transform that reproduces `processor`'s image path on float
tensors (docs/design.md, 'Differentiable preprocessing'). Each transform takes `(B, 3, H, W)` float images in
[0, 1] and returns the model's image inputs (`pixel_values` and, for Qwen, `image_grid_thw`), with autograd intact.
"""

from .qwen_vl import QwenVLImageTransform, smart_resize
from .resize import processor_pixels


def image_transform_for(processor):
    """The differentiable transform matching a transformers processor (or image processor) of a supported family."""
    image_processor = getattr(processor, "image_processor", processor)
    name = type(image_processor).__name__
    if name.startswith("Qwen2VLImageProcessor"):
        return QwenVLImageTransform.from_image_processor(image_processor)
    if name.startswith("Gemma3ImageProcessor"):
        from .gemma3 import Gemma3ImageTransform

        if image_processor is processor:
            raise ValueError("a Gemma 3 transform needs the full `Gemma3Processor` (for `image_seq_length`)")
        return Gemma3ImageTransform.from_processor(processor)
    raise ValueError(
        f"no differentiable preprocessing for image processor {name}; supported: Qwen2VLImageProcessor "
        "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) and Gemma3ImageProcessor (Gemma 3)"
    )


__all__ = [
    "QwenVLImageTransform",
    "image_transform_for",
    "processor_pixels",
    "smart_resize",
]
