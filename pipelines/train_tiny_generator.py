"""The synthetic world's base generator: a tiny `StableDiffusionPipeline` (VAE, CLIP text encoder, UNet, DDIM)
trained here from scratch on the world's images and prompts, so that reward tuning has a real base to improve.

Two stages, each cached under `<output_dir>` and resumable (training state every `save_every` steps):

1. the VAE (`AutoencoderKL`, 4× down-sampling by default, 4 latent channels) on the world's images: L1 + L2
   reconstruction plus a small KL;
2. the UNet (ε-prediction, DDPM noise schedule) and the text encoder on the frozen VAE's latents, with the prompt
   dropped 10% of the time (so classifier-free guidance works).

The world's images carry its deviations (wrong counts, colours, shapes, degradations) at the world's rates, so the
base generator makes the same kind of mistakes — which the reward is there to fix. The result is an ordinary
diffusers directory (`<output_dir>/pipeline`) that `StableDiffusionPipeline.from_pretrained` loads.

    python -m pipelines.train_tiny_generator --output_dir runs/generator
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from training.config import check_at_least, check_choice, parse_args
from training.state import CheckpointManager, Progress, loss_curve, prepare_output_dir, write_text_atomic
from zreward_diffusers.saving import save_directory

from .tiny import tiny_clip_tokenizer, world_word_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class GeneratorConfig:
    """The synthetic world's base generator: a tiny Stable Diffusion pipeline trained here from scratch.

    `python -m pipelines.train_tiny_generator --output_dir runs/generator`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Data": ("world_seed", "num_groups", "image_size", "batch_size", "prompt_dropout"),
        "Model": ("vae_channels", "unet_channels", "text_hidden", "tokenizer", "text_pooling",
                  "cross_attention_everywhere"),
        "Diffusion": ("normalize_latents", "noise_schedule"),
        "Optimisation": ("vae_steps", "vae_lr", "vae_kl_weight", "unet_steps", "unet_lr", "unet_lr_schedule",
                         "seed"),
        "Checkpoints": ("output_dir", "save_every", "resume", "overwrite"),
    }

    output_dir: str = field(default="runs/generator", metadata={"help": "stages, checkpoints and the pipeline"})
    world_seed: int = field(default=0, metadata={"help": "seed of the synthetic world"})
    num_groups: int = field(default=2048, metadata={"help": "world prompt groups to train on (4 images each)"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels (the world renders any size)"})
    vae_steps: int = field(default=1000, metadata={"help": "VAE optimizer steps"})
    vae_lr: float = field(default=1e-3, metadata={"help": "VAE learning rate"})
    vae_kl_weight: float = field(default=1e-6, metadata={"help": "weight of the VAE's KL term"})
    unet_steps: int = field(default=2500, metadata={"help": "UNet + text encoder optimizer steps"})
    unet_lr: float = field(default=5e-4, metadata={"help": "UNet learning rate"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    prompt_dropout: float = field(default=0.1, metadata={"help": "share of empty prompts (for CFG)"})
    vae_channels: list = field(default_factory=lambda: [32, 64, 64], metadata={
        "help": "VAE block widths (len - 1 halvings: 32 px images -> 8 x 8 latents)"})
    unet_channels: list = field(default_factory=lambda: [64, 128], metadata={"help": "UNet block widths"})
    text_hidden: int = field(default=64, metadata={"help": "text encoder width"})
    tokenizer: str = field(default="characters", metadata={
        "help": "characters: CLIP's class over single characters (the text encoder must learn to spell); words: a "
                "unigram tokenizer with one token per word of the world's grammar"})
    text_pooling: bool = field(default=False, metadata={
        "help": "add the attention-pooled prompt embedding to the UNet's time embedding (diffusers' "
                "addition_embed_type='text'): a global path for background, colour and style that needs no "
                "cross-attention"})
    cross_attention_everywhere: bool = field(default=False, metadata={
        "help": "cross-attention in every UNet block (by default the lowest resolution has none)"})
    normalize_latents: bool = field(default=False, metadata={
        "help": "scale the latents to unit standard deviation (the VAE's scaling_factor = 1 / their std over the "
                "training images, as Stable Diffusion's 0.18215): otherwise the noise schedule's last step leaves "
                "part of the image in, and sampling from pure noise reads its layout from the noise"})
    noise_schedule: str = field(default="scaled_linear", metadata={
        "help": "scaled_linear (Stable Diffusion's, epsilon prediction) or zero_terminal_snr (the same betas "
                "rescaled so that the last step is pure noise, v-prediction, trailing timesteps: Lin et al., "
                "'Common Diffusion Noise Schedules and Sample Steps Are Flawed', arXiv 2305.08891)"})
    unet_lr_schedule: str = field(default="constant", metadata={
        "help": "after the 100-step warm-up: constant, or cosine (decays to 0 at unet_steps)"})
    save_every: int = field(default=500, metadata={"help": "steps between training states"})
    resume: bool = field(default=False, metadata={
        "help": "continue each stage from its newest checkpoint in <output_dir>/checkpoints (a finished run: its "
                "metrics are returned)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in a used <output_dir>: its checkpoints and metrics are deleted, its outputs replaced "
                "(without it, or --resume, a used <output_dir> is refused)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and batches"})

    def __post_init__(self):
        check_at_least(self, 1, "num_groups", "image_size", "vae_steps", "unet_steps", "batch_size", "save_every",
                       "text_hidden")
        check_choice(self, "tokenizer", ("characters", "words"))
        check_choice(self, "unet_lr_schedule", ("constant", "cosine"))
        check_choice(self, "noise_schedule", ("scaled_linear", "zero_terminal_snr"))
        if self.text_pooling and self.text_hidden % 4:
            raise ValueError(f"text_hidden must be a multiple of 4 with text_pooling (4 pooling heads), got "
                             f"{self.text_hidden}")


def world_data(config: GeneratorConfig) -> tuple[torch.Tensor, list[str]]:
    """Images in [−1, 1] `(N, 3, S, S)` and their prompts."""
    from zreward_diffusers.synthetic import SyntheticWorld, WorldConfig

    world = SyntheticWorld(config.world_seed, WorldConfig(image_size=config.image_size))
    items = [item for group in world.groups(config.num_groups) for item in group.items]
    images = torch.from_numpy(np.stack([item.image for item in items])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [item.prompt for item in items]


def build_components(config: GeneratorConfig):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    if config.tokenizer == "words":  # T5's pad and end-of-sequence ids
        tokenizer, bos, eos, pad = world_word_tokenizer(), 1, 1, 0
    else:
        tokenizer, bos, eos, pad = tiny_clip_tokenizer(), 0, 1, 1
    vae_channels = tuple(config.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
                        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
                        layers_per_block=1, norm_num_groups=16, sample_size=config.image_size, scaling_factor=1.0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=2 * config.text_hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=pad))
    channels = tuple(config.unet_channels)
    plain = 0 if config.cross_attention_everywhere else 1  # blocks at the lowest resolution without cross-attention
    pooling = {"addition_embed_type": "text", "addition_embed_type_num_heads": 4} if config.text_pooling else {}
    unet = UNet2DConditionModel(
        sample_size=config.image_size // 2 ** (len(vae_channels) - 1), in_channels=4, out_channels=4,
        block_out_channels=channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - plain) + ("DownBlock2D",) * plain,
        up_block_types=("UpBlock2D",) * plain + ("CrossAttnUpBlock2D",) * (len(channels) - plain),
        cross_attention_dim=config.text_hidden, attention_head_dim=16, norm_num_groups=16, **pooling)
    if config.noise_schedule == "zero_terminal_snr":
        schedule = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    else:
        schedule = {}
    # (steps_offset is unused by trailing timesteps; 1 keeps the pipeline's check for Stable Diffusion's value quiet)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, **schedule)
    return vae, text_encoder, tokenizer, unet, scheduler


def _batch(step: int, config: GeneratorConfig, count: int, stream: int) -> np.ndarray:
    return np.random.default_rng([config.seed, stream, step]).integers(count, size=config.batch_size)


def start_or_resume(accelerator, module, optimizer, scheduler, state_dir: Path, resume: bool):
    """Prepare `module`, `optimizer` and `scheduler`, then with `resume` restore the newest checkpoint in
    `state_dir` if any. Returns the prepared objects, their `CheckpointManager` and the
    `Progress`.

    Every process trains on the same batches and gets the same gradients, so the module is registered for the
    checkpoint without a DDP wrapper (`evaluation_mode=True`): the loop calls the VAE's `encode`/`decode`, which a
    wrapper's `forward` would not see.
    """
    accelerator.free_memory()  # the previous stage's objects leave the accelerator's checkpointed state
    module = accelerator.prepare_model(module, evaluation_mode=True)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    checkpoints = CheckpointManager(accelerator, state_dir, total_limit=1)
    return module, optimizer, scheduler, checkpoints, (checkpoints.resume() if resume else None) or Progress()


def train_vae(accelerator, vae, images: torch.Tensor, config: GeneratorConfig,
              state_dir: Path) -> tuple[list[float], int]:
    """Train the VAE (resuming from `state_dir`); returns its step losses and the step it resumed from."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    prepared, optimizer, scheduler, checkpoints, progress = start_or_resume(accelerator, vae, optimizer, scheduler,
                                                                            state_dir, config.resume)
    start, losses = progress.step, progress.extra.get("losses", [])
    vae.train()
    for step in tqdm(range(start, config.vae_steps), desc="vae", initial=start, total=config.vae_steps):
        x = images[_batch(step, config, len(images), 1)]
        posterior = vae.encode(x).latent_dist
        torch.manual_seed(config.seed * 100_003 + step)
        reconstruction = vae.decode(posterior.sample()).sample
        loss = (F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
                + config.vae_kl_weight * posterior.kl().mean())
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % config.save_every == 0 or step + 1 == config.vae_steps:
            checkpoints.save(Progress(step + 1, 0.0, {"losses": losses}))
    vae.eval()
    return losses, start


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict at timesteps `t`: the noise (epsilon), or the velocity
    v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 (Salimans & Ho, 'Progressive Distillation', arXiv 2202.00512)."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    a = scheduler.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def _unet_lr_factor(step: int, config: GeneratorConfig) -> float:
    """100 steps of linear warm-up, then constant or cosine decay to 0 at `unet_steps`."""
    warmup = min(1.0, (step + 1) / 100)
    if config.unet_lr_schedule == "constant" or step < 100:
        return warmup
    progress = min(1.0, (step - 100) / max(1, config.unet_steps - 100))
    return 0.5 * (1 + math.cos(math.pi * progress))


class _Denoiser(torch.nn.Module):
    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder


def train_unet(accelerator, unet, text_encoder, tokenizer, vae, scheduler, images, prompts, config,
               state_dir: Path) -> tuple[list[float], int]:
    """Train the UNet and text encoder on the frozen VAE's latents (resuming from `state_dir`); returns the step
    losses and the step it resumed from."""
    module = _Denoiser(unet, text_encoder)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.unet_lr)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_unet_lr_factor, config=config))
    prepared, optimizer, lr, checkpoints, progress = start_or_resume(accelerator, module, optimizer, lr, state_dir,
                                                                     config.resume)
    start, losses = progress.step, progress.extra.get("losses", [])
    with torch.no_grad():  # the frozen VAE's latent means, once
        latents = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mode() for i in range(0, len(images), 256)])
    if config.normalize_latents:  # saved with the VAE: the pipeline divides by it before decoding
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    latents = latents * vae.config.scaling_factor
    module.train()
    alphas = scheduler.alphas_cumprod
    for step in tqdm(range(start, config.unet_steps), desc="unet", initial=start, total=config.unet_steps):
        index = _batch(step, config, len(images), 2)
        rng = np.random.default_rng([config.seed, 3, step])
        texts = ["" if rng.random() < config.prompt_dropout else prompts[i] for i in index]
        tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids
        x0 = latents[index]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.from_numpy(rng.integers(scheduler.config.num_train_timesteps, size=len(index)))
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        prediction = unet(noisy, t, encoder_hidden_states=text_encoder(tokens)[0]).sample
        loss = F.mse_loss(prediction, diffusion_target(scheduler, x0, noise, t))
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        lr.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % config.save_every == 0 or step + 1 == config.unet_steps:
            checkpoints.save(Progress(step + 1, 0.0, {"losses": losses}))
    module.eval()
    return losses, start


def train_generator(config: GeneratorConfig) -> dict:
    from diffusers import StableDiffusionPipeline

    out = Path(config.output_dir)
    if config.resume and (out / "metrics.json").exists() and (out / "pipeline").exists():
        logger.info("generator: cached in %s", out)
        return json.loads((out / "metrics.json").read_text())
    started = time.perf_counter()
    images, prompts = world_data(config)
    vae, text_encoder, tokenizer, unet, scheduler = build_components(config)
    accelerator = Accelerator(cpu=True)  # the tiny generator trains on the CPU, identically on every process
    prepare_output_dir(out, config, accelerator)
    vae_losses, vae_resumed = train_vae(accelerator, vae, images, config, out / "checkpoints" / "vae")
    vae.requires_grad_(False)
    unet_losses, unet_resumed = train_unet(accelerator, unet, text_encoder, tokenizer, vae, scheduler, images,
                                           prompts, config, out / "checkpoints" / "unet")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    metrics = {"images": len(images), "image_size": config.image_size,
               "resumed_from_step": {"vae": vae_resumed, "unet": unet_resumed},
               "seconds": round(time.perf_counter() - started), "vae_final_loss": float(np.mean(vae_losses[-50:])),
               "unet_final_loss": float(np.mean(unet_losses[-50:])),
               "vae_loss_curve": loss_curve(vae_losses), "unet_loss_curve": loss_curve(unet_losses),
               "parameters": {"vae": sum(p.numel() for p in vae.parameters()),
                              "unet": sum(p.numel() for p in unet.parameters()),
                              "text_encoder": sum(p.numel() for p in text_encoder.parameters())}}
    if accelerator.is_main_process:
        save_directory(out / "pipeline", lambda tmp: pipe.save_pretrained(str(tmp), safe_serialization=True),
                       overwrite=config.overwrite)
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = train_generator(parse_args(GeneratorConfig, argv))
    logger.info("generator: %s", metrics)
    return metrics


if __name__ == "__main__":
    main()
