"""`ZRewardScorer`: a transformers VLM read as a distribution over rubric score levels.

For each (prompt, image, dimension) the rubric question is rendered with the backbone's chat template, the answer
prefix is forced, and the logits of the K score tokens at the answer position are soft-maxed (Q-Align, arXiv
2312.17090, generalised to K levels; docs/method.md, 'Score distributions', eq. 1). The student reads right after the
prompt; the teacher reads after its reasoning (`reasoning=`), which `generate_reasoning` can sample first
(docs/method.md, 'GDSO').

All dimensions of a batch go through the backbone in one forward pass: sequences are laid out image-major,
`(B * D)` rows, left-padded so the answer position is the last one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from .distributions import entropy, expected_score, normalized_reward, score_std
from .image_inputs import check_prompts, to_pil_images
from .preprocessing import image_transform_for
from .rubric import Rubric

logger = logging.getLogger(__name__)

# Entries of the token-side cache; a training run cycling through more prompts than this re-tokenises some.
TEXT_CACHE_SIZE = 8192
# Alert threshold on the mean vocabulary mass of the score tokens: template adherence, in docs/method.md,
# 'Score distributions'.
MIN_SCORE_TOKEN_MASS = 0.95


@dataclass
class ScoreOutput:
    """Per-dimension score distributions of a batch.

    Attributes:
        probs: `(B, D, K)` probability of each score level.
        expected: `(B, D)` expected score μ = Σ p_k v_k, in level units (e.g. 1.0–5.0).
        std: `(B, D)` standard deviation of the score distribution.
        entropy: `(B, D)` entropy in nats.
        reward: `(B,)` weighted mean over dimensions of the normalised expectation (μ − v_1) / (v_K − v_1).
        score_token_mass: `(B, D)` full-vocabulary probability mass on the K score tokens (template adherence).
        logits: `(B, D, K)` raw logits of the score tokens.
        dimensions: dimension names, in the order of axis 1.
        levels: level values, in the order of axis 2.
    """

    probs: torch.Tensor
    expected: torch.Tensor
    std: torch.Tensor
    entropy: torch.Tensor
    reward: torch.Tensor
    score_token_mass: torch.Tensor
    logits: torch.Tensor
    dimensions: tuple[str, ...]
    levels: tuple[float, ...]

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per image: per-dimension distribution, expected score and std, and the reward."""
        probs, expected, std = self.probs.detach().cpu(), self.expected.detach().cpu(), self.std.detach().cpu()
        records = []
        for b in range(probs.shape[0]):
            dims = {
                name: {
                    "distribution": [round(float(p), 6) for p in probs[b, d]],
                    "expected": round(float(expected[b, d]), 6),
                    "std": round(float(std[b, d]), 6),
                }
                for d, name in enumerate(self.dimensions)
            }
            records.append({"levels": list(self.levels), "dimensions": dims, "reward": float(self.reward[b].detach())})
        return records


