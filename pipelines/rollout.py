"""Grad-enabled sampling for diffusers pipelines: one adapter per family over the pipeline's own components.

Diffusers' `__call__` samples under `torch.no_grad()`; reward fine-tuning needs the same loop with autograd where the
method asks for it (docs/method.md, 'Generator fine-tuning'). Each adapter reuses the pipeline's prompt encoding
(`encode_prompt`), latent preparation, denoiser, VAE and scheduler configuration, and exposes one denoising step as
pure tensor functions (no scheduler state), so a method decides step by step what runs with gradients:

- `StableDiffusionRollout` (SD 1.x/2.x, ε- or v-prediction) and `StableDiffusionXLRollout`: deterministic DDIM
  (η = 0, as DDPO/DRaFT/AlignProp sample), built from the pipeline's scheduler config;
- `StableDiffusion3Rollout` and `FluxRollout`: flow-matching Euler steps on the scheduler's σ schedule
  (x_{σ'} = x_σ + (σ' − σ) v, x̂₀ = x_σ − σ v), Flux with packed latents and dynamic shift.

Images come out of `decode` in [−1, 1] (clamped, as the pipelines' post-processing does), ready for `ZRewardLoss`.
"""

from __future__ import annotations

import numpy as np
import torch


class Rollout:
    """The family-independent part; see the module docstring."""

    def __init__(self, pipe, height: int, width: int, guidance_scale: float = 1.0, max_sequence_length: int = 77):
        self.pipe = pipe
        self.height, self.width = height, width
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length
        self.timesteps: torch.Tensor | None = None

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet if hasattr(self.pipe, "unet") else self.pipe.transformer

    @property
    def device(self):
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self):
        return next(self.denoiser.parameters()).dtype

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def guide(self, output: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return output
        uncond, cond = output.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)


