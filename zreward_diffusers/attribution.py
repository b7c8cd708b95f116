"""Attribution maps: which pixels the reward wants changed, per rubric dimension.

For an image `x` in [0, 1] and each dimension `d`, the map is the gradient of the expected score,
`∂E[score_d] / ∂x` (docs/method.md eq. 2), taken through the same differentiable preprocessing a generator is tuned
through. `attribution_maps` returns the signed gradient `(B, D, 3, H, W)` and its per-pixel magnitude, the L2 norm
over the colour channels `(B, D, H, W)`; `attribution_figure` draws each image with one heat map per dimension
(brighter: a small change of that pixel moves the dimension's expected score more). Gradient saliency in the
manner of Simonyan et al., "Deep Inside Convolutional Networks" (arXiv 1312.6034), applied to a reward's
per-dimension expectation instead of a class logit.

One forward pass serves every dimension (one backward each). Images do not interact in the scorer, so the gradient
of the batch sum is each image's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .image_inputs import check_image_tensor, check_prompt_list

__all__ = ["Attribution", "attribution_figure", "attribution_maps"]


@dataclass
class Attribution:
    """`gradients` `(B, D, 3, H, W)`: ∂E[score_d]/∂pixels; `maps` `(B, D, H, W)`: their L2 norm over channels;
    `expected` `(B, D)`: the expected scores; `dimensions`: the names of axis 1."""

    gradients: torch.Tensor
    maps: torch.Tensor
    expected: torch.Tensor
    dimensions: tuple[str, ...]


def attribution_maps(loss_fn, images: torch.Tensor, prompts: list[str], dimensions=None) -> Attribution:
    """∂E[score_d]/∂pixels of float images `(B, 3, H, W)` in [0, 1] for each dimension (default: the loss's).

    `loss_fn` is a `ZRewardLoss` (its scorer is used; its `image_range` is not: the images here are in [0, 1]).
    Nothing is accumulated in the images' or the model's `.grad`.
    """
    check_image_tensor(images, "0,1")
    prompts = check_prompt_list(list(prompts) if isinstance(prompts, tuple) else prompts, images.shape[0])
    dimensions = loss_fn.dimensions if dimensions is None else dimensions
    pixels = images.detach().clamp(0.0, 1.0).requires_grad_(True)
    with torch.enable_grad():
        output = loss_fn.scorer(pixels, prompts, dimensions=dimensions)
        gradients = []
        for d in range(len(output.dimensions)):
            (gradient,) = torch.autograd.grad(output.expected[:, d].sum(), pixels,
                                              retain_graph=d + 1 < len(output.dimensions))
            gradients.append(gradient)
    gradients = torch.stack(gradients, dim=1)
    return Attribution(gradients, gradients.norm(dim=2), output.expected.detach(), tuple(output.dimensions))


def attribution_figure(images: torch.Tensor, attribution: Attribution, prompts: list[str], path, title: str = ""):
    """A PNG: one row per image, the image then one heat map per dimension over it (each map scaled to its own
    maximum, so rows compare where, not how much; the expected score is in each title)."""
    from .optional import import_optional

    import_optional("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    maps = attribution.maps.detach().float().cpu().numpy()
    rows, columns = maps.shape[0], maps.shape[1] + 1
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.1 * rows), dpi=110, squeeze=False)
    for row in range(rows):
        axes[row, 0].imshow(pictures[row], interpolation="nearest")
        words = prompts[row].split()
        axes[row, 0].set_title("\n".join(" ".join(words[i:i + 4]) for i in range(0, len(words), 4)), fontsize=7)
        grey = pictures[row].mean(-1)
        for d, dimension in enumerate(attribution.dimensions):
            axis = axes[row, d + 1]
            heat = maps[row, d] / max(float(maps[row, d].max()), np.finfo(np.float32).tiny)
            axis.imshow(grey, cmap="gray", interpolation="nearest")
            axis.imshow(heat, cmap="inferno", alpha=0.7, vmin=0, vmax=1, interpolation="nearest")
            axis.set_title(f"{dimension.replace('_', ' ')}\nμ {float(attribution.expected[row, d]):.2f}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
