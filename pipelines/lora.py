"""LoRA on a pipeline's denoiser (UNet or transformer) through PEFT, saved so that `pipe.load_lora_weights(dir)` loads
it, and the monitors of a reward-tuning run."""

from __future__ import annotations

from pathlib import Path

import torch

from zreward_diffusers.saving import save_directory

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def denoiser_of(pipe) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") and pipe.unet is not None else pipe.transformer


def add_lora(pipe, rank: int = 8, alpha: float | None = None, targets=DEFAULT_TARGETS, seed: int = 0) -> list:
    """Freeze every pipeline component, add LoRA adapters to the denoiser; returns the trainable parameters."""
    from peft import LoraConfig

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    denoiser = denoiser_of(pipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets),
                                        init_lora_weights="gaussian"))
    parameters = [p for n, p in denoiser.named_parameters() if "lora_" in n]
    if not parameters:
        raise ValueError(f"no LoRA target among {list(targets)} in {type(denoiser).__name__}")
    for p in parameters:
        p.requires_grad_(True)
    return parameters


def save_lora(pipe, directory: str | Path, overwrite: bool = False) -> Path:
    """Write the denoiser's LoRA weights with the pipeline class's own `save_lora_weights` (diffusers format), as
    one atomic save (`zreward_diffusers.saving`: a folder it did not write is replaced only with `overwrite`)."""
    from peft.utils import get_peft_model_state_dict

    denoiser = denoiser_of(pipe)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(denoiser).items()}
    key = "unet_lora_layers" if denoiser is getattr(pipe, "unet", None) else "transformer_lora_layers"
    return save_directory(directory, lambda folder: type(pipe).save_lora_weights(str(folder), **{key: state},
                                                                                  safe_serialization=True),
                          overwrite=overwrite)


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation of images in [−1, 1] `(B, 3, H, W)` (over-saturation is a classic reward-hacking sign)."""
    unit = (images.detach().float() + 1) / 2
    high, low = unit.max(dim=1).values, unit.min(dim=1).values
    return ((high - low) / high.clamp_min(1e-6)).mean()


def diversity(images: torch.Tensor) -> torch.Tensor:
    """Mean pairwise RMS distance between the images of a batch (collapse drives it to 0)."""
    flat = images.detach().float().flatten(1)
    if len(flat) < 2:
        return torch.zeros(())
    distances = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    count = len(flat) * (len(flat) - 1)
    return distances.sum() / count
