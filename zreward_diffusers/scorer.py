"""`ZRewardScorer`: a transformers VLM read as a distribution over rubric score levels.

For each (prompt, image, dimension) the rubric question is rendered with the backbone's chat template, the answer
prefix is forced, and the logits of the K score tokens at the answer position are soft-maxed (Q-Align, arXiv
2312.17090, generalised to K levels; docs/method.md, 'Score distributions', eq. 1). The student reads right after the
prompt; the teacher reads after its reasoning (`reasoning=`), which `generate_reasoning` can sample first
(docs/method.md, 'GDSO').

All dimensions of a batch go through the backbone in one forward pass: sequences are laid out image-major,
`(B * D)` rows, left-padded so the answer position is the last one.

Every entry (`__call__`, `score_pil`, `generate_reasoning`) checks its input before the backbone runs, with the
shared checks of `image_inputs` (docs/design.md, 'Public contract'): images (shape, dtype, NaN / Inf, range),
prompts (list of non-empty strings, one per image, no special token of the tokenizer) and the input length against
the backbone's `max_position_embeddings`.
"""

from __future__ import annotations

import logging
import numbers
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from .distributions import entropy, expected_score, normalized_reward, score_std
from .image_inputs import (
    check_image_tensor,
    check_prompt_list,
    special_token_pattern,
    special_tokens_of,
    to_pil_images,
    to_unit_range,
)
from .preprocessing import image_transform_for
from .rubric import Rubric

logger = logging.getLogger(__name__)

# Entries of the token-side cache; a training run cycling through more prompts than this re-tokenises some.
TEXT_CACHE_SIZE = 8192
# Alert threshold on the mean vocabulary mass of the score tokens: template adherence, in docs/method.md,
# 'Score distributions'.
MIN_SCORE_TOKEN_MASS = 0.95
# The mass is checked on a scorer's first read and every this many reads after (each check waits for the device),
# until it has warned once.
MASS_CHECK_EVERY = 64


