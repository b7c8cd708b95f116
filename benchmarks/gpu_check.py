"""The project's performance goals measured on one GPU with real-size architectures (random weights), in one command.

    python -m benchmarks.gpu_check          # one 80 GB H100: under 8 minutes (an estimate: not yet run on a GPU)
    python -m benchmarks.gpu_check --tiny   # every part at tiny sizes on the CPU, about 30 s (`make test` runs it)

Every other figure of the project comes from a 2-core CPU and tiny models; users run SDXL and Flux with 3B-9B reward
models on GPUs. No weights can be downloaded there either, so every model here is built from its published config
(written below as small dicts, each naming the hub repo it mirrors) with random weights, in bf16, with SDPA attention.
Random weights cost what trained ones cost: the FLOPs and memory depend on the shapes, not the values. The
tokenizer is built locally (`zreward_diffusers.tiny_tokenizer`, Qwen's special tokens and chat template): image tokens
are exact, the rubric text of a row is ~75 tokens where the real tokenizer's count differs by a few.

Parts (each in its own try/except: what cannot run is recorded as `{"skipped": reason}` and the rest goes on):

- matmul: the device's measured bf16 matmul rate (a timed 8192^2 `torch.matmul`), the yardstick of the FLOP figures.
- configs: a dry run of every real-size model on the meta device (no memory, no arithmetic): parameter counts against
  the published ones, each reward's real processor (tokens a row at 512 / 1024 px), each generator pipeline assembled
  as below with one denoiser call and the VAE decode; so a config or constructor that rots shows even in `--tiny`.
- reward: Qwen2.5-VL-3B, Qwen2.5-VL-7B and Qwen3-VL-8B with their real processors' settings. `ZRewardLoss`
  forward+backward from float images (all four rubric dimensions) against the bare backbone's forward+backward on the
  same inputs (`benchmarks.loss_overhead`'s comparison; goal <= 1.10x), at 512 and 1024 px, batch 1 and 8, with and
  without gradient checkpointing: median times, peak CUDA memory per image, and the FLOPs of the step (counted with
  `torch.utils.flop_counter` at batch 1, recomputation included, scaled to batch 8 by rows x sequence length) against
  the measured matmul rate. Each image is scored on 4 rows (one per rubric dimension), and the scorer runs the vision
  tower on each row's copy of the image, so batch 8 is 32 vision encodings.
- preprocessing: the differentiable transform on decoded images already on the device (float, batch 16) against the
  official processors, whose host path a diffusers pipeline takes (to uint8 on the host, PIL images, the torchvision
  or the PIL backend, `pixel_values` back to the device); and the torchvision backend given uint8 tensors on the
  device. Goal (as `loss_overhead`'s): >= 3x faster than each host path.
- generator: an SDXL-size UNet + VAE at 1024 px and a Flux-size transformer at reduced depth (2 double + 4 single
  blocks, full width) with Flux's 16-channel VAE, run through the project's own DRaFT code (`pipelines.rollout`,
  `pipelines.methods.sample`, `pipelines.lora.add_lora`) with the settings of `pipelines/configs/draft_sdxl.yaml` /
  `draft_flux.yaml` (28 steps, LoRA rank 32, velocity L2 0.1, guidance 5 / 3.5, batch 1) and the 3B-size reward:
  the DRaFT-1 step time and the reward's share of it; DRaFT-K for K = 1, 5 and the full chain with checkpointing,
  peak CUDA memory (goal: full chain <= 1.5x K = 1, on the growth over the loaded models); K = 1 without
  checkpointing; xformers against SDPA where xformers is installed. The text encoders are CLIP / T5 at their real
  widths but 1-2 layers (the prompt is encoded once a step without gradients: its cost does not matter here).

A time budget (`--budget_s`, default 450 s from start-up) is shared out over the parts; a measurement whose
predicted time exceeds what is left of its share is skipped with the reason, and a configuration whose warm-up says its
repeats would take over `--config_target_s` (30 s) gets fewer (at least one). Output: `--out DIR` (default
runs/gpu_check) gets `gpu_check.json` and `gpu_check.md` (a header with the device, versions, commit and date, and a
table per part). Timings: `torch.cuda.synchronize()` around every timed call, warm-up first, medians of repeats;
peaks from `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (on the CPU they are "n/a").

On a fresh GPU box (only torch, transformers, accelerate and peft preinstalled, no internet):

    # on a connected machine with the same Python version and platform:
    pip download --no-deps -d wheels "diffusers>=0.35" "open_clip_torch>=2.24"   # + xformers for its row
    # copy wheels/ and a clone of this repository to the GPU box, then there:
    pip install --no-deps wheels/*.whl
    cd zreward-diffusers && HF_HUB_OFFLINE=1 python -m benchmarks.gpu_check --out runs/gpu_check

The project is used from the clone (`python -m`, no install needed). Besides torch / transformers / accelerate /
peft it imports torchvision and pillow (in every PyTorch image; if not, bring their wheels the same way) and diffusers
for the generator part; a part whose module is missing reports itself skipped and names the module (bring that wheel
too). open_clip is not used by this script (only by the CLIP rewards and students).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import logging
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
LOSS_GOAL = 1.10  # ZRewardLoss forward+backward / bare backbone forward+backward (benchmarks/README.md)
PREPROCESS_GOAL = 3.0  # differentiable preprocessing at least this much faster than each official host path
MEMORY_GOAL = 1.5  # DRaFT full chain with checkpointing / K = 1, peak memory growth
PROMPTS = [
    "two red circles on a blue background",
    "a yellow square on a green background",
    "three white triangles on a black background",
    "a purple star resting on a gray floor",
]

# ------------------------------------------------------------------------------------------------ real-size configs
# Field names are those of transformers 5.25's config classes; values from each repo's config.json /
# preprocessor_config.json as published (from memory where marked "unverified": no hub access here). The `configs`
# part checks the parameter counts against the published ones.

# Qwen/Qwen2.5-VL-3B-Instruct (published 3.75B parameters)
QWEN2_5_VL_3B = dict(
    text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
                fullatt_block_indexes=[7, 15, 23, 31]),
    tie_word_embeddings=True,
)
# Qwen/Qwen2.5-VL-7B-Instruct (published 8.29B): the same vision tower, projected to 3584
QWEN2_5_VL_7B = dict(
    text=dict(QWEN2_5_VL_3B["text"], hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
    vision=dict(QWEN2_5_VL_3B["vision"], out_hidden_size=3584),
    tie_word_embeddings=False,
)
# Qwen/Qwen3-VL-8B-Instruct (published 8.77B). Unverified: mrope_section [24, 20, 20] and rope_theta 5e6 (they do
# not change the cost), tie_word_embeddings false (the parameter count matches only untied).
QWEN3_VL_8B = dict(
    text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
              num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
              rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20],
                                                  "mrope_interleaved": True, "rope_theta": 5000000.0}),
    vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"),
    tie_word_embeddings=False,
)
# The official image processors' settings: Qwen2.5-VL's preprocessor_config.json (patch 14, merge 2, CLIP mean/std)
# and Qwen3-VL's (patch 16, merge 2, mean = std = 0.5, size {shortest_edge: 65536, longest_edge: 16777216}).
QWEN2_5_VL_PROCESSOR = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2,
                            image_mean=[0.48145466, 0.4578275, 0.40821073],
                            image_std=[0.26862954, 0.26130258, 0.27577711])
QWEN3_VL_PROCESSOR = dict(min_pixels=65536, max_pixels=16777216, patch_size=16, merge_size=2, temporal_patch_size=2,
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


@dataclass(frozen=True)
class RewardSpec:
    name: str
    family: str  # the tiny family of `zreward_diffusers.testing` (the tokenizer's and --tiny's)
    hub: str
    config: dict
    processor: dict
    published_params: float


REWARD_MODELS = {
    "qwen2_5_vl_3b": RewardSpec("qwen2_5_vl_3b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", QWEN2_5_VL_3B,
                                QWEN2_5_VL_PROCESSOR, 3.75e9),
    "qwen2_5_vl_7b": RewardSpec("qwen2_5_vl_7b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", QWEN2_5_VL_7B,
                                QWEN2_5_VL_PROCESSOR, 8.29e9),
    "qwen3_vl_8b": RewardSpec("qwen3_vl_8b", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct", QWEN3_VL_8B,
                              QWEN3_VL_PROCESSOR, 8.77e9),
}
GENERATOR_REWARD = "qwen2_5_vl_3b"

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (published 2.57B parameters)
SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_type="UNetMidBlock2DCrossAttn",
    norm_eps=1e-5, norm_num_groups=32, out_channels=4, projection_class_embeddings_input_dim=2816, sample_size=128,
    transformer_layers_per_block=[1, 2, 10], up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
# stabilityai/stable-diffusion-xl-base-1.0, vae/config.json (83.7M); FLUX.1-dev's: 16 latent channels, shift, no quant
# convs.
SDXL_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
FLUX_VAE = dict(SDXL_VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False)
# stabilityai/stable-diffusion-xl-base-1.0, scheduler (DDIM on its betas; the rollout samples with DDIM)
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
# black-forest-labs/FLUX.1-dev, transformer/config.json has 19 double and 38 single blocks (11.9B); measured at
# `--flux_blocks` (default 2 double + 4 single) at full width: a step costs about (blocks measured / 57) of the full
# one.
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=[16, 56, 56])
FLUX_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                      num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
# pipelines/configs/draft_sdxl.yaml and draft_flux.yaml
DRAFT_SETTINGS = {
    "sdxl": dict(guidance_scale=5.0, max_sequence_length=77, lora_rank=32, velocity_l2_weight=0.1, lr=1e-4),
    "flux": dict(guidance_scale=3.5, max_sequence_length=256, lora_rank=32, velocity_l2_weight=0.1, lr=1e-4),
}
PUBLISHED_PARAMS = {"sdxl_unet": 2.567e9, "sdxl_vae": 83.65e6, "flux_vae": 83.82e6,  # (flux_vae: unverified)
                    "flux_transformer (full depth)": 11.90e9}


# ------------------------------------------------------------------------------------------------ run context
class Skipped(Exception):
    """A part or one measurement that cannot run here; `kind`: missing, option, no_cuda, oom, budget or error."""

    def __init__(self, reason: str, kind: str = "missing"):
        super().__init__(reason)
        self.kind = kind


def skipped(reason: str, kind: str) -> dict:
    return {"skipped": reason, "kind": kind}


class Budget:
    """A deadline; `share(weight, of)` gives a child its part of what is left."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def share(self, weight: float, of: float) -> Budget:
        return Budget(time.perf_counter() + max(self.left(), 0.0) * weight / of)

    def check(self, what: str, predicted_s: float = 0.0) -> None:
        left = self.left()
        if left <= 0 or predicted_s > left:
            predicted = f" (predicted {predicted_s:.0f} s)" if predicted_s else ""
            raise Skipped(f"time budget: {max(left, 0):.0f} s left of this part's share for {what}{predicted}",
                          "budget")


