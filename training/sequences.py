"""Reward-model rows for training: image, prompt, rubric dimension, optional reasoning — encoded, run and read; and
the conversations the world's base models are pretrained on (`ConversationEncoder`).

A row is one (image, prompt, dimension) input with an optional reasoning chain. Its tokens are built segment by
segment, as `ZRewardScorer` reads them at inference (`tests/test_training_sequences.py` checks that the two
tokenisations agree):

    [chat template: image + the rubric's question] [reasoning prefix] [reasoning] [reasoning suffix] [answer prefix]
    [chat template: image + the rubric's question] [student prefix] [answer prefix]          (no reasoning)

The reasoning and its suffix are the row's *trained tokens* (cross-entropy in SFT, policy gradient in GDSO: the
decision to stop reasoning is the policy's; the forced answer prefix and the score slot are not). Rows are left-padded
so that every read position — the slot after the answer prefix, where the score distribution is read — is the
last column. Pixels go through the differentiable transform, bit-identical to the official processor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from PIL import Image

from zreward_diffusers.preprocessing import QwenVLImageTransform, image_transform_for
from zreward_diffusers.rubric import Rubric
from zreward_diffusers.scorer import _sequence_fields, score_token_ids


@dataclass(frozen=True)
class Row:
    """One input: `image` indexes the encoder's image bank; `reasoning=None` is a no-reasoning (student) read."""

    image: int
    prompt: str
    dimension: str
    reasoning: str | None = None


@dataclass
class RowOutput:
    """What one forward pass over rows gives.

    score_log_probs: `(B, K)` log-softmax over the rubric's K score tokens at the read position (the distribution).
    answer_log_probs: `(B, V)` log-softmax over the whole vocabulary at the read position.
    token_log_probs: `(B, S)` log-probabilities of the tokens in the trained span (0 where `token_mask` is 0).
    token_mask: `(B, S)` 1 on trained tokens (reasoning and its suffix).
    hidden: `(B, H)` last hidden state at the read position (for scalar heads), if asked for.
    """

    score_log_probs: torch.Tensor
    answer_log_probs: torch.Tensor
    token_log_probs: torch.Tensor
    token_mask: torch.Tensor
    hidden: torch.Tensor | None = None