class ZRewardScorer(nn.Module):
    """A VLM backbone, its processor and a `Rubric`, read as score distributions.

    The backbone is frozen (`requires_grad_(False)`, eval mode) but never run under `no_grad`: gradients reach the
    input pixels. The module owns no device; `.to()` moves it.

    Args:
        model: a transformers image-text-to-text model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, Gemma 3).
        processor: its official processor (tokenizer, chat template and image processor).
        rubric: dimensions, levels, score tokens and prompt wording.
        quantize: apply the official path's 8-bit roundings (straight-through) in the differentiable preprocessing.

    >>> from zreward_diffusers.testing import build_tiny_scorer
    >>> scorer = build_tiny_scorer("qwen2_vl")
    >>> out = scorer(torch.rand(2, 3, 56, 56), ["a red circle", "two blue squares"])
    >>> out.probs.shape, out.expected.shape, out.reward.shape
    (torch.Size([2, 4, 9]), torch.Size([2, 4]), torch.Size([2]))
    """

    def __init__(self, model: nn.Module, processor, rubric: Rubric | None = None, quantize: bool = True):
        super().__init__()
        self.model = model
        self.processor = processor
        self.rubric = rubric if rubric is not None else Rubric()
        self.quantize = quantize
        self.image_transform = image_transform_for(processor)
        self.register_buffer("score_token_ids", self._score_token_ids(), persistent=False)
        self.register_buffer("levels", self.rubric.levels_tensor(), persistent=False)
        self.register_buffer("dimension_weights", self.rubric.weights_tensor(), persistent=False)
        # Token-side inputs per (prompt, dimension, reasoning, image size), least recently used evicted first.
        self._text_cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._gradient_checkpointing = False
        self.model.requires_grad_(False)
        self.train(False)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def _score_token_ids(self) -> torch.Tensor:
        return score_token_ids(self.tokenizer, self.rubric.score_tokens, self.rubric.answer_prefix)

    def train(self, mode: bool = True):
        """The backbone always stays in eval mode (no dropout); checkpointed layers are re-flagged (see below)."""
        super().train(mode)
        self.model.eval()
        if self._gradient_checkpointing:
            self._flag_checkpointed_layers()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute backbone activations in backward instead of storing them (less memory, ~1 more forward).

        transformers only checkpoints layers whose `training` flag is set, so we set it on the checkpointed layer
        modules alone; their children (attention, dropout) stay in eval mode, so outputs are unchanged.
        """
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self._gradient_checkpointing = True
        self.train(self.training)

    def disable_gradient_checkpointing(self) -> None:
        self.model.activation_checkpointing_disable()
        self._gradient_checkpointing = False
        self.train(self.training)

    def _flag_checkpointed_layers(self) -> None:
        for module in self.model.modules():
            if getattr(module, "gradient_checkpointing", False):
                module.training = True

    # ------------------------------------------------------------------------------------------------ text side
    def build_text(self, prompt: str, dimension: str, reasoning: str | None = None) -> str:
        """The full model text for one input, ending with the answer prefix (the read position)."""
        messages = self.rubric.messages(prompt, dimension)
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if reasoning is None:
            return text + self.rubric.student_prefix + self.rubric.answer_prefix
        rubric = self.rubric
        return text + rubric.reasoning_prefix + reasoning + rubric.reasoning_suffix + rubric.answer_prefix

    def _encode_text(self, text: str, height: int, width: int) -> dict[str, torch.Tensor]:
        """Token-side inputs for `text` with an image of this size, exactly as the official processor builds them.

        The processor is run once on a blank image of the same size; its `pixel_values` are discarded and
        replaced by the differentiable ones (docs/design.md, 'Differentiable preprocessing'). The chat template
        already wrote any BOS token, so the tokenizer adds none (as `apply_chat_template(tokenize=True)` does).
        """
        blank = Image.new("RGB", (width, height))
        encoded = self.processor(text=[text], images=[blank], return_tensors="pt", add_special_tokens=False)
        return _sequence_fields(encoded)

    def _token_inputs(self, prompts, dimensions, reasoning, height: int, width: int) -> list[dict]:
        """Token-side inputs of every row (image-major), from the cache when the same input was seen before."""
        rows = []
        for b, prompt in enumerate(prompts):
            for d, dimension in enumerate(dimensions):
                chain = None if reasoning is None else reasoning[b][d]
                key = (prompt, dimension, chain, height, width)
                if key in self._text_cache:
                    self._text_cache.move_to_end(key)
                else:
                    self._text_cache[key] = self._encode_text(self.build_text(prompt, dimension, chain), height, width)
                    if len(self._text_cache) > TEXT_CACHE_SIZE:
                        self._text_cache.popitem(last=False)
                rows.append(self._text_cache[key])
        return rows

    def _collate(self, encodings: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Left-pad token-side inputs to one batch so every answer position is the last one."""
        length = max(e["input_ids"].shape[-1] for e in encodings)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = {}
        for key in encodings[0]:
            pad_value = pad_id if key == "input_ids" else 0
            rows = [
                nn.functional.pad(e[key], (length - e[key].shape[-1], 0), value=pad_value) for e in encodings
            ]
            batch[key] = torch.cat(rows, dim=0).to(self.score_token_ids.device)
        return batch

    def _dimensions(self, dimensions) -> tuple[str, ...]:
        if dimensions is None:
            return self.rubric.dimension_names
        if isinstance(dimensions, str):
            dimensions = [dimensions]
        for name in dimensions:
            self.rubric.dimension_index(name)
        return tuple(dimensions)

    @staticmethod
    def _check_reasoning(reasoning, batch_size: int, num_dims: int) -> None:
        if reasoning is not None and (len(reasoning) != batch_size or any(len(r) != num_dims for r in reasoning)):
            raise ValueError(
                f"`reasoning` must be a list of {batch_size} lists (one per image) of {num_dims} strings "
                "(one per dimension)"
            )

    def _texts(self, prompts, dimensions, reasoning) -> list[str]:
        """Texts in image-major order: row b * D + d is image b, dimension d."""
        self._check_reasoning(reasoning, len(prompts), len(dimensions))
        return [
            self.build_text(prompt, dim, None if reasoning is None else reasoning[b][d])
            for b, prompt in enumerate(prompts)
            for d, dim in enumerate(dimensions)
        ]

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, prompts: list[str], dimensions=None, reasoning=None) -> ScoreOutput:
        """Score float images `(B, 3, H, W)` in [0, 1] (already checked) through the differentiable path.

        `reasoning`, for teacher mode, is a list of B lists of D reasoning strings; `None` reads as the student.
        """
        prompts = check_prompts(prompts, images.shape[0])
        dimensions = self._dimensions(dimensions)
        batch_size, num_dims = images.shape[0], len(dimensions)
        height, width = images.shape[-2:]
        self._check_reasoning(reasoning, len(prompts), len(dimensions))
        text_inputs = self._collate(self._token_inputs(prompts, dimensions, reasoning, height, width))
        image_inputs = self.image_transform(images, quantize=self.quantize)
        image_inputs = _repeat_per_image(image_inputs, batch_size, num_dims)
        dtype = next(self.model.parameters()).dtype
        image_inputs["pixel_values"] = image_inputs["pixel_values"].to(dtype)
        return self._read(dict(text_inputs, **image_inputs), batch_size, dimensions)

    def score_pil(self, images, prompts: list[str], dimensions=None, reasoning=None) -> ScoreOutput:
        """Score PIL images or uint8 arrays through the official processor (no gradient to the pixels)."""
        pil_images = to_pil_images(images)
        prompts = check_prompts(prompts, len(pil_images))
        dimensions = self._dimensions(dimensions)
        texts = self._texts(prompts, dimensions, reasoning)
        repeated = [image for image in pil_images for _ in dimensions]
        return self._read(self._official_inputs(texts, repeated), len(pil_images), dimensions)

    def _official_inputs(self, texts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Run the official processor pair by pair, then left-pad the token fields and stack the image fields."""
        encoded = [
            self.processor(text=[t], images=[i], return_tensors="pt", add_special_tokens=False)
            for t, i in zip(texts, images, strict=True)
        ]
        inputs = self._collate([_sequence_fields(e) for e in encoded])
        for key in encoded[0]:
            if key not in inputs and isinstance(encoded[0][key], torch.Tensor):
                inputs[key] = torch.cat([e[key] for e in encoded]).to(self.score_token_ids.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        return inputs

    def _read(self, model_inputs: dict, batch_size: int, dimensions: tuple[str, ...]) -> ScoreOutput:
        outputs = self.model(**model_inputs, use_cache=False, logits_to_keep=1)
        logits = outputs.logits[:, -1]  # (B * D, V); softmax and moments in float32 (or float64)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        score_logits = logits[:, self.score_token_ids]  # (B * D, K)
        log_mass = torch.logsumexp(score_logits, dim=-1) - torch.logsumexp(logits, dim=-1)
        num_dims, num_levels = len(dimensions), score_logits.shape[-1]
        score_logits = score_logits.view(batch_size, num_dims, num_levels)
        probs = score_logits.softmax(dim=-1)
        expected = expected_score(probs, self.levels)
        index = torch.tensor([self.rubric.dimension_index(d) for d in dimensions], device=probs.device)
        weights = self.dimension_weights[index]
        reward = (normalized_reward(expected, self.levels) * weights).sum(-1) / weights.sum()
        mass = log_mass.exp().view(batch_size, num_dims)
        return ScoreOutput(
            probs=probs,
            expected=expected,
            std=score_std(probs, self.levels),
            entropy=entropy(probs),
            reward=reward,
            score_token_mass=mass,
            logits=score_logits,
            dimensions=dimensions,
            levels=self.rubric.levels,
        )

    # ------------------------------------------------------------------------------------------------ teacher
    @torch.no_grad()
    def generate_reasoning(
        self,
        images,
        prompts: list[str],
        dimensions=None,
        num_samples: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[list[list[str]]]:
        """Sample reasoning chains (teacher mode): `[b][d][m]` strings for B images, D dimensions, M samples.

        Generation starts after the rubric's `reasoning_prefix` and stops at the end-of-turn token or the first
        line of `reasoning_suffix` (e.g. `</think>`); read the distributions afterwards with
        `forward(..., reasoning=...)` / `score_pil(..., reasoning=...)`, never by sampling the score token.
        """
        pil_images = to_pil_images(images) if not isinstance(images, torch.Tensor) else None
        batch_size = len(pil_images) if pil_images is not None else images.shape[0]
        prompts = check_prompts(prompts, batch_size)
        dimensions = self._dimensions(dimensions)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be at least 1, got {num_samples}")
        base = [
            self.processor.apply_chat_template(self.rubric.messages(p, d), add_generation_prompt=True, tokenize=False)
            + self.rubric.reasoning_prefix
            for p in prompts
            for d in dimensions
        ]
        if pil_images is not None:
            inputs = self._official_inputs(base, [image for image in pil_images for _ in dimensions])
        else:
            height, width = images.shape[-2:]
            inputs = self._collate([self._encode_text(t, height, width) for t in base])
            pixel_inputs = _repeat_per_image(self.image_transform(images, quantize=True), batch_size, len(dimensions))
            pixel_inputs["pixel_values"] = pixel_inputs["pixel_values"].to(next(self.model.parameters()).dtype)
            inputs.update(pixel_inputs)
        stop = self.rubric.reasoning_suffix.strip().splitlines()[0] if self.rubric.reasoning_suffix.strip() else None
        generated = self.model.generate(
            **inputs,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            stop_strings=stop,
            tokenizer=self.tokenizer,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        if stop:
            texts = [t.split(stop)[0] for t in texts]
        texts = [t.strip() for t in texts]
        num_dims = len(dimensions)
        return [
            [texts[(b * num_dims + d) * num_samples : (b * num_dims + d + 1) * num_samples] for d in range(num_dims)]
            for b in range(batch_size)
        ]


def score_token_ids(tokenizer, tokens, answer_prefix: str) -> torch.Tensor:
    """Ids of `tokens` as they appear right after `answer_prefix`; each must be exactly one token there.

    >>> from zreward_diffusers.testing import build_tiny_scorer
    >>> scorer = build_tiny_scorer("qwen2_vl")
    >>> score_token_ids(scorer.tokenizer, ["1", "2"], "Score: ").shape
    torch.Size([2])
    """
    prefix_ids = tokenizer.encode(answer_prefix, add_special_tokens=False)
    ids = []
    for token in tokens:
        full = tokenizer.encode(answer_prefix + token, add_special_tokens=False)
        if len(full) != len(prefix_ids) + 1 or full[: len(prefix_ids)] != prefix_ids:
            raise ValueError(
                f"score token {token!r} is not a single token after the answer prefix {answer_prefix!r} "
                f"for this tokenizer (got ids {full} after prefix ids {prefix_ids}); choose other "
                "`score_tokens` or `answer_prefix` in the rubric"
            )
        ids.append(full[-1])
    return torch.tensor(ids, dtype=torch.long)


def _sequence_fields(encoded) -> dict[str, torch.Tensor]:
    """The token-aligned fields of a processor output (input_ids, attention_mask, token type ids)."""
    length = encoded["input_ids"].shape[-1]
    return {
        key: value
        for key, value in encoded.items()
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[-1] == length
        and not value.is_floating_point()
    }


def _repeat_per_image(image_inputs: dict[str, torch.Tensor], batch_size: int, repeats: int) -> dict:
    """Repeat each image's rows `repeats` times, image-major, whatever the per-image layout of the field.

    Qwen's `pixel_values` are `(B * N, F)` patch rows, `image_grid_thw` is `(B, 3)`, Gemma's `pixel_values` are
    `(B, 3, S, S)`; each becomes the same layout for `B * repeats` images.
    """
    repeated = {}
    for key, value in image_inputs.items():
        per_image = value.reshape(batch_size, -1, *value.shape[1:])  # (B, rows per image, ...)
        repeated[key] = per_image.repeat_interleave(repeats, dim=0).reshape(-1, *value.shape[1:])
    return repeated