@dataclass
class Context:
    tiny: bool
    device: torch.device
    dtype: torch.dtype
    warmup: int
    repeats: int
    skip: set[str]
    budget: Budget
    config_target_s: float = 30.0
    matmul_tflops: float | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def require(self, module: str):
        """Import an optional module, or `Skipped` saying why not (absent, or simulated absent by `--skip`)."""
        if module in self.skip:
            raise Skipped(f"{module} skipped (--skip {module})", "option")
        try:
            return importlib.import_module(module)
        except ImportError as error:
            raise Skipped(f"{module} is not importable ({error}); bring it as a wheel (module docstring)",
                          "missing") from error

    def require_cuda(self) -> None:
        if not self.tiny and not self.cuda:
            raise Skipped("no CUDA device: the real-size parts need a GPU (run with --tiny on a CPU)", "no_cuda")


def sync(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.synchronize(ctx.device)


def free_memory(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def guarded(ctx: Context, what: str, function: Callable[[], dict]) -> dict:
    """`function()`, or a `skipped` record: what cannot run (missing module, CUDA OOM, budget) or an error."""
    result = None
    try:
        result = function()
    except Skipped as error:
        result = skipped(str(error), error.kind)
    except Exception as error:  # noqa: BLE001 - a benchmark part must never take the others down
        if is_oom(error):
            result = skipped(f"CUDA out of memory: {str(error).splitlines()[0][:200]}", "oom")
        else:
            result = skipped(f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}",
                             "error")
            result["traceback"] = traceback.format_exc(limit=8)
    free_memory(ctx)  # after the except block: the traceback's frames (and their tensors) are gone
    if "skipped" in result:
        print(f"  {what}: skipped ({result['kind']}): {result['skipped']}", flush=True)
    return result


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Call:
    seconds: float
    peak_growth: int | None  # bytes allocated at the peak minus before the call (CUDA only)
    peak_total: int | None


def timed_call(ctx: Context, function: Callable[[], object]) -> Call:
    sync(ctx)
    base = None
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
    start = time.perf_counter()
    function()
    sync(ctx)
    seconds = time.perf_counter() - start
    if not ctx.cuda:
        return Call(seconds, None, None)
    peak = torch.cuda.max_memory_allocated(ctx.device)
    return Call(seconds, peak - base, peak)


def count_flops(function: Callable[[], object]) -> tuple[int | None, str]:
    """FLOPs of one call counted by `torch.utils.flop_counter` (backward and recomputation included)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter:
            function()
        return int(counter.get_total_flops()), "counted (torch.utils.flop_counter)"
    except Exception as error:  # noqa: BLE001 - the counter's failure is reported; the call's own errors are not ours
        if is_oom(error):
            raise
        function()  # the warm-up call, without the counter (raises if the call itself is what failed)
        return None, f"counter failed ({type(error).__name__}: {str(error)[:120]}); not counted"


def measure_interleaved(ctx: Context, functions: dict[str, Callable[[], object]], flops: bool) -> dict:
    """Warm-up (with `flops`, the first call of each side is counted), then rounds of one timed call each:
    `ctx.repeats` of them, fewer (at least one) where the warm-up says they would take over `ctx.config_target_s`."""
    result = {name: {"flops": None, "flops_source": None, "calls": []} for name in functions}
    warm = 0.0
    for round_index in range(max(ctx.warmup, 1)):
        warm = 0.0
        for name, function in functions.items():
            sync(ctx)
            start = time.perf_counter()
            if flops and round_index == 0:
                result[name]["flops"], result[name]["flops_source"] = count_flops(function)
            else:
                function()
            sync(ctx)
            warm += time.perf_counter() - start
    repeats = max(1, min(ctx.repeats, int(ctx.config_target_s / max(warm, 1e-9))))
    for _ in range(repeats):
        for name, function in functions.items():
            result[name]["calls"].append(timed_call(ctx, function))
    return {name: summarise(entry) for name, entry in result.items()}


def summarise(entry: dict) -> dict:
    calls = entry["calls"]
    seconds = [c.seconds for c in calls]
    growth = [c.peak_growth for c in calls if c.peak_growth is not None]
    total = [c.peak_total for c in calls if c.peak_total is not None]
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "min_ms": 1000 * min(seconds),
        "repeats": len(seconds),
        "peak_growth_mib": max(growth) / 2**20 if growth else None,
        "peak_total_gib": max(total) / 2**30 if total else None,
        "flops": entry["flops"],
        "flops_source": entry["flops_source"],
    }


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ part: matmul
def measure_matmul(ctx: Context) -> dict:
    """The device's dense matmul rate: `torch.matmul` of two n x n matrices (bf16 8192 on a GPU)."""
    ctx.require_cuda()
    n, dtype = (8192, torch.bfloat16) if ctx.cuda else (512, torch.float32)
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    iterations = 20 if ctx.cuda else 5
    sync(ctx)
    start = time.perf_counter()
    for _ in range(iterations):
        torch.matmul(a, b)
    sync(ctx)
    seconds = (time.perf_counter() - start) / iterations
    tflops = 2 * n**3 / seconds / 1e12
    ctx.matmul_tflops = tflops
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "ms": 1000 * seconds, "tflops": tflops}


