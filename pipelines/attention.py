"""Attention backend of a pipeline's denoiser: xformers' memory-efficient attention when it is installed and the
pipeline runs on CUDA, PyTorch's scaled-dot-product attention (diffusers' default processors) otherwise."""

from __future__ import annotations

import importlib.util
import logging

import torch

logger = logging.getLogger(__name__)


def configure_attention(pipe, prefer_xformers: bool = True) -> str:
    """Set the backend; returns "xformers" or "sdpa"."""
    device = next(pipe.unet.parameters() if getattr(pipe, "unet", None) is not None
                  else pipe.transformer.parameters()).device
    if prefer_xformers and device.type == "cuda" and importlib.util.find_spec("xformers") is not None:
        try:
            pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as error:  # a wheel built for another CUDA/torch: say so, fall back
            logger.warning("xformers is installed but unusable (%s); using PyTorch SDPA", error)
    if hasattr(pipe, "disable_xformers_memory_efficient_attention"):
        pipe.disable_xformers_memory_efficient_attention()
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        raise RuntimeError("this PyTorch has no scaled_dot_product_attention; install torch >= 2.0")
    return "sdpa"
