"""One attention call for a batch of equal-sized images in Qwen2-VL's vision tower.

Qwen2-VL's vision attention (Wang et al. 2024, arXiv 2409.12191) is block-diagonal: each image attends only to its
own patches. With flash attention transformers runs it as one variable-length call; with any other implementation
(`sdpa`, `eager`: the only ones on a CPU) it splits the batch by image and calls attention once per image and
layer: 64 images through a 2-block tower make 128 small calls forward, and as many backward. When every image has
the same number of patches (the base pretraining's 56 px images, a generator's batch), the same block-diagonal
attention is one batched call over `(images, heads, patches, head_dim)`. `batched_vision_attention` installs that
path on the towers of the given models for the duration of a `with` block; batches of unequal images fall back to
the library's own forward. Measured in stage 0 of `training.pretrain_base` on the 2-core CPU machine: 114 ms a step
of 64 images before, 97 ms with it (4,000 steps: 455 s and 389 s; docs/experiments/base-models.md).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_vl import modeling_qwen2_vl


def _forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
             position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, max_seqlen: int | None = None,
             **kwargs) -> torch.Tensor:
    """`VisionAttention.forward` with one attention call when all images have the same length, else the original."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    length = int(lengths[0]) if len(lengths) else 0
    if (not length or not bool((lengths == length).all()) or position_embeddings is None
            or (self.training and self.attention_dropout)):
        return self._library_forward(hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                                     max_seqlen=max_seqlen, **kwargs)
    seq_length = hidden_states.shape[0]
    qkv = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1)
    query, key, value = qkv.permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    query, key = modeling_qwen2_vl.apply_rotary_pos_emb_vision(query, key, cos, sin)
    images = seq_length // length
    query, key, value = (t.reshape(images, length, self.num_heads, -1).transpose(1, 2) for t in (query, key, value))
    output = F.scaled_dot_product_attention(query, key, value, scale=self.scaling)  # (images, heads, length, dim)
    return self.proj(output.transpose(1, 2).reshape(seq_length, -1))


@contextlib.contextmanager
def batched_vision_attention(*models: nn.Module) -> Iterator[int]:
    """Within the block, the Qwen2-VL vision attention layers of `models` attend over equal-sized images in one call
    (same values as the library's per-image calls); yields how many layers it changed. Flash-attention models keep
    the library's path, which already makes one call; a model given twice, or already inside such a block, is changed
    once. The layers are restored on exit, exceptions included."""
    layers = {id(module): module for model in models for module in model.modules()  # each layer once
              if isinstance(module, modeling_qwen2_vl.VisionAttention)
              and "flash" not in str(module.config._attn_implementation)
              and "_library_forward" not in module.__dict__}.values()  # not changed by an enclosing block
    own = {id(layer): layer.__dict__["forward"] for layer in layers if "forward" in layer.__dict__}
    for layer in layers:
        layer._library_forward = layer.forward
        layer.forward = types.MethodType(_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer._library_forward, layer.forward  # back to the class's forward
            if id(layer) in own:  # or to a forward the layer had of its own
                layer.forward = own[id(layer)]