# ------------------------------------------------------------------------------------------------ part: configs
def reward_config(spec: RewardSpec, tokenizer):
    """The transformers config of `spec` at its published size, with `tokenizer`'s special-token ids."""
    ids = tokenizer.convert_tokens_to_ids
    token_ids = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                     vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if max(token_ids.values()) >= spec.config["text"]["vocab_size"]:
        raise ValueError(f"the local tokenizer's ids do not fit {spec.name}'s vocabulary")
    text = dict(spec.config["text"], bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    if spec.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as config_class
    else:
        from transformers import Qwen3VLConfig as config_class
    return config_class(text_config=text, vision_config=dict(spec.config["vision"]),
                        tie_word_embeddings=spec.config["tie_word_embeddings"], **token_ids)


def build_reward_backbone(spec: RewardSpec, device: torch.device | str, dtype: torch.dtype, seed: int = 0):
    """`(model, processor)`: the real-size architecture with random weights, built directly on `device`."""
    from transformers import AutoModelForImageTextToText

    from zreward_diffusers.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(spec.family)
    config = reward_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), real_processor(spec, tokenizer)


def real_processor(spec: RewardSpec, tokenizer):
    """The family's official processor with the published image settings, around a locally built tokenizer."""
    from transformers import Qwen2VLImageProcessor

    settings = dict(spec.processor)
    image_processor = Qwen2VLImageProcessor(**settings)
    if spec.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(image_processor=image_processor, video_processor=Qwen2VLVideoProcessor(),
                                   tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

    video = Qwen3VLVideoProcessor(patch_size=settings["patch_size"], image_mean=settings["image_mean"],
                                  image_std=settings["image_std"])
    return Qwen3VLProcessor(image_processor=image_processor, video_processor=video, tokenizer=tokenizer,
                            chat_template=tokenizer.chat_template)


def build_sdxl_components(device, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**SDXL_UNET), "vae": AutoencoderKL(**SDXL_VAE)}