class RowEncoder:
    """Turns `Row`s into left-padded model inputs for one processor, rubric and bank of uint8 images `(N, H, W, 3)`.

    `answer_prefix` / `read_tokens` replace the rubric's answer prefix and score tokens (a RewardDance-style yes/no
    read uses `read_tokens=("no", "yes")`).
    """

    def __init__(self, processor, rubric: Rubric, images: torch.Tensor, answer_prefix: str | None = None,
                 read_tokens=None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"`images` must be a uint8 tensor (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.rubric = rubric
        self.images = images
        self.answer_prefix = rubric.answer_prefix if answer_prefix is None else answer_prefix
        tokens = rubric.score_tokens if read_tokens is None else tuple(read_tokens)
        self.read_token_ids = score_token_ids(self.tokenizer, tokens, self.answer_prefix)
        self.transform = image_transform_for(processor)
        self._prefixes: dict[tuple[str, str, bool], dict[str, list[int]]] = {}
        self._blank = Image.new("RGB", (images.shape[2], images.shape[1]))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def prefix(self, prompt: str, dimension: str, reasoning: bool) -> dict[str, list[int]]:
        """Token fields up to where the reasoning starts (`reasoning=True`) or up to the answer prefix."""
        key = (prompt, dimension, reasoning)
        if key not in self._prefixes:
            text = self.processor.apply_chat_template(self.rubric.messages(prompt, dimension),
                                                      add_generation_prompt=True, tokenize=False)
            text += self.rubric.reasoning_prefix if reasoning else self.rubric.student_prefix
            encoded = self.processor(text=[text], images=[self._blank], return_tensors="pt", add_special_tokens=False)
            self._prefixes[key] = {name: value[0].tolist() for name, value in _sequence_fields(encoded).items()}
        return self._prefixes[key]

    def encode_row(self, row: Row) -> tuple[dict[str, list[int]], list[int]]:
        """Token fields of a full row and its trained-token mask."""
        fields = {name: list(value) for name, value in self.prefix(row.prompt, row.dimension,
                                                                     row.reasoning is not None).items()}
        trained = [0] * len(fields["input_ids"])
        if row.reasoning is not None:
            ids = self._ids(row.reasoning) + self._ids(self.rubric.reasoning_suffix)
            fields["input_ids"] += ids
            trained += [1] * len(ids)
        answer = self._ids(self.answer_prefix)
        fields["input_ids"] += answer
        trained += [0] * len(answer)
        extra = len(fields["input_ids"]) - len(fields["attention_mask"])
        for name in fields:
            if name != "input_ids":
                fields[name] += [1 if name == "attention_mask" else 0] * extra
        return fields, trained

    def _pixels(self, rows) -> dict[str, torch.Tensor]:
        images = self.images[[row.image for row in rows]].permute(0, 3, 1, 2).float() / 255.0
        return self.transform(images, quantize=True)

    def _pad(self, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(fields["input_ids"]) for fields in encoded)
        batch = {}
        for name in encoded[0]:
            value = self.pad_id if name == "input_ids" else 0
            rows = [[value] * (length - len(fields[name])) + fields[name] for fields in encoded]
            batch[name] = torch.tensor(rows, dtype=torch.long)
        return batch

    def __call__(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        """Model inputs plus `train_mask` (`(B, L)` float, 1 on trained tokens)."""
        encoded, masks = zip(*(self.encode_row(row) for row in rows), strict=True)
        batch = self._pad(list(encoded))
        length = batch["input_ids"].shape[1]
        batch["train_mask"] = torch.tensor([[0] * (length - len(m)) + m for m in masks], dtype=torch.float32)
        batch.update(self._pixels(rows))
        return batch

    def generation_inputs(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        """Left-padded inputs that end where the reasoning starts, for sampling reasoning chains."""
        batch = self._pad([self.prefix(row.prompt, row.dimension, True) for row in rows])
        batch.update(self._pixels(rows))
        return batch


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key != "train_mask"}


def forward_rows(model, batch: dict[str, torch.Tensor], read_token_ids: torch.Tensor, with_hidden: bool = False
                 ) -> RowOutput:
    """Run `model` on a `RowEncoder` batch (already on the model's device) and read it.

    Logits are computed only over the trained span and the read position (`logits_to_keep`), in float32.
    """
    mask = batch["train_mask"]
    length = mask.shape[1]
    columns = (mask > 0).any(dim=0).nonzero().squeeze(1)
    first = int(columns[0]) if len(columns) else length  # first trained column (length: none)
    keep = torch.arange(first - 1, length, device=mask.device)  # logits at t predict token t + 1; last: the read
    outputs = model(**_model_inputs(batch), use_cache=False, logits_to_keep=keep, output_hidden_states=with_hidden)
    logits = outputs.logits.float()
    log_probs = logits.log_softmax(dim=-1)
    targets = batch["input_ids"][:, first:]
    token_log_probs = log_probs[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask[:, first:]
    answer_log_probs = log_probs[:, -1]
    score_log_probs = logits[:, -1, read_token_ids.to(logits.device)].log_softmax(dim=-1)
    hidden = outputs.hidden_states[-1][:, -1] if with_hidden else None
    return RowOutput(score_log_probs, answer_log_probs, token_log_probs, mask[:, first:], hidden)


@torch.no_grad()
def sample_reasoning(model, encoder: RowEncoder, rows: list[Row], num_samples: int, max_new_tokens: int,
                     temperature: float = 1.0, top_p: float = 1.0, generator_seed: int | None = None
                     ) -> tuple[list[list[str]], list[list[bool]]]:
    """Sample `num_samples` reasoning chains per row: `(texts[row][m], finished[row][m])`.

    Generation stops at the end-of-turn token or at the first line of the rubric's reasoning suffix (`</think>`);
    `finished` is False for a chain that never closed its reasoning (ran out of `max_new_tokens` or ended the turn
    first) or is empty: a format violation. With
    `generator_seed`, the torch RNG is seeded with it for this call (and restored after), so the chains depend on
    the rows and the seed only — not on other processes or earlier calls.
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be at least 1, got {num_samples}")
    unwrapped = getattr(model, "module", model)
    device = next(unwrapped.parameters()).device
    inputs = {key: value.to(device) for key, value in encoder.generation_inputs(rows).items()}
    suffix = encoder.rubric.reasoning_suffix.strip()
    stop = suffix.splitlines()[0] if suffix else None
    fork = torch.random.fork_rng(devices=[]) if generator_seed is not None else contextlib.nullcontext()
    with fork:
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        was_training = unwrapped.training
        unwrapped.eval()
        generated = unwrapped.generate(
            **inputs, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples, stop_strings=stop, tokenizer=encoder.tokenizer,
            pad_token_id=encoder.pad_id,
        )
        unwrapped.train(was_training)
    new_tokens = generated[:, inputs["input_ids"].shape[1]:]
    # the stop string may be a special token (`</think>` in Qwen3 tokenizers): look for it in the raw decoding
    raw = encoder.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
    clean = encoder.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    chains, finished = [], []
    for raw_text, clean_text in zip(raw, clean, strict=True):
        stopped = stop is not None and stop in raw_text
        if stopped:
            before = raw_text.split(stop)[0]
            chain = encoder.tokenizer.decode(encoder.tokenizer.encode(before, add_special_tokens=False),
                                             skip_special_tokens=True).strip()
        else:
            chain = clean_text.strip()
        chains.append(chain)
        finished.append((stop is None or stopped) and bool(chain))
    return ([chains[r * num_samples:(r + 1) * num_samples] for r in range(len(rows))],
            [finished[r * num_samples:(r + 1) * num_samples] for r in range(len(rows))])


def expected_from_log_probs(score_log_probs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """μ = Σ_k p_k v_k from log-probabilities `(..., K)`."""
    return (score_log_probs.exp() * levels.to(score_log_probs)).sum(-1)


def user_messages(question: str, with_image: bool = True) -> list[dict]:
    """A user turn; the first one of a conversation shows the image before the question, as the rubric does."""
    content = [{"type": "image"}] if with_image else []
    return [{"role": "user", "content": content + [{"type": "text", "text": question}]}]


class ConversationEncoder:
    """Turns conversations about one image, `(image index, [(question, answer), ...])`, into training inputs, as the
    official processor builds them (the base models' pretraining, `training.pretrain_base`; `RowEncoder` encodes a
    rubric's single turn for the reward models).

    The first user turn shows the image (the processor expands its placeholder into image tokens); each answer is
    followed by the end-of-turn token; a `None` answer ends the row at the generation prompt (for reading the next
    token). Rows are right-padded. Each answer token carries the weight 1 / (answer length) in `label_weights`, so
    a one-word answer weighs as much as a description. Images go through `QwenVLImageTransform`, bit-identical to
    the processor's pixels.
    """

    def __init__(self, processor, images: torch.Tensor):
        self.processor = processor
        self.images = images  # (N, H, W, 3) uint8
        self.transform = QwenVLImageTransform.from_image_processor(processor.image_processor)
        self.end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._prompts: dict[tuple[str, bool], tuple[list[int], list[int]]] = {}
        height, width = images.shape[1:3]
        self._blank = Image.new("RGB", (width, height))

    def prompt(self, question: str, first: bool) -> tuple[list[int], list[int]]:
        """`input_ids` and `mm_token_type_ids` (1 on image tokens) of a user turn and the generation prompt."""
        if (question, first) not in self._prompts:
            text = self.processor.apply_chat_template(user_messages(question, with_image=first),
                                                      add_generation_prompt=True, tokenize=False)
            if first:
                encoded = self.processor(text=[text], images=[self._blank], add_special_tokens=False)
                self._prompts[question, first] = (list(encoded["input_ids"][0]), list(encoded["mm_token_type_ids"][0]))
            else:  # the newline closes the previous assistant turn
                ids = self.processor.tokenizer.encode("\n" + text, add_special_tokens=False)
                self._prompts[question, first] = (ids, [0] * len(ids))
        return self._prompts[question, first]

    def answer_ids(self, answer: str | None) -> list[int]:
        if answer is None:
            return []
        return self.processor.tokenizer.encode(answer, add_special_tokens=False) + [self.end_of_turn]

    def single_token_id(self, answer: str) -> int:
        ids = self.processor.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"evaluated answers must be single tokens; {answer!r} is {ids} (raise `vocab_size`)")
        return ids[0]

    def _row(self, turns) -> tuple[list[int], list[int], list[float]]:
        ids, types, weights = [], [], []
        for turn, (question, answer) in enumerate(turns):
            prompt_ids, prompt_types = self.prompt(question, first=turn == 0)
            answer_ids = self.answer_ids(answer)
            ids += prompt_ids + answer_ids
            types += prompt_types + [0] * len(answer_ids)
            weights += [0.0] * len(prompt_ids) + [1.0 / max(len(answer_ids), 1)] * len(answer_ids)
        return ids, types, weights

    def length(self, row) -> int:
        return len(self._row(row[1])[0])

    def __call__(self, rows) -> dict[str, torch.Tensor]:
        encoded = [self._row(turns) for _, turns in rows]
        shape = (len(rows), max(len(ids) for ids, _, _ in encoded))
        input_ids = torch.full(shape, self.processor.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        mm_token_type_ids = torch.zeros(shape, dtype=torch.long)
        label_weights = torch.zeros(shape)
        for row, (ids, types, weights) in enumerate(encoded):  # right padding
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            mm_token_type_ids[row, : len(ids)] = torch.tensor(types)
            label_weights[row, : len(ids)] = torch.tensor(weights)
        images = self.images[[index for index, _ in rows]]  # (B, H, W, 3) uint8
        pixels = self.transform(images.permute(0, 3, 1, 2).float() / 255.0)  # (B, 3, H, W) in [0, 1]
        return dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids,
                    label_weights=label_weights, **pixels)