@dataclass
class ScoreOutput:
    """Per-dimension score distributions of a batch.

    Attributes:
        probs: `(B, D, K)` probability of each score level.
        expected: `(B, D)` expected score μ = Σ p_k v_k, in level units (e.g. 1.0–5.0).
        std: `(B, D)` standard deviation of the score distribution.
        entropy: `(B, D)` entropy in nats.
        reward: `(B,)` the reward R. From `ZRewardScorer`: the weighted mean over dimensions of the normalised
            expectation (μ − v_1) / (v_K − v_1), i.e. R without uncertainty aversion or running normalisation; from
            `ZRewardLoss` (`score`, `reward_with_scores`): that loss's R, `ZRewardLoss.reward`, with its `kappa` and
            `normalize` (the two agree when those are off).
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
    input pixels. The module owns no device; `.to()` moves it, and images are moved to it.

    Prompts are data, never control: one that contains a special token of the tokenizer (`special_tokens`: chat
    markers, image / video placeholders) is refused with a `ValueError` naming `prompts[i]` and the token, as is an
    empty one or one whose input would exceed the backbone's `max_position_embeddings`. A warning (once per scorer)
    reports a backbone that puts less than `MIN_SCORE_TOKEN_MASS` of its probability on the score tokens.

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
        self.special_tokens = special_tokens_of(processor)
        self._special_token_pattern = special_token_pattern(self.special_tokens)

        self._mass_reads = 0
        self._warned_low_mass = False
        # Token-side inputs per (prompt, dimension, reasoning, image size), least recently used evicted first.
        self._text_cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._gradient_checkpointing = False
        self.model.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> ZRewardScorer:
        """The scorer of a Z-Reward checkpoint, or of a plain transformers VLM of a supported family read zero-shot
        (with the same warning): `ZRewardLoss.from_pretrained(...).scorer`; `kwargs` as there."""
        from .loss import ZRewardLoss

        return ZRewardLoss.from_pretrained(pretrained_model_name_or_path, **kwargs).scorer

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def max_positions(self) -> int | None:
        """The backbone's `max_position_embeddings` (its text config): the longest input it is built for."""
        config = getattr(self.model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        value = getattr(text_config, "max_position_embeddings", None)
        return int(value) if value else None

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

    def _check_reasoning(self, reasoning, batch_size: int, num_dims: int) -> None:
        """`reasoning`: B lists of D strings, none containing a special token (as for prompts)."""
        if reasoning is None:
            return
        if (isinstance(reasoning, str) or not isinstance(reasoning, Sequence) or len(reasoning) != batch_size
                or any(isinstance(r, str) or not isinstance(r, Sequence) or len(r) != num_dims for r in reasoning)):
            raise ValueError(
                f"`reasoning` must be a list of {batch_size} lists (one per image) of {num_dims} strings "
                "(one per dimension)"
            )
        for b, chains in enumerate(reasoning):
            for d, chain in enumerate(chains):
                if not isinstance(chain, str):
                    raise TypeError(f"`reasoning[{b}][{d}]` must be a string, got {type(chain).__name__}")
                found = self._special_token_pattern.search(chain) if self._special_token_pattern else None
                if found is not None:
                    raise ValueError(f"`reasoning[{b}][{d}]` contains the special token {found.group()!r} of the "
                                     "model's tokenizer; reasoning is read as text: remove it")

    # ------------------------------------------------------------------------------------------------ input checks
    def _unit_images(self, images) -> torch.Tensor:
        """The shared image check for float images `(B, 3, H, W)` in [0, 1] (`image_inputs.check_image_tensor`),
        then the images on the backbone's device, in float32 (float64 kept), clamped to [0, 1]."""
        check_image_tensor(images, "0,1")
        return to_unit_range(images.to(self.score_token_ids.device), "0,1")

    def check_prompts(self, prompts, batch_size: int | None, reserve: int = 0) -> list[str]:
        """The shared prompt check (`image_inputs.check_prompt_list`, this tokenizer's special tokens refused), then a
        prompt whose tokens alone (plus `reserve` generated tokens) exceed `max_positions` is refused at once,
        before anything is encoded; `_check_lengths` later counts the whole input exactly."""
        prompts = check_prompt_list(prompts, batch_size, self._special_token_pattern)
        limit = self.max_positions
        if limit is None:
            return prompts
        for index, prompt in enumerate(prompts):
            if len(prompt.encode("utf-8")) + reserve <= limit:  # only long texts are tokenised here
                continue
            num_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if num_tokens + reserve > limit:
                generated = f" plus `max_new_tokens` ({reserve})" if reserve else ""
                raise ValueError(
                    f"`prompts[{index}]` is too long for the backbone: {num_tokens} tokens on its own{generated}, "
                    f"more than its max_position_embeddings ({limit}) before the rubric template and the image's "
                    "tokens are even added; shorten the prompt"
                )
        return prompts

    def _check_lengths(self, lengths: list[int], num_dims: int, reasoning=None, reserve: int = 0) -> None:
        """Refuse, before the backbone runs, any row (image-major, `lengths[b * D + d]` tokens: rubric template,
        image tokens, prompt b, reasoning) that with `reserve` generated tokens exceeds `max_positions`."""
        limit = self.max_positions
        if limit is None:
            return
        for row, length in enumerate(lengths):
            if length + reserve > limit:
                b, d = divmod(row, num_dims)
                chain = f" with `reasoning[{b}][{d}]`" if reasoning is not None else ""
                generated = f" plus `max_new_tokens` ({reserve})" if reserve else ""
                raise ValueError(
                    f"`prompts[{b}]`{chain} is too long for the backbone: with the rubric template and the image's "
                    f"tokens the input is {length} tokens{generated}, more than its max_position_embeddings "
                    f"({limit}); shorten the prompt"
                )

    def _report_low_mass(self, mass: torch.Tensor) -> None:
        """Warn once per scorer when the score tokens hold on average less than `MIN_SCORE_TOKEN_MASS` of the
        vocabulary mass `(B, D)`; checked on the first read and every `MASS_CHECK_EVERY`-th after."""
        if self._warned_low_mass:
            return
        self._mass_reads += 1
        if (self._mass_reads - 1) % MASS_CHECK_EVERY:
            return
        mean_mass = float(mass.detach().mean())
        if mean_mass < MIN_SCORE_TOKEN_MASS:
            self._warned_low_mass = True
            logger.warning(
                "score tokens hold %.3f of the vocabulary mass on average (< %.2f): the model does not follow the "
                "rubric's answer format (expected for a randomly initialised tiny checkpoint)",
                mean_mass, MIN_SCORE_TOKEN_MASS,
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
        """Score float images `(B, 3, H, W)` in [0, 1] through the differentiable path.

        `images` of any float dtype on any device are checked (`image_inputs.check_image_tensor`: shape, dtype,
        NaN / Inf, range [0, 1] within `RANGE_TOLERANCE`, clamped), moved to the backbone's device and preprocessed
        in float32; the gradient comes back to them in their own dtype. `prompts` are checked (`check_prompts`).
        `reasoning`, for teacher mode, is a list of B lists of D reasoning strings; `None` reads as the student.
        """
        images = self._unit_images(images)
        batch_size, (height, width) = images.shape[0], images.shape[-2:]
        prompts = self.check_prompts(prompts, batch_size)
        dimensions = self._dimensions(dimensions)
        num_dims = len(dimensions)
        self._check_reasoning(reasoning, batch_size, num_dims)
        rows = self._token_inputs(prompts, dimensions, reasoning, height, width)
        self._check_lengths([row["input_ids"].shape[-1] for row in rows], num_dims, reasoning)
        text_inputs = self._collate(rows)
        image_inputs = self.image_transform(images, quantize=self.quantize)
        image_inputs = _repeat_per_image(image_inputs, batch_size, num_dims)
        dtype = next(self.model.parameters()).dtype
        image_inputs["pixel_values"] = image_inputs["pixel_values"].to(dtype)
        return self._read(dict(text_inputs, **image_inputs), batch_size, dimensions)

    def score_pil(self, images, prompts: list[str], dimensions=None, reasoning=None) -> ScoreOutput:
        """Score PIL images or uint8 arrays through the official processor (no gradient to the pixels); the same
        prompt checks as `forward`."""
        pil_images = to_pil_images(images)
        prompts = self.check_prompts(prompts, len(pil_images))
        dimensions = self._dimensions(dimensions)
        texts = self._texts(prompts, dimensions, reasoning)
        repeated = [image for image in pil_images for _ in dimensions]
        encoded = self._official_encodings(texts, repeated)
        self._check_lengths([e["input_ids"].shape[-1] for e in encoded], len(dimensions), reasoning)
        return self._read(self._official_inputs(encoded), len(pil_images), dimensions)

    def _official_encodings(self, texts: list[str], images: list[Image.Image]) -> list:
        """The official processor's output for each (text, image) pair."""
        return [
            self.processor(text=[t], images=[i], return_tensors="pt", add_special_tokens=False)
            for t, i in zip(texts, images, strict=True)
        ]

    def _official_inputs(self, encoded: list) -> dict[str, torch.Tensor]:
        """Left-pad the token fields of the official encodings and stack their image fields."""
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
        self._report_low_mass(mass)
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

        `images` are float tensors `(B, 3, H, W)` in [0, 1] (checked as in `forward`), PIL images or uint8 arrays;
        `prompts` are checked as in `forward`, and the input plus `max_new_tokens` must fit the backbone's positions.
        Generation starts after the rubric's `reasoning_prefix` and stops at the end-of-turn token or the first
        line of `reasoning_suffix` (e.g. `</think>`); read the distributions afterwards with
        `forward(..., reasoning=...)` / `score_pil(..., reasoning=...)`, never by sampling the score token.
        """
        if isinstance(images, torch.Tensor):
            pil_images, images = None, self._unit_images(images)
        else:
            pil_images = to_pil_images(images)
        batch_size = len(pil_images) if pil_images is not None else images.shape[0]
        for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"`{name}` must be at least 1, got {value}")
        prompts = self.check_prompts(prompts, batch_size, reserve=max_new_tokens)
        dimensions = self._dimensions(dimensions)
        base = [
            self.processor.apply_chat_template(self.rubric.messages(p, d), add_generation_prompt=True, tokenize=False)
            + self.rubric.reasoning_prefix
            for p in prompts
            for d in dimensions
        ]
        if pil_images is not None:
            encoded = self._official_encodings(base, [image for image in pil_images for _ in dimensions])
            self._check_lengths([e["input_ids"].shape[-1] for e in encoded], len(dimensions), reserve=max_new_tokens)
            inputs = self._official_inputs(encoded)
        else:
            height, width = images.shape[-2:]
            encoded = [self._encode_text(t, height, width) for t in base]
            self._check_lengths([e["input_ids"].shape[-1] for e in encoded], len(dimensions), reserve=max_new_tokens)
            inputs = self._collate(encoded)
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