# ------------------------------------------------------------------------------------------------ UNet families
class StableDiffusionRollout(Rollout):
    def __init__(self, pipe, *args, **kwargs):
        super().__init__(pipe, *args, **kwargs)
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)

    def set_timesteps(self, num_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_steps, device=self.device)
        self.timesteps = self.scheduler.timesteps
        return self.timesteps

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict:
        embeds, negative = self.pipe.encode_prompt(prompts, self.device, 1, self.cfg)
        return {"encoder_hidden_states": torch.cat([negative, embeds]) if self.cfg else embeds}

    def initial_latents(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        return self.pipe.prepare_latents(batch, channels, self.height, self.width, self.dtype, self.device, generator)

    def model_output(self, latents: torch.Tensor, index: int, cond: dict, denoiser=None) -> torch.Tensor:
        t = self.timesteps[index]
        model_input = torch.cat([latents] * 2) if self.cfg else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        output = (denoiser or self.denoiser)(model_input, t, return_dict=False, **self.unet_kwargs(cond))[0]
        return self.guide(output)

    def unet_kwargs(self, cond: dict) -> dict:
        return {"encoder_hidden_states": cond["encoder_hidden_states"]}

    def step(self, output: torch.Tensor, index: int, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{t−1}, x̂₀) by DDIM with η = 0; differentiable in `output` and `latents`."""
        result = self.scheduler.step(output, self.timesteps[index], latents, eta=0.0, return_dict=True)
        return result.prev_sample, result.pred_original_sample

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        return self.scheduler.add_noise(clean, noise, self.timesteps[index : index + 1])


class StableDiffusionXLRollout(StableDiffusionRollout):
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict:
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(prompts, device=self.device,
                                                                           do_classifier_free_guidance=self.cfg)
        projection_dim = self.pipe.text_encoder_2.config.projection_dim
        time_ids = self.pipe._get_add_time_ids((self.height, self.width), (0, 0), (self.height, self.width),
                                               dtype=embeds.dtype, text_encoder_projection_dim=projection_dim)
        time_ids = time_ids.to(self.device).repeat(len(prompts), 1)
        if self.cfg:
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids}

    def unet_kwargs(self, cond: dict) -> dict:
        return {"encoder_hidden_states": cond["encoder_hidden_states"],
                "added_cond_kwargs": {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}}


# ------------------------------------------------------------------------------------------------ flow matching
class FlowRollout(Rollout):
    """Flow-matching Euler on the scheduler's σ grid; `sigmas[i]` is the noise level of step i (σ = 0 at the end)."""

    def step(self, output: torch.Tensor, index: int, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        return latents + (sigma_next - sigma) * output, latents - sigma * output

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        sigma = self.sigmas[index]
        return (1 - sigma) * clean + sigma * noise


class StableDiffusion3Rollout(FlowRollout):
    def set_timesteps(self, num_steps: int) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(num_steps, device=self.device)
        self.timesteps, self.sigmas = scheduler.timesteps.clone(), scheduler.sigmas.clone().to(self.device)
        return self.timesteps

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict:
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompts, None, None, device=self.device, do_classifier_free_guidance=self.cfg,
            max_sequence_length=self.max_sequence_length)
        if self.cfg:
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def initial_latents(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        return self.pipe.prepare_latents(batch, channels, self.height, self.width, self.dtype, self.device, generator)

    def model_output(self, latents: torch.Tensor, index: int, cond: dict, denoiser=None) -> torch.Tensor:
        model_input = torch.cat([latents] * 2) if self.cfg else latents
        timestep = self.timesteps[index].expand(model_input.shape[0])
        output = (denoiser or self.denoiser)(hidden_states=model_input, timestep=timestep,
                                             encoder_hidden_states=cond["encoder_hidden_states"],
                                             pooled_projections=cond["pooled_projections"], return_dict=False)[0]
        return self.guide(output)


class FluxRollout(FlowRollout):
    """Flux: packed 2×2 latent patches, text and image position ids, distilled guidance (no CFG batch)."""

    def set_timesteps(self, num_steps: int) -> torch.Tensor:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = self.pipe.scheduler
        scale = self.pipe.vae_scale_factor
        image_seq_len = (self.height // (scale * 2)) * (self.width // (scale * 2))
        config = scheduler.config
        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        kwargs = {"mu": mu} if config.get("use_dynamic_shifting") else {}
        scheduler.set_timesteps(sigmas=sigmas, device=self.device, **kwargs)
        self.timesteps, self.sigmas = scheduler.timesteps.clone(), scheduler.sigmas.clone().to(self.device)
        return self.timesteps

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict:
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompts, None, device=self.device,
                                                           max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def initial_latents(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        channels = self.denoiser.config.in_channels // 4
        latents, self.image_ids = self.pipe.prepare_latents(batch, channels, self.height, self.width, self.dtype,
                                                            self.device, generator)
        return latents

    def model_output(self, latents: torch.Tensor, index: int, cond: dict, denoiser=None) -> torch.Tensor:
        denoiser = denoiser or self.denoiser
        timestep = self.timesteps[index].expand(latents.shape[0]).to(latents.dtype) / 1000
        guidance = None
        if denoiser.config.guidance_embeds:
            guidance = torch.full((latents.shape[0],), self.guidance_scale, device=latents.device)
        return denoiser(hidden_states=latents, timestep=timestep, guidance=guidance,
                        pooled_projections=cond["pooled_projections"],
                        encoder_hidden_states=cond["encoder_hidden_states"], txt_ids=cond["txt_ids"],
                        img_ids=self.image_ids, return_dict=False)[0]

    @property
    def cfg(self) -> bool:
        return False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        return super().decode(latents)


ROLLOUTS = {
    "StableDiffusionPipeline": StableDiffusionRollout,
    "StableDiffusionXLPipeline": StableDiffusionXLRollout,
    "StableDiffusion3Pipeline": StableDiffusion3Rollout,
    "FluxPipeline": FluxRollout,
}


def rollout_for(pipe, height: int, width: int, guidance_scale: float = 1.0, max_sequence_length: int = 77) -> Rollout:
    """The adapter of `pipe`'s class (or of its nearest supported base class)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in ROLLOUTS:
            return ROLLOUTS[cls.__name__](pipe, height, width, guidance_scale, max_sequence_length)
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}; supported: {sorted(ROLLOUTS)}")