def build_flux_components(device, double_blocks: int, single_blocks: int, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    torch.manual_seed(seed)
    with torch.device(device):
        config = dict(FLUX_TRANSFORMER, num_layers=double_blocks, num_single_layers=single_blocks)
        return {"transformer": FluxTransformer2DModel(**config), "vae": AutoencoderKL(**FLUX_VAE)}


def check_configs(ctx: Context, args) -> dict:
    """A dry run of every real-size model on the meta device (no memory, no arithmetic, a few seconds): parameter
    counts against the published ones; each reward's real processor and local tokenizer around it, with the sequence
    length of a rubric row at 512 and 1024 px; each generator pipeline assembled as the generator part builds it,
    its prompt encoded, one denoiser call and the VAE decode (output shapes)."""
    from pipelines.rollout import rollout_for
    from zreward_diffusers import ZRewardScorer
    from zreward_diffusers.rubric import Rubric

    meta = torch.device("meta")
    rows, result = [], {}

    def row(name: str, built: int, published: float | None, **extra) -> None:
        deviation = None if published is None else built / published - 1
        rows.append({"model": name, "params": built, "published": published, "deviation": deviation,
                     "ok": deviation is None or abs(deviation) < 0.01, **extra})

    for spec in REWARD_MODELS.values():
        model, processor = build_reward_backbone(spec, meta, torch.bfloat16)
        scorer = ZRewardScorer(model, processor, Rubric())
        text = scorer.build_text(PROMPTS[0], scorer.rubric.dimension_names[0])
        shapes = {f"{size} px": {"image_tokens": scorer.image_transform.num_image_tokens(size, size),
                                 "sequence_length": int(scorer._encode_text(text, size, size)["input_ids"].shape[-1])}
                  for size in (512, 1024)}
        row(f"{spec.name} ({spec.hub})", parameters(model), spec.published_params, rows_per_image=shapes)
    result["rows"] = rows
    try:
        ctx.require("diffusers")
        flux = build_flux_components(meta, FLUX_TRANSFORMER["num_layers"], FLUX_TRANSFORMER["num_single_layers"])
        row("flux_transformer (full depth)", parameters(flux["transformer"]),
            PUBLISHED_PARAMS["flux_transformer (full depth)"])
        del flux
        for kind in ("sdxl", "flux"):
            pipe = build_generator(kind, meta, torch.bfloat16, tiny=False, flux_blocks=args.flux_blocks)
            settings = DRAFT_SETTINGS[kind]
            rollout = rollout_for(pipe, 1024, 1024, settings["guidance_scale"], settings["max_sequence_length"])
            rollout.set_timesteps(28)
            cond = rollout.encode([PROMPTS[0]])
            latents = rollout.initial_latents(1, torch.Generator().manual_seed(0))
            output = rollout.model_output(latents, 0, cond)
            images = rollout.decode(latents)
            denoiser = pipe.unet if kind == "sdxl" else pipe.transformer
            blocks = "+".join(map(str, args.flux_blocks))
            name = "sdxl_unet" if kind == "sdxl" else f"flux_transformer ({blocks} blocks, measured)"
            row(name, parameters(denoiser), PUBLISHED_PARAMS.get(name), latents=list(latents.shape),
                denoiser_output=list(output.shape), decoded=list(images.shape))
            row(f"{kind}_vae", parameters(pipe.vae), PUBLISHED_PARAMS[f"{kind}_vae"])
    except Skipped as error:
        result["generators"] = skipped(str(error), error.kind)
    return result


# ------------------------------------------------------------------------------------------------ part: reward
def reward_settings(ctx: Context, args) -> tuple[list[int], list[int]]:
    sizes = args.sizes or ([64, 112] if ctx.tiny else [512, 1024])
    batches = args.batch_sizes or ([1, 2] if ctx.tiny else [1, 8])
    return sizes, batches


def build_scorer(ctx: Context, spec: RewardSpec):
    """The `ZRewardScorer` of `spec` on the context's device (`--tiny`: the tiny backbone of its family)."""
    from zreward_diffusers import ZRewardScorer
    from zreward_diffusers.rubric import Rubric
    from zreward_diffusers.testing import build_tiny_scorer

    if ctx.tiny:
        scorer = build_tiny_scorer(spec.family)
        scorer.model.to(ctx.dtype)
        return scorer.to(ctx.device)
    model, processor = build_reward_backbone(spec, ctx.device, ctx.dtype)
    return ZRewardScorer(model, processor, Rubric()).to(ctx.device)


def flops_estimate(scorer, rows: int, sequence_length: int, patches_per_image: int, checkpointing: bool) -> int | None:
    """2 x parameters x tokens per forward, for text and vision towers; backward of a frozen model computes input
    gradients only (one more forward's worth, not two: 4 x P x T rather than the usual 6); recomputation adds one."""
    inner = getattr(scorer.model, "model", None)
    language, visual = getattr(inner, "language_model", None), getattr(inner, "visual", None)
    if language is None or visual is None:
        return None
    text_params = parameters(language) - language.get_input_embeddings().weight.numel()
    forward = 2 * (text_params * rows * sequence_length + parameters(visual) * rows * patches_per_image)
    return forward * (3 if checkpointing else 2)


def measure_reward_config(ctx: Context, scorer, size: int, batch: int, checkpointing: bool,
                          reference: dict | None) -> dict:
    """One configuration; `reference`: the FLOPs counted at the smallest batch of this size and checkpointing, which
    larger batches scale (by rows x sequence length) rather than count again (the counter's Python dispatch of every
    operator would cost tens of seconds at batch 8, 1024 px)."""
    from benchmarks.loss_overhead import bare_backbone_inputs, bare_score_logits
    from zreward_diffusers import ZRewardLoss

    loss_fn = ZRewardLoss(scorer)
    if checkpointing:
        loss_fn.enable_gradient_checkpointing()
    else:
        loss_fn.disable_gradient_checkpointing()
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    images = (torch.rand(batch, 3, size, size, generator=generator, device=ctx.device) * 2 - 1).requires_grad_(True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    inputs = bare_backbone_inputs(loss_fn, images, prompts)
    pixel_values = inputs["pixel_values"]
    values = []

    def loss_step() -> None:
        images.grad = None
        loss = loss_fn(images, prompts)
        loss.backward()
        values.append(loss.detach())

    def bare_step() -> None:
        pixel_values.grad = None
        bare_score_logits(scorer, inputs).sum().backward()

    sides = measure_interleaved(ctx, {"loss": loss_step, "bare": bare_step}, flops=reference is None)
    transform = scorer.image_transform
    rows = batch * len(loss_fn.dimensions)
    sequence_length = int(inputs["input_ids"].shape[-1])
    patches = int(pixel_values.shape[0]) // rows
    estimate = flops_estimate(scorer, rows, sequence_length, patches, checkpointing)
    for name, side in sides.items():
        counted = None if reference is None else reference[name]["flops"]
        if reference is not None and counted is not None and "counted" in reference[name]["flops_source"]:
            scale = rows * sequence_length / (reference["rows"] * reference["sequence_length"])
            side["flops"] = int(counted * scale)
            side["flops_source"] = (f"scaled from the count at batch {reference['batch']} by rows x sequence length "
                                    f"({scale:.2f}x)")
        if side["flops"] is None and estimate is not None:
            side["flops"], side["flops_source"] = estimate, "estimate: 2 x params x tokens per forward (fallback)"
        if side["flops"] is not None:
            side["tflops_per_s"] = side["flops"] / (side["median_ms"] / 1000) / 1e12
            side["of_matmul"] = side["tflops_per_s"] / ctx.matmul_tflops if ctx.matmul_tflops else None
        growth = side["peak_growth_mib"]
        side["peak_growth_mib_per_image"] = None if growth is None else growth / batch
    ratio = sides["loss"]["median_ms"] / sides["bare"]["median_ms"]
    loss_values = torch.stack(values).float() if values else torch.zeros(0)
    return {
        "size": size, "batch": batch, "checkpointing": checkpointing,
        "resized_to": list(transform.resized_size(size, size)),
        "image_tokens_per_image": transform.num_image_tokens(size, size),
        "vision_patches_per_row": patches, "rows": rows, "sequence_length": sequence_length,
        "loss": sides["loss"], "bare": sides["bare"], "ratio": ratio,
        "goal": LOSS_GOAL, "goal_met": ratio <= LOSS_GOAL,
        "loss_finite": bool(torch.isfinite(loss_values).all()),
    }


def measure_reward_model(ctx: Context, spec: RewardSpec, args, budget: Budget) -> dict:
    ctx.require_cuda()
    budget.check(f"building {spec.name}")
    started = time.perf_counter()
    scorer = build_scorer(ctx, spec)
    result = {"hub": spec.hub, "tiny": ctx.tiny, "params": parameters(scorer.model),
              "build_s": time.perf_counter() - started, "dtype": str(ctx.dtype).replace("torch.", ""),
              "attention": scorer.model.config._attn_implementation, "configs": []}
    print(f"  {spec.name}: {params_text(result['params'])} parameters, built in {result['build_s']:.1f} s", flush=True)
    sizes, batches = reward_settings(ctx, args)
    last = None  # (tokens, seconds per call, checkpointing) of the previous measured configuration
    counted = {}  # (size, checkpointing) -> the configuration whose FLOPs were counted
    for size in sizes:
        for batch in batches:
            for checkpointing in (False, True):
                tokens = batch * (scorer.image_transform.num_image_tokens(size, size) + 100)
                predicted = 0.0
                if last is not None:  # two sides: warm-up (1.5x when counting FLOPs), then the timed repeats
                    per_call = last[1] * tokens / last[0] * (1.35 if checkpointing and not last[2] else 1)
                    warm = 2 * per_call * (max(ctx.warmup, 1) + 0.5 * ((size, checkpointing) not in counted))
                    predicted = warm + min(2 * ctx.repeats * per_call, ctx.config_target_s + 2 * per_call)
                label = f"{size} px, batch {batch}, checkpointing {'on' if checkpointing else 'off'}"

                reference = counted.get((size, checkpointing))

                def run(size=size, batch=batch, checkpointing=checkpointing, predicted=predicted, label=label,
                        reference=reference):
                    budget.check(label, predicted)
                    return measure_reward_config(ctx, scorer, size, batch, checkpointing, reference)

                entry = guarded(ctx, f"{spec.name} {label}", run)
                if "skipped" in entry:
                    entry.update(size=size, batch=batch, checkpointing=checkpointing)
                else:
                    if reference is None and entry["loss"]["flops_source"].startswith("counted"):
                        counted[size, checkpointing] = {"batch": batch, "rows": entry["rows"],
                                                        "sequence_length": entry["sequence_length"],
                                                        "loss": entry["loss"], "bare": entry["bare"]}
                    seconds = max(entry["loss"]["median_ms"], entry["bare"]["median_ms"]) / 1000
                    last = (tokens, seconds, checkpointing)
                    print(f"  {spec.name} {label}: loss {entry['loss']['median_ms']:.1f} ms, bare "
                          f"{entry['bare']['median_ms']:.1f} ms, {entry['ratio']:.3f}x", flush=True)
                result["configs"].append(entry)
    return result  # the scorer goes with this frame; `guarded` then frees the memory


def measure_rewards(ctx: Context, args, budget: Budget) -> dict:
    ctx.require_cuda()
    names = args.models or list(REWARD_MODELS)
    results = {}
    for index, name in enumerate(names):
        share = budget.share(1, len(names) - index)
        results[name] = guarded(ctx, name, lambda name=name, share=share: measure_reward_model(
            ctx, REWARD_MODELS[name], args, share))
    return results


# ------------------------------------------------------------------------------------------------ part: preprocessing
def measure_preprocessing_case(ctx: Context, spec: RewardSpec, size: int, batch: int) -> dict:
    from PIL import Image
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    from zreward_diffusers.image_inputs import image_tensor_to_unit_range
    from zreward_diffusers.preprocessing import image_transform_for

    official = {"torchvision": Qwen2VLImageProcessor(**spec.processor),
                "pil": Qwen2VLImageProcessorPil(**spec.processor)}
    transform = image_transform_for(official["torchvision"])
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    decoded = torch.rand(batch, 3, size, size, generator=generator, device=ctx.device) * 2 - 1  # a VAE's output
    decoded.requires_grad_(True)

    def ours() -> None:  # what ZRewardLoss runs: the range check and mapping, then the transform, on the device
        transform(image_tensor_to_unit_range(decoded, "-1,1"), quantize=True)

    def to_uint8() -> torch.Tensor:
        return ((decoded.detach() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def host_path(processor) -> Callable[[], None]:
        def run() -> None:  # diffusers' output_type="pil", the official processor, pixel_values back to the device
            arrays = to_uint8().permute(0, 2, 3, 1).cpu().numpy()
            images = [Image.fromarray(array) for array in arrays]
            processor(images=images, return_tensors="pt")["pixel_values"].to(ctx.device)
        return run

    def on_device() -> None:  # the torchvision backend given uint8 tensors where they are
        official["torchvision"](images=list(to_uint8()), return_tensors="pt", device=ctx.device)

    functions = {"ours": ours, "torchvision (host path)": host_path(official["torchvision"]),
                 "pil (host path)": host_path(official["pil"]), "torchvision (uint8 on the device)": on_device}
    sides = measure_interleaved(ctx, functions, flops=False)
    reference = sides["ours"]["median_ms"]
    rows = []
    for name, side in sides.items():
        speedup = side["median_ms"] / reference
        entry = {"path": name, "median_ms": side["median_ms"], "min_ms": side["min_ms"], "speedup_of_ours": speedup}
        if "host path" in name:
            entry.update(goal=PREPROCESS_GOAL, goal_met=speedup >= PREPROCESS_GOAL)
        rows.append(entry)
    return {"processor": spec.family, "hub": spec.hub, "size": size, "batch": batch,
            "resized_to": list(transform.resized_size(size, size)), "rows": rows}


def measure_preprocessing(ctx: Context, args, budget: Budget) -> dict:
    ctx.require_cuda()
    sizes = [64, 96] if ctx.tiny else [512, 1024]
    results = []
    for name in ("qwen2_5_vl_3b", "qwen3_vl_8b"):
        spec = REWARD_MODELS[name]
        for size in sizes:
            label = f"{spec.family} {size} px"

            def run(spec=spec, size=size, label=label) -> dict:
                budget.check(label)
                return measure_preprocessing_case(ctx, spec, size, args.preprocess_batch)

            entry = guarded(ctx, f"preprocessing {label}", run)
            entry.setdefault("processor", spec.family)
            entry.setdefault("size", size)
            results.append(entry)
    return {"cases": results}


# ------------------------------------------------------------------------------------------------ part: generator
def clip_text_encoder(tokenizer, hidden: int, projection: int | None, device):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=2, num_attention_heads=hidden // 64, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device(device):
        return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_generator(kind: str, device: torch.device, dtype: torch.dtype, tiny: bool, flux_blocks=(2, 4)):
    """A `StableDiffusionXLPipeline` / `FluxPipeline` from random components (`tiny`: `pipelines.tiny`'s), built on
    `device` (meta for the dry run), in `dtype`, its modules in eval mode."""
    from pipelines.tiny import build_tiny_pipeline, tiny_clip_tokenizer, tiny_t5_tokenizer

    if tiny:
        return build_tiny_pipeline(kind).to(device, dtype)
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusionXLPipeline

    clip = tiny_clip_tokenizer()
    if kind == "sdxl":
        components = build_sdxl_components(device)
        pipe = StableDiffusionXLPipeline(
            **components, scheduler=DDIMScheduler(**SDXL_SCHEDULER), tokenizer=clip, tokenizer_2=clip,
            text_encoder=clip_text_encoder(clip, 768, None, device),  # CLIP ViT-L/14's width, 2 layers
            text_encoder_2=clip_text_encoder(clip, 1280, 1280, device),  # OpenCLIP bigG's width, 2 layers
            force_zeros_for_empty_prompt=True)
    else:
        from transformers import T5Config, T5EncoderModel

        components = build_flux_components(device, *flux_blocks)
        t5 = tiny_t5_tokenizer(DRAFT_SETTINGS["flux"]["max_sequence_length"])
        t5_config = T5Config(vocab_size=len(t5), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                             feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        with torch.device(device):
            t5_encoder = T5EncoderModel(t5_config)  # T5-XXL's width, 1 layer
        pipe = FluxPipeline(**components, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
                            text_encoder=clip_text_encoder(clip, 768, None, device), tokenizer=clip,
                            text_encoder_2=t5_encoder, tokenizer_2=t5)
    pipe.to(device, dtype)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def measure_generator(ctx: Context, kind: str, loss_fn, args, budget: Budget) -> dict:
    from pipelines.attention import configure_attention
    from pipelines.lora import add_lora, denoiser_of
    from pipelines.methods import sample
    from pipelines.rollout import rollout_for

    ctx.require_cuda()
    ctx.require("diffusers")
    budget.check(f"building {kind}")
    settings = DRAFT_SETTINGS[kind]
    size = 32 if ctx.tiny else 1024
    steps = args.steps or (6 if ctx.tiny else 28)
    started = time.perf_counter()
    pipe = build_generator(kind, ctx.device, ctx.dtype, ctx.tiny, args.flux_blocks)
    configure_attention(pipe, prefer_xformers=False)  # SDPA; xformers gets a row of its own below
    parameters_lora = add_lora(pipe, rank=settings["lora_rank"])
    denoiser = denoiser_of(pipe)
    result = {"tiny": ctx.tiny, "size": size, "steps": steps, "batch": args.draft_batch,
              "denoiser_params": parameters(denoiser) - sum(p.numel() for p in parameters_lora),
              "vae_params": parameters(pipe.vae), "lora_params": sum(p.numel() for p in parameters_lora),
              "reward_params": parameters(loss_fn.scorer.model), "settings": settings,
              "build_s": time.perf_counter() - started, "rows": []}
    if kind == "flux" and not ctx.tiny:
        result["flux_blocks"] = {"double": args.flux_blocks[0], "single": args.flux_blocks[1],
                                 "published": [FLUX_TRANSFORMER["num_layers"], FLUX_TRANSFORMER["num_single_layers"]]}
    print(f"  {kind}: denoiser {params_text(result['denoiser_params'])}, built in {result['build_s']:.1f} s",
          flush=True)
    max_sequence_length = 16 if ctx.tiny else settings["max_sequence_length"]
    rollout = rollout_for(pipe, size, size, settings["guidance_scale"], max_sequence_length)
    optimizer = torch.optim.AdamW(parameters_lora, lr=settings["lr"])
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.draft_batch)]
    weight = settings["velocity_l2_weight"]

    def draft_step(k: int, checkpointing: bool, phases: dict) -> None:
        """One step of `pipelines.reward_finetune`'s training loop: sample, reward, backward, optimizer step."""
        start = time.perf_counter()
        out = sample(rollout, prompts, steps, "draft", k=k, generator=torch.Generator().manual_seed(0),
                     rng=np.random.default_rng(0), use_checkpoint=checkpointing, velocity_l2=weight > 0)
        sync(ctx)
        sampled = time.perf_counter()
        loss = loss_fn.loss_from_reward(loss_fn.reward(out.images, prompts))
        if out.velocity_l2 is not None:
            loss = loss + weight * out.velocity_l2
        sync(ctx)
        rewarded = time.perf_counter()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(ctx)
        phases.update(sample_s=sampled - start, reward_forward_s=rewarded - sampled,
                      backward_s=time.perf_counter() - rewarded)

    def measure_row(k: int, checkpointing: bool, attention: str) -> dict:
        if checkpointing:
            loss_fn.enable_gradient_checkpointing()
        else:
            loss_fn.disable_gradient_checkpointing()
        phases: dict = {}
        for _ in range(max(ctx.warmup, 1)):
            draft_step(k, checkpointing, phases)
        calls = [timed_call(ctx, lambda: draft_step(k, checkpointing, phases)) for _ in range(args.draft_repeats)]
        seconds = statistics.median(c.seconds for c in calls)
        growth = [c.peak_growth for c in calls if c.peak_growth is not None]
        total = [c.peak_total for c in calls if c.peak_total is not None]
        return {"k": k, "checkpointing": checkpointing, "attention": attention, "step_s": seconds,
                "phases_s": phases, "peak_growth_mib": max(growth) / 2**20 if growth else None,
                "peak_total_gib": max(total) / 2**30 if total else None}

    # First the reward alone, forward + backward on decoded images of this size (checkpointed, as in the steps):
    # its share of the DRaFT-1 step is a goal of its own, measured before the budget runs short.
    def reward_alone() -> dict:
        budget.check(f"{kind}: the reward alone")
        loss_fn.enable_gradient_checkpointing()
        images = (torch.rand(args.draft_batch, 3, size, size, device=ctx.device) * 2 - 1).requires_grad_(True)

        def step() -> None:
            images.grad = None
            loss_fn(images, prompts).backward()

        side = measure_interleaved(ctx, {"reward": step}, flops=False)["reward"]
        return {"median_s": side["median_ms"] / 1000, "peak_growth_mib": side["peak_growth_mib"]}

    result["reward_alone"] = guarded(ctx, f"{kind} reward alone", reward_alone)

    ks = sorted({k for k in (args.ks or [1, 5]) if 1 <= k < steps} | {steps})
    plan = [(k, True, "sdpa") for k in ks] + [(1, False, "sdpa"), (1, True, "xformers")]
    measured = {"k1_seconds": None}
    calls = max(ctx.warmup, 1) + args.draft_repeats
    for k, checkpointing, attention in plan:
        chain = " (full chain)" if k == steps else ""
        label = f"{kind} K={k}{chain}, checkpointing {'on' if checkpointing else 'off'}, {attention}"

        def run(k=k, checkpointing=checkpointing, attention=attention, label=label) -> dict:
            k1_seconds = measured["k1_seconds"]
            predicted = 0.0 if k1_seconds is None else calls * k1_seconds * (1 + 0.15 * (k - 1))
            if attention == "xformers":
                ctx.require("xformers")
                if not ctx.cuda:
                    raise Skipped("xformers runs on CUDA only", "no_cuda")
                budget.check(label, predicted)
                if configure_attention(pipe, prefer_xformers=True) != "xformers":
                    raise Skipped("xformers is installed but unusable here (pipelines.attention logged why)",
                                  "missing")
                try:
                    return measure_row(k, checkpointing, attention)
                finally:
                    configure_attention(pipe, prefer_xformers=False)
            budget.check(label, predicted)
            return measure_row(k, checkpointing, attention)

        entry = guarded(ctx, label, run)
        if "skipped" in entry:
            entry.update(k=k, checkpointing=checkpointing, attention=attention)
        else:
            if k == 1 and checkpointing and attention == "sdpa":
                measured["k1_seconds"] = entry["step_s"]
            print(f"  {label}: {entry['step_s']:.2f} s a step, peak growth "
                  f"{fmt(entry['peak_growth_mib'], '.0f', ' MiB')}", flush=True)
        result["rows"].append(entry)

    summarise_generator(result, steps)
    return result  # the pipeline goes with this frame; `guarded` then frees the memory


def summarise_generator(result: dict, steps: int) -> None:
    rows = {(r["k"], r["checkpointing"], r["attention"]): r for r in result["rows"] if "skipped" not in r}
    k1 = rows.get((1, True, "sdpa"))
    full = rows.get((steps, True, "sdpa"))
    for row in result["rows"]:
        if "skipped" in row or k1 is None or row.get("attention") != "sdpa":
            continue
        if row["checkpointing"] and k1["peak_growth_mib"]:
            row["growth_vs_k1"] = row["peak_growth_mib"] / k1["peak_growth_mib"]
            row["total_vs_k1"] = row["peak_total_gib"] / k1["peak_total_gib"]
    summary = {}
    alone = result.get("reward_alone", {})
    if k1 is not None and "median_s" in alone:
        summary["reward_share_of_draft1_step"] = alone["median_s"] / k1["step_s"]
    if k1 is not None and full is not None and k1["peak_growth_mib"]:
        ratio = full["peak_growth_mib"] / k1["peak_growth_mib"]
        summary.update(full_chain_vs_k1_memory=ratio, memory_goal=MEMORY_GOAL, memory_goal_met=ratio <= MEMORY_GOAL)
    xformers = rows.get((1, True, "xformers"))
    if k1 is not None and xformers is not None:
        summary["xformers_vs_sdpa_step_time"] = xformers["step_s"] / k1["step_s"]
    result["summary"] = summary


def measure_generators(ctx: Context, args, budget: Budget) -> dict:
    ctx.require_cuda()
    ctx.require("diffusers")
    ctx.require("peft")
    from zreward_diffusers import ZRewardLoss

    spec = REWARD_MODELS[GENERATOR_REWARD]
    loss_fn = ZRewardLoss(build_scorer(ctx, spec))
    results = {"reward": spec.hub + (" (tiny)" if ctx.tiny else " size, random weights")}
    kinds, weight = args.generators, {"sdxl": 0.6, "flux": 0.4}
    for index, kind in enumerate(kinds):
        share = budget.share(weight[kind], sum(weight[k] for k in kinds[index:]))
        results[kind] = guarded(ctx, kind, lambda kind=kind, share=share: measure_generator(
            ctx, kind, loss_fn, args, share))
    return results


# ------------------------------------------------------------------------------------------------ report
def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "diffusers", "accelerate", "peft", "xformers", "open_clip_torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(ctx: Context) -> dict:
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": git_commit(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions(),
            "device": str(ctx.device), "dtype": str(ctx.dtype).replace("torch.", ""), "tiny": ctx.tiny}
    if ctx.cuda:
        properties = torch.cuda.get_device_properties(ctx.device)
        info.update(device_name=properties.name, device_memory_gib=properties.total_memory / 2**30,
                    capability=f"{properties.major}.{properties.minor}", cuda=torch.version.cuda)
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def params_text(value: float) -> str:
    """A parameter count: 3.75B, 83.7M, 0.26M."""
    return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.3g}M"


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def markdown(results: dict) -> str:
    m = results["machine"]
    versions_line = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    memory = f", {m['device_memory_gib']:.0f} GiB" if "device_memory_gib" in m else ""
    models = ("TINY models (--tiny): the numbers mean nothing" if m["tiny"]
              else "real-size architectures, random weights")
    lines = [
        "# gpu_check",
        "",
        f"{m['device_name']}{memory}; {models}, {m['dtype']}; {versions_line}; commit {m['commit'] or 'unknown'}; "
        f"{m['date']}; wall {results['wall_s']:.0f} s.",
        "",
    ]
    matmul = results["parts"].get("matmul", {})
    if "tflops" in matmul:
        lines += [f"Matmul rate ({matmul['dtype']}, {matmul['n']}^2): **{matmul['tflops']:.3g} TFLOP/s** "
                  f"({matmul['ms']:.2f} ms a product).", ""]
    lines += reward_table(results["parts"].get("reward"))
    lines += preprocessing_table(results["parts"].get("preprocessing"))
    lines += generator_table(results["parts"].get("generator"))
    lines += configs_table(results["parts"].get("configs"))
    if results["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s}" for s in results["skipped"]] + [""]
    return "\n".join(lines) + "\n"


def part_skipped(title: str, part) -> list[str] | None:
    if part is None:
        return [f"## {title}", "", "not run (--parts)", ""]
    if "skipped" in part:
        return [f"## {title}", "", f"skipped: {part['skipped']}", ""]
    return None


def reward_table(part) -> list[str]:
    title = f"Reward: `ZRewardLoss` forward+backward vs bare backbone (goal <= {LOSS_GOAL:.2f}x)"
    if (early := part_skipped(title, part)) is not None:
        return early
    lines = [f"## {title}", "",
             "| model | image | batch | ckpt | tokens / row | bare (ms) | loss (ms) | loss / bare | loss TFLOP/s | "
             "of matmul | peak growth / image (MiB) | peak total (GiB) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model in part.items():
        if "skipped" in model:
            lines.append(f"| {name} | skipped: {model['skipped']} |||||||||||")
            continue
        label = f"{name} ({params_text(model['params'])})"
        for c in model["configs"]:
            ckpt = "on" if c["checkpointing"] else "off"
            if "skipped" in c:
                lines.append(f"| {label} | {c['size']} px | {c['batch']} | {ckpt} | skipped ({c['kind']}): "
                             f"{c['skipped']} ||||||||")
                continue
            loss, bare = c["loss"], c["bare"]
            lines.append(
                f"| {label} | {c['size']} → {c['resized_to'][0]} px | {c['batch']} | {ckpt} | {c['sequence_length']} "
                f"| {bare['median_ms']:.1f} | {loss['median_ms']:.1f} | **{c['ratio']:.3f}x** | "
                f"{fmt(loss.get('tflops_per_s'), '.3g')} | {fmt(loss.get('of_matmul'), '.0%')} | "
                f"{fmt(loss['peak_growth_mib_per_image'], '.0f')} | {fmt(loss['peak_total_gib'], '.1f')} |")
    lines += ["", "Rows are batch x 4 rubric dimensions (the vision tower encodes each image once per dimension). "
              "TFLOP/s: FLOPs of the loss step as counted (recomputation included when checkpointing) / median time; "
              "of matmul: that against the measured matmul rate. Peak growth: over the memory allocated before the "
              "step (weights, inputs).", ""]
    return lines


def preprocessing_table(part) -> list[str]:
    title = ("Preprocessing: differentiable transform on the device vs official processors "
             f"(goal >= {PREPROCESS_GOAL:.0f}x)")
    if (early := part_skipped(title, part)) is not None:
        return early
    lines = [f"## {title}", "", "| processor | image → resized | batch | path | median (ms) | vs ours |",
             "|---|---|---:|---|---:|---:|"]
    for case in part["cases"]:
        if "skipped" in case:
            lines.append(f"| {case['processor']} | {case['size']} px | | skipped: {case['skipped']} | | |")
            continue
        for row in case["rows"]:
            ratio = "1.00x" if row["path"] == "ours" else f"{row['speedup_of_ours']:.2f}x slower"
            if "goal_met" in row:
                ratio += " (met)" if row["goal_met"] else " (missed)"
            lines.append(f"| {case['processor']} | {case['size']} → {case['resized_to'][0]} px | {case['batch']} | "
                         f"{row['path']} | {row['median_ms']:.2f} | {ratio} |")
    return lines + ["", "ours: float images in [-1, 1] on the device → `pixel_values` on the device (forward, "
                    "quantised); host path: to uint8 on the host, PIL images, the processor, back to the device.", ""]


def generator_table(part) -> list[str]:
    title = f"Generator: DRaFT steps with the 3B-size reward (goal: full chain <= {MEMORY_GOAL}x K = 1)"
    if (early := part_skipped(title, part)) is not None:
        return early
    lines = [f"## {title}", ""]
    for kind in ("sdxl", "flux"):
        result = part.get(kind)
        if result is None:
            continue
        if "skipped" in result:
            lines += [f"{kind}: skipped ({result['kind']}): {result['skipped']}", ""]
            continue
        blocks = result.get("flux_blocks")
        depth = f", {blocks['double']} double + {blocks['single']} single blocks of 19 + 38" if blocks else ""
        lines += [f"**{kind}**: denoiser {params_text(result['denoiser_params'])}{depth}, {result['size']} px, "
                  f"T = {result['steps']}, batch {result['batch']}, LoRA rank {result['settings']['lora_rank']}, "
                  f"guidance {result['settings']['guidance_scale']}", "",
                  "| K | ckpt | attention | step (s) | sample / reward fwd / backward (s) | peak growth (MiB) | "
                  "vs K = 1 | peak total (GiB) |", "|---:|---|---|---:|---|---:|---:|---:|"]
        for row in result["rows"]:
            ckpt = "on" if row["checkpointing"] else "off"
            if "skipped" in row:
                lines.append(f"| {row['k']} | {ckpt} | {row['attention']} | skipped ({row['kind']}): {row['skipped']} "
                             "|||||")
                continue
            p = row["phases_s"]
            phases = f"{p['sample_s']:.2f} / {p['reward_forward_s']:.2f} / {p['backward_s']:.2f}"
            lines.append(f"| {row['k']} | {ckpt} | {row['attention']} | {row['step_s']:.2f} | {phases} | "
                         f"{fmt(row['peak_growth_mib'], '.0f')} | {fmt(row.get('growth_vs_k1'), '.2f', 'x')} | "
                         f"{fmt(row['peak_total_gib'], '.1f')} |")
        s, alone = result["summary"], result.get("reward_alone", {})
        notes = []
        if "median_s" in alone:
            notes.append(f"reward alone (forward+backward, checkpointed): {alone['median_s']:.2f} s")
        if "reward_share_of_draft1_step" in s:
            notes.append(f"its share of the DRaFT-1 step: **{s['reward_share_of_draft1_step']:.0%}**")
        if "full_chain_vs_k1_memory" in s:
            notes.append(f"full chain vs K = 1 memory: **{s['full_chain_vs_k1_memory']:.2f}x** "
                         f"({'met' if s['memory_goal_met'] else 'missed'})")
        if "xformers_vs_sdpa_step_time" in s:
            notes.append(f"xformers / SDPA step time: {s['xformers_vs_sdpa_step_time']:.2f}x")
        lines += ["", "; ".join(notes) + ".", ""]
    return lines


def configs_table(part) -> list[str]:
    title = "Real-size models: dry run on the meta device"
    if (early := part_skipped(title, part)) is not None:
        return early
    lines = [f"## {title}", "", "| model | parameters | published | deviation | shapes |", "|---|---:|---:|---:|---|"]
    for row in part["rows"]:
        if row["published"] is None:
            published, deviation = "–", "–"
        else:
            published = params_text(row["published"])
            deviation = f"{row['deviation']:+.2%}{'' if row['ok'] else ' (check the config)'}"
        if "rows_per_image" in row:
            shapes = "; ".join(f"{size}: {v['image_tokens']} image tokens, {v['sequence_length']} a row"
                               for size, v in row["rows_per_image"].items())
        elif "decoded" in row:
            shapes = f"latents {row['latents']} → output {row['denoiser_output']}, decoded {row['decoded']}"
        else:
            shapes = ""
        lines.append(f"| {row['model']} | {params_text(row['params'])} | {published} | {deviation} | {shapes} |")
    if "generators" in part:
        lines.append(f"| generators | skipped: {part['generators']['skipped']} | | | |")
    return lines + [""]


def collect_skipped(value, path: str = "") -> list[str]:
    """Every `skipped` record in the results, as 'where: (kind) reason'."""
    found = []
    if isinstance(value, dict):
        if "skipped" in value:
            where = path + "".join(f" {key}={value[key]}" for key in ("size", "batch", "checkpointing", "k",
                                                                       "attention") if key in value)
            found.append(f"{where}: ({value['kind']}) {value['skipped']}")
        for key, item in value.items():
            found += collect_skipped(item, f"{path}/{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += collect_skipped(item, f"{path}[{index}]")
    return found


# ------------------------------------------------------------------------------------------------ main
PARTS = ("configs", "preprocessing", "reward", "generator")
PART_WEIGHTS = {"configs": 0.02, "preprocessing": 0.06, "reward": 0.57, "generator": 0.35}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
        epilog="Not yet run on a GPU; `--tiny` runs every part at tiny sizes on the CPU (tests/test_gpu_check.py).")
    measured = parser.add_argument_group("Measurement")
    measured.add_argument("--tiny", action="store_true",
                          help="tiny models of every part on the CPU (the tests run this; the numbers mean nothing)")
    measured.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    measured.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    measured.add_argument("--models", nargs="+", choices=list(REWARD_MODELS), default=None,
                          help="reward models (default: all three)")
    measured.add_argument("--sizes", type=int, nargs="+", default=None, help="reward image sizes (default 512 1024)")
    measured.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="reward batches (default 1 8)")
    measured.add_argument("--preprocess_batch", type=int, default=16)
    measured.add_argument("--generators", nargs="+", choices=("sdxl", "flux"), default=["sdxl", "flux"])
    measured.add_argument("--steps", type=int, default=None, help="sampling steps T (default 28, as the draft "
                          "configs; 6 with --tiny)")
    measured.add_argument("--ks", type=int, nargs="+", default=None, help="DRaFT-K values besides the full chain "
                          "(default 1 5)")
    measured.add_argument("--flux_blocks", type=int, nargs=2, default=[2, 4], metavar=("DOUBLE", "SINGLE"),
                          help="Flux depth measured (published: 19 double + 38 single)")
    measured.add_argument("--draft_batch", type=int, default=1)
    measured.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first one counts FLOPs)")
    measured.add_argument("--repeats", type=int, default=None, help="timed repeats a reward / preprocessing side "
                          "(default 3; 2 with --tiny)")
    measured.add_argument("--draft_repeats", type=int, default=1, help="timed DRaFT steps a row")
    robust = parser.add_argument_group("Budget and robustness")
    robust.add_argument("--budget_s", type=float, default=450.0,
                        help="wall-clock budget from start-up, shared out over the parts; what would exceed it is "
                        "skipped with the reason")
    robust.add_argument("--config_target_s", type=float, default=30.0,
                        help="the timed repeats of one configuration are cut (to at least one) where the warm-up "
                        "says they would take longer than this")
    robust.add_argument("--skip", nargs="+", default=[], metavar="MODULE",
                        help="treat these optional modules as missing (e.g. xformers, diffusers): the parts that "
                        "need them report themselves skipped")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", type=Path, default=Path("runs/gpu_check"),
                        help="folder for gpu_check.json and gpu_check.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, started: float | None = None) -> dict:
    """Run the chosen parts, write `gpu_check.json` and `gpu_check.md` under `--out`; returns the results.

    `started`: when the budget's clock started (the command line passes the module's import time)."""
    args = parse_args(argv)
    started = time.perf_counter() if started is None else started
    logger = logging.getLogger("zreward_diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # random weights: the scorer's low-mass warning is expected
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
            return run(args, started)
    finally:
        logger.setLevel(level)


def run(args, started: float) -> dict:
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")  # every real-size part reports itself skipped: no CUDA
    ctx = Context(tiny=args.tiny, device=device,
                  dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                  warmup=args.warmup, repeats=args.repeats or (2 if args.tiny else 3), skip=set(args.skip),
                  budget=Budget(started + args.budget_s), config_target_s=args.config_target_s)
    torch.manual_seed(0)
    print(f"gpu_check: {'tiny, ' if args.tiny else ''}{device}, {str(ctx.dtype).replace('torch.', '')}, budget "
          f"{args.budget_s:.0f} s", flush=True)
    results = {"machine": machine_info(ctx), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items()}, "parts": {}}
    results["parts"]["matmul"] = guarded(ctx, "matmul", lambda: measure_matmul(ctx))
    functions = {"configs": lambda budget: check_configs(ctx, args),
                 "preprocessing": lambda budget: measure_preprocessing(ctx, args, budget),
                 "reward": lambda budget: measure_rewards(ctx, args, budget),
                 "generator": lambda budget: measure_generators(ctx, args, budget)}
    chosen = [p for p in PARTS if p in args.parts]
    for index, name in enumerate(chosen):
        share = ctx.budget.share(PART_WEIGHTS[name], sum(PART_WEIGHTS[p] for p in chosen[index:]))
        print(f"{name} ({max(share.left(), 0):.0f} s of the budget)", flush=True)

        def part(name=name, share=share) -> dict:
            share.check(name)
            return functions[name](share)

        results["parts"][name] = guarded(ctx, name, part)
    results["wall_s"] = time.perf_counter() - started
    results["skipped"] = collect_skipped(results["parts"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (args.out / "gpu_check.md").write_text(table)
    sys.stdout.write("\n" + table + f"\nwrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}\n")
    return results


if __name__ == "__main__":
    main(started=STARTED)
