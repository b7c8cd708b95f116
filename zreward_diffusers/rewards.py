"""Other differentiable rewards behind the same interface as `ZRewardLoss` — `loss = module(images, prompts)` with
images in [−1, 1] — for comparison and for mixing:

- `CLIPScoreLoss`: CLIPScore (Hessel et al., arXiv 2104.08718), w · max(cos(E_I(image), E_T(prompt)), 0), on an
  open_clip model whose weights come from a local file (never downloaded at run time); the image path is a
  differentiable resize + normalisation matching open_clip's eval transform (bicubic resize of the short side and
  centre crop to the model's input size).
- `WeightedRewardLoss`: a weighted sum of reward modules (e.g. Z-Reward plus a little CLIPScore).

>>> import torch
>>> clip = CLIPScoreLoss.tiny()
>>> loss = clip(torch.rand(2, 3, 32, 32) * 2 - 1, ["a red circle", "two stars"])
>>> loss.shape
torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .image_inputs import image_tensor_to_unit_range
from .optional import import_optional


class CLIPScoreLoss(nn.Module):
    """−CLIPScore of images for their prompts (mean over the batch, or per image with `reduction="none"`)."""

    def __init__(self, model, tokenizer, image_size: int, mean, std, weight: float = 2.5, image_range: str = "-1,1",
                 reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"`reduction` must be mean, sum or none, got {reduction!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.weight, self.image_range, self.reduction = weight, image_range, reduction

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str, **kwargs) -> CLIPScoreLoss:
        """An open_clip architecture (e.g. "ViT-B-32") with weights from the local file `pretrained`."""
        import os

        open_clip = import_optional("open_clip")

        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"`pretrained` must be a local weights file (nothing is downloaded): {pretrained}")
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        normalize = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        return cls(model, open_clip.get_tokenizer(model_name), size, normalize.mean, normalize.std, **kwargs)

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> CLIPScoreLoss:
        """A randomly initialised tiny open_clip CLIP (32 px, one layer per tower), for tests and examples."""
        open_clip = import_optional("open_clip")
        clip_model = import_optional("open_clip.model")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vision = clip_model.CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16)
            text = clip_model.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
            model = clip_model.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
        return cls(model, open_clip.get_tokenizer("ViT-B-32"), 32, open_clip.OPENAI_DATASET_MEAN,
                   open_clip.OPENAI_DATASET_STD, **kwargs)

    def preprocess(self, unit_images: torch.Tensor) -> torch.Tensor:
        """Resize the short side to the model size (bicubic, antialiased), centre-crop, normalise; differentiable."""
        height, width = unit_images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        resized = F.interpolate(unit_images, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        cropped = resized[..., top:top + self.image_size, left:left + self.image_size]
        return (cropped - self.mean) / self.std

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """CLIPScore `(B,)` (differentiable with respect to `images`)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"`prompts` must have one entry per image: {len(prompts)} for {images.shape[0]}")
        unit = image_tensor_to_unit_range(images, self.image_range)
        image_features = F.normalize(self.model.encode_image(self.preprocess(unit.float())), dim=-1)
        tokens = self.tokenizer(list(prompts)).to(images.device)
        with torch.no_grad():
            text_features = F.normalize(self.model.encode_text(tokens), dim=-1)
        return self.weight * (image_features * text_features).sum(-1).clamp_min(0)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        loss = -self.score(images, prompts)
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


class WeightedRewardLoss(nn.Module):
    """Σ_i w_i · loss_i(images, prompts) over reward modules sharing the `(images, prompts)` interface."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        if set(losses) != set(weights):
            raise ValueError(f"`weights` must name every loss: losses {sorted(losses)}, weights {sorted(weights)}")
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)
        self.last_terms: dict[str, float] = {}

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        total = 0.0
        for name, module in self.losses.items():
            term = module(images, prompts)
            self.last_terms[name] = float(term.detach().mean())
            total = total + self.weights[name] * term
        return total
