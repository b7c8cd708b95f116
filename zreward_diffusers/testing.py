"""Tiny real-architecture backbones built from config, for tests, CI and the embedded default.

Every supported family gets a randomly initialised model of its real transformers class at a tiny size, its real
processor class configured for small images, and a tokenizer trained locally (`tiny_tokenizer`). Nothing is
downloaded. `zreward create-tiny DIR --family F` writes one as a student checkpoint.

>>> model, processor = build_tiny_backbone("qwen2_vl", seed=0)
>>> type(model).__name__, type(processor).__name__
('Qwen2VLForConditionalGeneration', 'Qwen2VLProcessor')
"""

from __future__ import annotations

import torch

from .tiny_tokenizer import build_tiny_tokenizer

TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "gemma3")

# Image size limits of the tiny processors: 56x56 to 112x112 pixels (Qwen2 factor 28) or 64..128 (factor 32), so a
# tiny image gives 4 to 16 image tokens. Gemma 3 resizes every image to 56x56 (16 patches of 14, average-pooled to
# 4 image tokens).
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _qwen_token_ids(tokenizer) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def tiny_config(family: str, tokenizer):
    """The transformers config of the tiny `family` backbone whose vocabulary is `tokenizer`'s."""
    text = dict(_TEXT, vocab_size=len(tokenizer), max_position_embeddings=1024, head_dim=16)
    text.update(bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14)
        return Qwen2VLConfig(text_config=dict(text, rope_parameters=mrope), vision_config=vision,
                             **_qwen_token_ids(tokenizer))
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      window_size=56, fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(text_config=dict(text, rope_parameters=mrope), vision_config=vision,
                                **_qwen_token_ids(tokenizer))
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                      num_position_embeddings=64, deepstack_visual_indexes=[0])
        rope = dict(mrope, mrope_interleaved=True)
        return Qwen3VLConfig(text_config=dict(text, rope_parameters=rope), vision_config=vision,
                             **_qwen_token_ids(tokenizer))
    if family == "qwen3_5":
        from transformers import Qwen3_5Config

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                      num_position_embeddings=64)
        rope = dict(mrope, mrope_interleaved=True, partial_rotary_factor=0.5)
        linear = dict(linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                      linear_num_value_heads=4, layer_types=["linear_attention", "full_attention"])
        return Qwen3_5Config(text_config=dict(text, rope_parameters=rope, **linear), vision_config=vision,
                             **_qwen_token_ids(tokenizer))
    if family == "gemma3":
        from transformers import Gemma3Config

        # One sliding and one global layer, as in Gemma 3's 5:1 pattern; the window (64) is shorter than a rubric
        # prompt, so both masks matter. Gemma scales queries by query_pre_attn_scalar ** -0.5 (= head_dim here).
        gemma_text = dict(text, bos_token_id=tokenizer.bos_token_id, query_pre_attn_scalar=16, sliding_window=64,
                          layer_types=["sliding_attention", "full_attention"])
        # SigLIP tower without the pooling head (Gemma 3 uses the patch states); 56 / 14 = 4x4 patches.
        vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=56, patch_size=14, vision_use_head=False)
        ids = tokenizer.convert_tokens_to_ids
        return Gemma3Config(text_config=gemma_text, vision_config=vision, mm_tokens_per_image=4,
                            boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                            image_token_index=ids("<image_soft_token>"))
    raise ValueError(f"`family` must be one of {TINY_FAMILIES}, got {family!r}")


def tiny_processor(family: str, tokenizer):
    """The family's official processor class, configured for tiny images, around `tokenizer`."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
        processor_class = Qwen2VLProcessor
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLProcessor as processor_class
        return processor_class(image_processor=image_processor, video_processor=Qwen2VLVideoProcessor(),
                               tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    if family in ("qwen3_vl", "qwen3_5"):
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        # Qwen3-VL's released processor: patch 16, merge 2 (factor 32), mean = std = 0.5.
        image_processor = Qwen2VLImageProcessor(min_pixels=64 * 64, max_pixels=128 * 128, patch_size=16,
                                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        video_processor = Qwen3VLVideoProcessor(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return Qwen3VLProcessor(image_processor=image_processor, video_processor=video_processor,
                                tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    if family == "gemma3":
        from transformers import Gemma3ImageProcessor, Gemma3Processor

        # Released Gemma 3: 896x896 bilinear, mean = std = 0.5, 256 tokens per image; here 56x56 and 4 tokens.
        image_processor = Gemma3ImageProcessor(size={"height": 56, "width": 56}, resample=2,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                               chat_template=tokenizer.chat_template, image_seq_length=4)
    raise ValueError(f"`family` must be one of {TINY_FAMILIES}, got {family!r}")


def build_tiny_backbone(family: str = "qwen2_vl", seed: int = 0):
    """A randomly initialised tiny `family` VLM (its real transformers class) and its processor.

    Returns `(model, processor)`; the model is in eval mode and float32; `seed` fixes the weights.
    """
    from transformers import AutoModelForImageTextToText

    tokenizer = build_tiny_tokenizer(family)
    config = tiny_config(family, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
        if family == "gemma3":
            # Gemma 3 initialises the image-to-text projection to zeros (real checkpoints overwrite it), which
            # would cut every gradient to the pixels of a random tiny model.
            projection = model.model.multi_modal_projector.mm_input_projection_weight
            with torch.no_grad():
                projection.normal_(0.0, config.initializer_range)
    return model.eval(), tiny_processor(family, tokenizer)


def tiny_rubric(family: str):
    """The default rubric, with the answer prefix after which the family's tiny tokenizer reads single digits."""
    from .rubric import Rubric

    return Rubric()


def build_tiny_scorer(family: str = "qwen2_vl", seed: int = 0):
    """A `ZRewardScorer` over a randomly initialised tiny `family` backbone (see `build_tiny_backbone`)."""
    from .scorer import ZRewardScorer

    model, processor = build_tiny_backbone(family, seed=seed)
    return ZRewardScorer(model, processor, tiny_rubric(family))


def create_tiny_checkpoint(save_directory, family: str = "qwen2_vl", seed: int = 0, overwrite: bool = False) -> None:
    """Write a random tiny student checkpoint of a real architecture to `save_directory` (for users' CI and ours).

    `ZRewardLoss.from_pretrained(save_directory)` loads it like any released checkpoint. A non-empty folder not
    written by zreward-diffusers is replaced only with `overwrite=True`.
    """
    from .loss import ZRewardLoss

    ZRewardLoss(build_tiny_scorer(family, seed=seed)).save_pretrained(save_directory, overwrite=overwrite)
