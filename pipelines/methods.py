"""Gradient estimators through the sampler (docs/method.md, 'Generator fine-tuning'): which steps run with autograd.

- `draft`: DRaFT-K (Clark et al., arXiv 2309.17400): the full chain, gradients through the last K steps only (K = 1
  default) and the VAE decoder.
- `draft_lv`: DRaFT-LV (same paper): the chain without gradients, then the final sample re-noised to the last step
  `lv_samples` times and that one step taken with gradients — n low-variance estimates per prompt.
- `alignprop`: AlignProp (Prabhudesai et al., arXiv 2310.03739): gradients through a randomly truncated tail of the
  chain, K ~ U{1, …, T}. With `use_checkpoint`, every step's denoiser call (any method) and the VAE decoder are
  checkpointed, which keeps memory nearly flat in K.
- `refl`: ReFL (ImageReward, Xu et al., arXiv 2304.05977): stop at a random late step t, predict x̂₀ in one step with
  gradients, decode and score that (the reward is usually wrapped as φ(r) = ReLU(margin − r)).

`sample(...)` returns decoded images in [−1, 1] with a graph to the denoiser's trainable (LoRA) parameters, plus,
when a frozen-base regulariser is asked for, the mean squared distance between the tuned and the base model outputs
at the steps that carried gradients ("velocity-space L2"; docs/method.md, 'Generator fine-tuning').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

METHODS = ("draft", "draft_lv", "alignprop", "refl")


@dataclass
class Sample:
    images: torch.Tensor  # (B', 3, H, W) in [-1, 1]; B' = B (or B * lv_samples for draft_lv)
    prompt_index: list[int]  # which prompt each image belongs to
    grad_steps: list[int]  # step indices that carried gradients
    velocity_l2: torch.Tensor | None = None  # mean over grad steps of ||v_tuned - v_base||^2 (per element)


def _base_output(rollout, latents, index, cond) -> torch.Tensor:
    """The frozen base model's output (LoRA adapters disabled), without gradients."""
    denoiser = rollout.denoiser
    with torch.no_grad():
        denoiser.disable_adapters()
        try:
            return rollout.model_output(latents, index, cond)
        finally:
            denoiser.enable_adapters()


def _output(rollout, latents, index, cond, use_checkpoint: bool) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(lambda x: rollout.model_output(x, index, cond), latents, use_reentrant=False)
    return rollout.model_output(latents, index, cond)


def sample(rollout, prompts: list[str], num_steps: int, method: str = "draft", k: int = 1, lv_samples: int = 2,
           refl_last_steps: int = 10, generator: torch.Generator | None = None, rng: np.random.Generator | None = None,
           use_checkpoint: bool = False, velocity_l2: bool = False, shard: tuple[int, int] | None = None) -> Sample:
    """Sample images for `prompts` with the method's gradient path; see the module docstring.

    `shard = (offset, total)`: `prompts` are prompts `offset, …` of a batch of `total` split over processes. The
    noise is then drawn for the whole batch with `generator` and this shard's rows kept, so processes that share
    `generator`'s seed and `rng` draw together exactly what one process would draw for the whole batch.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be at least 1, got {num_steps}")
    if method == "draft" and not 1 <= k <= num_steps:
        raise ValueError(f"`k` must lie in [1, num_steps={num_steps}], got {k}")
    if method == "draft_lv" and lv_samples < 1:
        raise ValueError(f"`lv_samples` must be at least 1, got {lv_samples}")
    if method == "refl" and not 1 <= refl_last_steps <= num_steps:
        raise ValueError(f"`refl_last_steps` must lie in [1, num_steps={num_steps}], got {refl_last_steps}")
    offset, total = shard if shard is not None else (0, len(prompts))
    if not (0 <= offset and offset + len(prompts) <= total):
        raise ValueError(f"`shard` {shard} does not hold the {len(prompts)} prompts (need 0 <= offset, "
                         "offset + len(prompts) <= total)")
    rows = slice(offset, offset + len(prompts))
    rng = rng if rng is not None else np.random.default_rng()
    rollout.set_timesteps(num_steps)
    cond = rollout.encode(prompts)
    latents = rollout.initial_latents(total, generator)[rows]
    if method == "draft":
        first_grad = num_steps - k
    elif method == "alignprop":
        first_grad = num_steps - int(rng.integers(1, num_steps + 1))
    else:
        first_grad = num_steps  # no step of the chain itself carries gradients
    stop = num_steps - int(rng.integers(1, refl_last_steps + 1)) if method == "refl" else num_steps
    grad_steps, l2_terms = [], []
    for index in range(stop):
        with_grad = index >= first_grad
        with torch.set_grad_enabled(with_grad):
            output = _output(rollout, latents, index, cond, use_checkpoint)
            if with_grad:
                grad_steps.append(index)
                if velocity_l2:
                    l2_terms.append((output - _base_output(rollout, latents, index, cond)).pow(2).mean())
            latents, _ = rollout.step(output, index, latents)
    prompt_index = list(range(len(prompts)))
    if method == "refl":  # one step with gradients from x_t straight to x̂0
        output = rollout.model_output(latents, stop, cond)
        grad_steps.append(stop)
        if velocity_l2:
            l2_terms.append((output - _base_output(rollout, latents, stop, cond)).pow(2).mean())
        _, latents = rollout.step(output, stop, latents)
    elif method == "draft_lv":
        clean = latents.detach()
        last = num_steps - 1
        repeated_cond = {key: _repeat(value, lv_samples, rollout.cfg) if key in BATCH_MAJOR else value
                         for key, value in cond.items()}
        clean = clean.repeat(lv_samples, *([1] * (clean.dim() - 1)))
        # noise rows are (repeat, prompt) of the whole batch: keep this shard's prompts of each repeat
        noise = torch.randn((lv_samples, total, *clean.shape[1:]), generator=generator, device=clean.device,
                            dtype=clean.dtype)[:, rows].flatten(0, 1)
        noisy = rollout.noise_to(clean, noise, last)
        output = rollout.model_output(noisy, last, repeated_cond)
        grad_steps.append(last)
        if velocity_l2:
            l2_terms.append((output - _base_output(rollout, noisy, last, repeated_cond)).pow(2).mean())
        latents, _ = rollout.step(output, last, noisy)
        prompt_index = prompt_index * lv_samples
    decode = (lambda x: checkpoint(rollout.decode, x, use_reentrant=False)) if use_checkpoint else rollout.decode
    images = decode(latents)
    l2 = torch.stack(l2_terms).mean() if l2_terms else None
    return Sample(images, prompt_index, grad_steps, l2)


BATCH_MAJOR = ("encoder_hidden_states", "pooled_projections", "text_embeds", "time_ids")


def _repeat(value: torch.Tensor, times: int, cfg: bool) -> torch.Tensor:
    """Repeat a batch-major conditioning tensor `times` times (per CFG half when the batch holds [uncond, cond])."""
    if cfg:
        uncond, cond = value.chunk(2)
        return torch.cat([uncond.repeat(times, *([1] * (value.dim() - 1))),
                          cond.repeat(times, *([1] * (value.dim() - 1)))])
    return value.repeat(times, *([1] * (value.dim() - 1)))
