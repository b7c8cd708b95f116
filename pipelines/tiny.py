"""Tiny diffusers pipelines of every supported family, built from config with locally built tokenizers.

`build_tiny_pipeline(family)` returns a real `StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
`StableDiffusion3Pipeline` or `FluxPipeline` whose components (UNet / transformer, VAE, CLIP and T5 text encoders,
scheduler) are a few hundred thousand parameters: the same classes, code paths and LoRA targets as the real
checkpoints, small enough for tests on a CPU. Nothing is downloaded.
"""

from __future__ import annotations

import string

import torch

FAMILIES = ("sd15", "sdxl", "sd3", "flux")
_WORDS = tuple(("a an the one two three four five red green blue yellow orange purple pink white black gray circle "
                "circles square squares triangle triangles star stars on background watercolour photo of painting "
                "sketch").split())


def tiny_clip_tokenizer(max_length: int = 77):
    """A character-level CLIP tokenizer (CLIP's own class and pre-tokenisation; every word splits into letters)."""
    from transformers import CLIPTokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer


# the rest of the world's prompt grammar (styles and backgrounds), for the word-level tokenizer of the world generator
_MORE_WORDS = "brown cyan clean detailed drawing minimal picture render".split()


def tiny_t5_tokenizer(max_length: int = 64, words: tuple[str, ...] = _WORDS):
    """A unigram T5 tokenizer over `words` (by default the common words of the world's prompts) and single
    characters (T5's own class): a listed word is one token, anything else is spelled out."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -1.0) for word in words]
    pieces += [(c, -5.0) for c in string.printable if not c.isspace()]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.model_max_length = max_length
    return tokenizer


def world_word_tokenizer(max_length: int = 16):
    """`tiny_t5_tokenizer` over every word of the world's prompt grammar: each word of a world prompt is one
    token (the world generator's text encoder then needs no spelling)."""
    return tiny_t5_tokenizer(max_length, _WORDS + tuple(_MORE_WORDS))


def _clip_text(tokenizer, hidden: int = 32, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5_text(tokenizer, d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def _vae(latent_channels: int = 4, seed: int = 0, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
                         sample_size=32, **extra)


def build_tiny_pipeline(family: str, seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny pipeline of `family` (`sd15`, `sdxl`, `sd3`, `flux`); `prediction_type` for the UNet families.

    Its modules are in eval mode, as `from_pretrained` leaves them (T5's dropout would otherwise make prompt
    encoding random)."""
    pipe = _build(family, seed, prediction_type)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _build(family: str, seed: int, prediction_type: str):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    if family in ("sd15", "sdxl"):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type=prediction_type)
        unet_kwargs = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                           out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
                           norm_num_groups=8)
        tokenizer = tiny_clip_tokenizer()
        if family == "sd15":
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(cross_attention_dim=32, **unet_kwargs)
            return StableDiffusionPipeline(vae=_vae(seed=seed), text_encoder=_clip_text(tokenizer, seed=seed),
                                           tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(cross_attention_dim=64, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
                                    **unet_kwargs)
        return StableDiffusionXLPipeline(vae=_vae(seed=seed), text_encoder=_clip_text(tokenizer, seed=seed),
                                         text_encoder_2=_clip_text(tokenizer, projection=32, seed=seed + 1),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True)
    clip, t5 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    if family == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                            caption_projection_dim=32, pooled_projection_dim=64, out_channels=4)
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(seed=seed, shift_factor=0.0, scaling_factor=1.0),
            text_encoder=_clip_text(clip, projection=32, seed=seed), tokenizer=clip,
            text_encoder_2=_clip_text(clip, projection=32, seed=seed + 1), tokenizer_2=clip,
            text_encoder_3=_t5_text(t5, d_model=64, seed=seed), tokenizer_3=t5)
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    return FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                        vae=_vae(seed=seed, shift_factor=0.0, scaling_factor=1.0),
                        text_encoder=_clip_text(clip, seed=seed), tokenizer=clip,
                        text_encoder_2=_t5_text(t5, d_model=32, seed=seed), tokenizer_2=t5)
