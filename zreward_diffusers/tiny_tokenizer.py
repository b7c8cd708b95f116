"""A byte-level BPE tokenizer trained locally, wrapped in a family's own transformers tokenizer class.

Real checkpoints ship their tokenizer; our tiny test and demo backbones cannot download one, so we train a small
byte-level BPE on a fixed corpus (rubric prompts, rationale vocabulary, the synthetic world's words) with the same
pre-tokenisation as the family (Qwen's regex splits every digit into its own token, so the score symbols "1".."9"
are single tokens) and load it into the family's real tokenizer class, with the family's special tokens.

Gemma 3 is the exception to "byte-level": its tokenizer is a SentencePiece-style BPE (spaces become "▁", unknown
characters fall back to `<0xNN>` byte tokens), trained here by `train_sentencepiece_style_bpe`.

In every family the answer prefix "Score: " ends with a token of its own for the trailing space (Qwen "Ġ", Gemma
"▁"), so the score digit that follows is the single token "1".."9", the same id as `tokenizer.encode("7")` without
special tokens.

>>> tokenizer = build_tiny_tokenizer("qwen2_vl")
>>> [tokenizer.convert_ids_to_tokens(i) for i in tokenizer.encode("Score: 7")][-1]
'7'
>>> tokenizer = build_tiny_tokenizer("gemma3")
>>> tokenizer.convert_ids_to_tokens(tokenizer.encode("Score: 7"))
['<bos>', 'Score:', '▁', '7']
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

# Words the tiny models need: the rubric prompt, the answer prefix, reasoning vocabulary, the synthetic world.
_CORPUS_WORDS = """
Rate the image for the prompt on a scale from 1 to 9 where level L means score (L+1)/2. Answer with one digit.
Score: Prompt: Dimension: alignment aesthetics realism physical plausibility overall quality
How well does the image match the text? How pleasing is the composition? Does it look like a real photograph?
Are shadows, lighting, support and occlusion physically plausible?
The prompt asks for one two three four five six circle circles square squares triangle triangles star stars
red green blue yellow purple orange white black gray pink brown cyan background on a the of with and but
I count see there is are object objects image looks blurry noisy sharp clean compressed cropped overlapping
shadow shadows light lighting from left right top bottom ground floating resting occluded behind in front
correct wrong missing extra colour color shape count matches does not match so therefore the score is good bad
style photo painting drawing cartoon sketch watercolor minimal detailed high low contrast saturated dull cast
yes no better worse than because think answer level user model assistant system
0 1 2 3 4 5 6 7 8 9
"""


def _corpus() -> list[str]:
    lines = [line.strip() for line in _CORPUS_WORDS.strip().splitlines() if line.strip()]
    words = " ".join(lines).split()
    # Repeat each line and the sentence-internal bigrams so BPE learns whole words.
    return lines * 4 + [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]


# Qwen2 / Qwen2.5 / Qwen3 pre-tokeniser regex: digits are isolated (\p{N}), so "17" is two tokens.
_QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]

# ChatML, as the Qwen families use it, reduced to what a rubric prompt needs (text and image parts).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Gemma's special tokens. The first five have Gemma's ids 0..4; the rest are ordinary vocabulary entries in the real
# checkpoint (ids 105, 106, 255999, 256000, 262144) and registered as special tokens here.
_GEMMA_SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]

# Named multimodal tokens, as the real checkpoint's tokenizer_config.json gives them; `Gemma3Processor.__init__` reads
# `tokenizer.boi_token(_id)`, `tokenizer.eoi_token` and `tokenizer.image_token(_id)`.
GEMMA3_MULTIMODAL_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}

# Gemma 3's released chat template, minus the role-alternation check: it writes its own BOS (so
# `processor.apply_chat_template(tokenize=True)` tokenises without special tokens, while rendering it and calling the
# processor on the text adds a second BOS unless `add_special_tokens=False`); "assistant" is renamed "model"; text
# parts are trimmed; an image part is `<start_of_image>`, which the processor expands to
# `\n\n<start_of_image>` + `<image_soft_token>` * image_seq_length + `<end_of_image>\n\n`.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def train_byte_level_bpe(
    corpus: list[str], vocab_size: int, pretokenize_regex: str = _QWEN_PRETOKENIZE_REGEX
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on `corpus`; returns `(vocab, merges)` in the form transformers' BPE tokenizers take.

    Deterministic: the same corpus and size give the same vocabulary.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def train_sentencepiece_style_bpe(
    corpus: list[str], vocab_size: int, special_tokens: list[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a Gemma-style BPE on `corpus`: spaces become "▁", 256 `<0xNN>` byte-fallback tokens, digits split.

    Returns `(vocab, merges)` for `GemmaTokenizer`; `special_tokens` take ids 0, 1, ... and the byte tokens follow.
    `vocab_size` counts all of them. Deterministic.

    At inference `GemmaTokenizer` does not pre-tokenise (its normaliser replaces every space before its split on
    spaces runs), so BPE merges may cross word boundaries. Training on "▁"-initial words with isolated digits, as
    SentencePiece with `split_digits` does for the real vocabulary, yields merges that never end in "▁" and never
    touch a digit: "Score: 7" encodes as "Score:", "▁", "7", whatever precedes it.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("▁", behavior="merged_with_next"), pre_tokenizers.Digits(individual_digits=True)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # "\n" is an ordinary token in Gemma's vocabulary (the processor wraps images in "\n\n"), not a byte token.
        initial_alphabet=["▁", "\n", *"0123456789"],
        special_tokens=list(special_tokens) + byte_tokens,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def build_tiny_tokenizer(family: str, vocab_size: int = 1024, extra_corpus: list[str] | None = None):
    """Build the tokenizer of a tiny `family` backbone (e.g. `"qwen2_vl"`), trained on our fixed corpus.

    `extra_corpus` adds text (e.g. descriptions of the synthetic world) before training.
    """
    corpus = _corpus() + list(extra_corpus or [])
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        from transformers import Qwen2Tokenizer, Qwen3_5Tokenizer

        vocab, merges = train_byte_level_bpe(corpus, vocab_size)
        tokenizer_class = Qwen3_5Tokenizer if family == "qwen3_5" else Qwen2Tokenizer
        tokenizer = tokenizer_class(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tokenizer.add_special_tokens({"additional_special_tokens": _QWEN_SPECIAL_TOKENS[1:]})
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
        return tokenizer
    if family == "gemma3":
        from transformers import GemmaTokenizer

        vocab, merges = train_sentencepiece_style_bpe(corpus, vocab_size, _GEMMA_SPECIAL_TOKENS)
        # Named pad/eos/bos/unk/mask are GemmaTokenizer's defaults; the real checkpoint prepends <bos> (add_bos_token).
        tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                                   extra_special_tokens=dict(GEMMA3_MULTIMODAL_TOKENS))
        tokenizer.add_special_tokens({"extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
                                     replace_extra_special_tokens=False)
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
        return tokenizer
    raise ValueError(f"`family` must be one of {sorted(TINY_TOKENIZER_FAMILIES)}, got {family!r}")


TINY_TOKENIZER_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "gemma3")
