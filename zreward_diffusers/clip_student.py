"""A CLIP-sized Z-Reward student: open_clip image and text towers with a K-level score-distribution head per rubric
dimension — the cheap reward for users whose GPU cannot hold a VLM next to their generator (issue: student, item 6).

The head reads [f_I, f_T, f_I ⊙ f_T] (the towers' normalised embeddings, the product carrying the image–prompt
match) through a small MLP per dimension into K logits; the rest is the same as a VLM student: `forward(images in
[0, 1], prompts, dimensions)` returns a `ScoreOutput`, `ZRewardLoss` wraps it, and `ZRewardLoss.from_pretrained`
loads its checkpoint (safetensors weights + the open_clip architecture config + the rubric). The image path is the
differentiable resize-crop-normalise of open_clip's eval transform (see `rewards.CLIPScoreLoss`).

>>> import torch
>>> scorer = ClipStudentScorer.tiny()
>>> out = scorer(torch.rand(2, 3, 56, 56), ["a red circle", "two stars"])
>>> out.probs.shape, out.expected.shape
(torch.Size([2, 4, 9]), torch.Size([2, 4]))
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import entropy, expected_score, normalized_reward, score_std
from .optional import import_optional
from .rubric import Rubric
from .scorer import ScoreOutput

FAMILY = "open_clip"
WEIGHTS_NAME = "clip_student.safetensors"
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"layers": 2, "width": 64, "patch_size": 8, "image_size": 64, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _build_clip(model_config: dict):
    clip_model = import_optional("open_clip.model")

    return clip_model.CLIP(embed_dim=model_config["embed_dim"],
                           vision_cfg=clip_model.CLIPVisionCfg(**model_config["vision_cfg"]),
                           text_cfg=clip_model.CLIPTextCfg(**model_config["text_cfg"]))


class ClipStudentScorer(nn.Module):
    """See the module docstring. `tokenizer_name` names the open_clip tokenizer (bundled with open_clip)."""

    def __init__(self, model_config: dict, rubric: Rubric | None = None, hidden: int = 128,
                 mean=OPENAI_MEAN, std=OPENAI_STD, tokenizer_name: str = "ViT-B-32"):
        super().__init__()
        open_clip = import_optional("open_clip")
        self.model_config = model_config
        self.rubric = rubric if rubric is not None else Rubric()
        self.model = _build_clip(model_config)
        self.tokenizer_name = tokenizer_name
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        size = model_config["vision_cfg"]["image_size"]
        self.image_size = size[0] if isinstance(size, list | tuple) else size
        self.hidden = hidden
        embed = model_config["embed_dim"]
        self.heads = nn.ModuleDict({
            d: nn.Sequential(nn.Linear(3 * embed, hidden), nn.GELU(), nn.Linear(hidden, self.rubric.num_levels))
            for d in self.rubric.dimension_names})
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("levels", self.rubric.levels_tensor(), persistent=False)
        self.register_buffer("dimension_weights", self.rubric.weights_tensor(), persistent=False)
        self.quantize = False
        self._text_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def tiny(cls, seed: int = 0, rubric: Rubric | None = None) -> ClipStudentScorer:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(TINY_CLIP, rubric)

    @classmethod
    def from_open_clip(cls, model_name: str, pretrained: str, rubric: Rubric | None = None,
                       **kwargs) -> ClipStudentScorer:
        """Towers of an open_clip architecture with weights from the local file `pretrained`; fresh heads."""
        open_clip = import_optional("open_clip")

        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"`pretrained` must be a local weights file (nothing is downloaded): {pretrained}")
        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"unknown open_clip architecture {model_name!r}")
        scorer = cls(config, rubric, tokenizer_name=model_name, **kwargs)
        trained, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        scorer.model.load_state_dict(trained.state_dict())
        return scorer

    def save_pretrained(self, directory: str | Path) -> dict:
        """Weights (safetensors) into `directory`; returns the `backbone` entry of the Z-Reward config."""
        from safetensors.torch import save_file

        directory = Path(directory)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME))
        return {"type": FAMILY, "model_config": self.model_config, "hidden": self.hidden,
                "tokenizer": self.tokenizer_name, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist()}

    @classmethod
    def from_checkpoint(cls, directory: str | Path, config: dict) -> ClipStudentScorer:
        """The student saved in `directory` (its config read by `checkpoint.read_config`): safetensors only, every
        tensor present and none extra, or a ValueError naming the file and the tensors."""
        from safetensors.torch import load_file

        from .checkpoint import CONFIG_NAME, _check_loaded_keys, _refuse_pickles, _safetensors_keys

        directory = Path(directory)
        backbone = config["backbone"]
        path = directory / WEIGHTS_NAME
        if not path.is_file():
            _refuse_pickles(directory, missing=WEIGHTS_NAME)
            raise FileNotFoundError(f"{str(directory)!r} lacks {WEIGHTS_NAME}")
        _refuse_pickles(directory)
        saved = _safetensors_keys(path)
        try:
            scorer = cls(backbone["model_config"], Rubric.from_dict(config["rubric"]), backbone["hidden"],
                         backbone["mean"], backbone["std"], backbone["tokenizer"])
        except (TypeError, ValueError, KeyError) as error:  # open_clip's towers reject an unknown architecture
            raise ValueError(f"{str(directory / CONFIG_NAME)!r}: field 'backbone.model_config' does not build an "
                             f"open_clip model: {type(error).__name__}: {error}") from error
        expected = set(scorer.state_dict())
        _check_loaded_keys(repr(str(path)), expected - saved, saved - expected)
        try:
            scorer.load_state_dict(load_file(str(path)))
        except RuntimeError as error:  # tensors of the wrong shape
            raise ValueError(f"{str(path)!r} does not match the model it configures: {error}") from error
        return scorer.eval()

    # ------------------------------------------------------------------------------------------------ scoring
    def enable_gradient_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(False)

    def _dimensions(self, dimensions) -> tuple[str, ...]:
        if dimensions is None:
            return self.rubric.dimension_names
        dimensions = [dimensions] if isinstance(dimensions, str) else list(dimensions)
        for name in dimensions:
            self.rubric.dimension_index(name)
        return tuple(dimensions)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        resized = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        return (resized[..., top:top + self.image_size, left:left + self.image_size] - self.mean) / self.std

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.mean.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, prompts: list[str], dimensions=None, reasoning=None) -> ScoreOutput:
        """Score images in [0, 1] `(B, 3, H, W)`; `reasoning` must be None (a student does not reason)."""
        if reasoning is not None:
            raise ValueError("a CLIP student reads no reasoning; pass `reasoning=None`")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"`prompts` must have one entry per image: {len(prompts)} for {images.shape[0]}")
        dimensions = self._dimensions(dimensions)
        image = F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)
        text = self.text_features(prompts)
        joint = torch.cat([image, text, image * text], dim=-1)
        logits = torch.stack([self.heads[d](joint) for d in dimensions], dim=1).float()  # (B, D, K)
        probs = logits.softmax(-1)
        expected = expected_score(probs, self.levels)
        index = torch.tensor([self.rubric.dimension_index(d) for d in dimensions], device=probs.device)
        weights = self.dimension_weights[index]
        reward = (normalized_reward(expected, self.levels) * weights).sum(-1) / weights.sum()
        return ScoreOutput(probs=probs, expected=expected, std=score_std(probs, self.levels), entropy=entropy(probs),
                           reward=reward, score_token_mass=torch.ones_like(expected), logits=logits,
                           dimensions=dimensions, levels=self.rubric.levels)

    def score_pil(self, images, prompts: list[str], dimensions=None, reasoning=None) -> ScoreOutput:
        import numpy as np

        from .image_inputs import to_pil_images

        pil = to_pil_images(images)
        if len({image.size for image in pil}) > 1:
            raise ValueError("`images` must share one size (resize them first)")
        pixels = torch.stack([torch.from_numpy(np.asarray(i.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                              for i in pil]).float() / 255
        return self(pixels.to(self.mean.device), prompts, dimensions, reasoning)
