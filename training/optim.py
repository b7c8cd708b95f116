"""Muon for a model's hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks",
https://kellerjordan.github.io/posts/muon/; analysed at scale by Liu et al. 2025, arXiv 2502.16982) replaces each
2-D weight's momentum update by its nearest semi-orthogonal matrix, computed by a few Newton-Schulz iterations, so
that every direction of the update moves at the same rate. Embeddings, normalisation gains, biases, convolutions and
output heads stay with AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101), as Muon's authors advise.

Measured here (docs/experiments/base-models.md): stage 0 of base pretraining (`training.vision_stage`)
names the shape of held-out images after 2,500 steps as well as AdamW does after about 8,000.

`MuonAdamW` is a plain `torch.optim.Optimizer`: its param groups carry `"muon": True` or `False`, learning-rate
schedulers scale every group's `lr`, and its state is tensors only (`training.state` saves it in safetensors).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

# A config's `optimizer` choices: AdamW alone, or `MuonAdamW` (`training.state.build_optimizer` builds either).
OPTIMIZERS = ("adamw", "muon")

# Quintic Newton-Schulz coefficients of Jordan et al. (2024): five steps take singular values into about [0.7, 1.2].
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the row and column spaces of `matrix` (2-D), in float32."""
    if matrix.ndim != 2:
        raise ValueError(f"`matrix` must be 2-D, got shape {tuple(matrix.shape)}")
    a, b, c = NEWTON_SCHULZ
    x = matrix.float()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_parameters(module: nn.Module, exclude: Iterable[str] = ()) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """`(Muon's, AdamW's)` trainable parameters of `module`: Muon takes every 2-D weight whose name does not start
    with one of the `exclude` prefixes (pass the output heads and embeddings)."""
    exclude = tuple(exclude)
    muon, adamw = [], []
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            (muon if parameter.ndim == 2 and not name.startswith(exclude) else adamw).append(parameter)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    """Muon on `muon_params` (2-D), AdamW on `adamw_params`; both with decoupled weight decay `weight_decay`.

    Muon's step for a weight `W` (rows = outputs) with gradient `G`: momentum `B <- momentum B + G`, Nesterov's
    look-ahead `U = G + momentum B`, then `W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) orthogonalize(U)`.
    `muon_lr` is Muon's peak learning rate (0.02 in Jordan et al.), `lr` AdamW's.
    """

    def __init__(self, muon_params: Iterable[nn.Parameter], adamw_params: Iterable[nn.Parameter], muon_lr: float,
                 lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, ns_steps: int = 5):
        muon_params, adamw_params = list(muon_params), list(adamw_params)
        for name, value in (("muon_lr", muon_lr), ("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}")
        bad = [tuple(p.shape) for p in muon_params if p.ndim != 2]
        if bad:
            raise ValueError(f"Muon's parameters must be 2-D matrices, got shapes {bad}")
        groups = [dict(params=muon_params, muon=True, lr=muon_lr, momentum=momentum, ns_steps=ns_steps),
                  dict(params=adamw_params, muon=False, lr=lr, betas=betas, eps=eps)]
        super().__init__([group for group in groups if group["params"]], dict(weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad, state = parameter.grad, self.state[parameter]
                parameter.mul_(1.0 - lr * decay)
                if group["muon"]:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(parameter)
                    buffer = state["momentum_buffer"]
                    buffer.mul_(group["momentum"]).add_(grad)
                    update = orthogonalize(grad.add(buffer, alpha=group["momentum"]), group["ns_steps"])
                    rows, columns = parameter.shape
                    parameter.add_(update.to(parameter.dtype), alpha=-lr * math.sqrt(max(1.0, rows / columns)))
                else:
                    if "step" not in state:
                        state["step"] = torch.zeros((), dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(parameter)
                        state["exp_avg_sq"] = torch.zeros_like(parameter)
                    beta1, beta2 = group["betas"]
                    state["step"] += 1
                    step = float(state["step"])
                    state["exp_avg"].lerp_(grad, 1.0 - beta1)
                    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                    denominator = (state["exp_avg_sq"] / (1.0 - beta2**step)).sqrt_().add_(group["eps"])
                    parameter.addcdiv_(state["exp_avg"], denominator, value=-lr / (1.0 - beta1**step))
        return loss
