"""The rubric: which dimensions are scored, on which levels, read from which tokens, asked with which words.

Z-Reward (arXiv 2606.09076) scores four dimensions — alignment, aesthetics, realism and physical plausibility — on a
half-point scale from 1.0 to 5.0 (nine levels). A single answer position must carry a nine-way distribution, so
the levels are read from nine single-token symbols, the digits "1".."9", with the mapping stated in the prompt
(docs/method.md, 'Score distributions'): level L means score (L + 1) / 2.

>>> rubric = Rubric()
>>> rubric.dimension_names, rubric.num_levels, rubric.levels[0], rubric.levels[-1]
(('alignment', 'aesthetics', 'realism', 'physical_plausibility'), 9, 1.0, 5.0)
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass, field

import torch


@dataclass(frozen=True)
class RubricDimension:
    """One scored dimension: its `name` (used in code and outputs) and the `question` the model is asked."""

    name: str
    question: str


DEFAULT_DIMENSIONS = (
    RubricDimension("alignment", "How well does the image match the text of the prompt?"),
    RubricDimension("aesthetics", "How pleasing is the composition, colour and detail of the image?"),
    RubricDimension("realism", "Does the image look like a clean, real photograph?"),
    RubricDimension(
        "physical_plausibility", "Are shadows, lighting, support and occlusion physically plausible?"
    ),
)

DEFAULT_PROMPT_TEMPLATE = (
    'Prompt: "{prompt}"\nDimension: {dimension}. {question}\n'
    "Rate the image for the prompt on a scale from 1 to 9 where level L means score (L+1)/2. "
    "Answer with one digit."
)


@dataclass(frozen=True)
class Rubric:
    """Dimensions, score levels, score tokens and the prompt wording of a Z-Reward model.

    Args:
        dimensions: the scored dimensions, in output order.
        levels: the value of each score level, finite and strictly increasing (default 1.0, 1.5, ..., 5.0).
        score_tokens: one single-token string per level, read at the answer position.
        prompt_template: the user message, with `{prompt}`, `{dimension}` and `{question}` fields; the image comes
            first in the message.
        answer_prefix: text forced at the start of the answer, after which the score token is read.
        student_prefix: text between the assistant turn and `answer_prefix` when there is no reasoning (e.g. an
            empty `<think>\\n\\n</think>\\n\\n` block for thinking models).
        reasoning_prefix / reasoning_suffix: wrap a teacher's reasoning before `answer_prefix`.
        weights: per-dimension weights of the overall reward, finite, non-negative, with a positive sum; `None`
            means uniform (docs/method.md eq. 3).
    """

    dimensions: tuple[RubricDimension, ...] = DEFAULT_DIMENSIONS
    levels: tuple[float, ...] = tuple(1.0 + 0.5 * k for k in range(9))
    score_tokens: tuple[str, ...] = tuple(str(k) for k in range(1, 10))
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    answer_prefix: str = "Score: "
    student_prefix: str = ""
    reasoning_prefix: str = "<think>\n"
    reasoning_suffix: str = "\n</think>\n"
    weights: tuple[float, ...] | None = field(default=None)

    def __post_init__(self):
        object.__setattr__(self, "dimensions", tuple(RubricDimension(**d) if isinstance(d, dict) else d
                                                     for d in self.dimensions))
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        object.__setattr__(self, "score_tokens", tuple(self.score_tokens))
        if not self.dimensions:
            raise ValueError("`dimensions` must name at least one dimension")
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"`dimensions` names must be unique, got {names}")
        if not all(math.isfinite(v) for v in self.levels):
            raise ValueError(f"`levels` must be finite numbers, got {self.levels}")
        if len(self.levels) < 2 or any(b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ValueError(f"`levels` must be at least two strictly increasing values, got {self.levels}")
        if len(self.score_tokens) != len(self.levels):
            raise ValueError(
                f"`score_tokens` must have one token per level ({len(self.levels)}), got {len(self.score_tokens)}"
            )
        if len(set(self.score_tokens)) != len(self.score_tokens):
            raise ValueError(f"`score_tokens` must be distinct, got {self.score_tokens}")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
            self.prompt_template.format(prompt="", dimension="", question="")
        except (ValueError, KeyError, IndexError, AttributeError) as error:
            raise ValueError(f"`prompt_template` must be a format string with only the fields {{prompt}}, "
                             f"{{dimension}} and {{question}}, got {self.prompt_template!r} ({error})") from None
        if "prompt" not in fields:
            raise ValueError(f"`prompt_template` must contain {{prompt}}, got {self.prompt_template!r}")
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if (len(weights) != len(self.dimensions) or not all(math.isfinite(w) and w >= 0 for w in weights)
                    or sum(weights) <= 0):
                raise ValueError(
                    f"`weights` must be {len(self.dimensions)} finite non-negative numbers with a positive sum, "
                    f"got {weights}"
                )
            object.__setattr__(self, "weights", weights)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def dimension_index(self, name: str) -> int:
        """Position of dimension `name`; a ValueError lists the known ones."""
        if name not in self.dimension_names:
            raise ValueError(f"unknown rubric dimension {name!r}; this rubric has {list(self.dimension_names)}")
        return self.dimension_names.index(name)

    def levels_tensor(self) -> torch.Tensor:
        """The level values as a float32 tensor of shape `(K,)`."""
        return torch.tensor(self.levels, dtype=torch.float32)

    def weights_tensor(self) -> torch.Tensor:
        """Normalised dimension weights `(D,)` summing to 1 (uniform when `weights` is None)."""
        weights = torch.ones(len(self.dimensions)) if self.weights is None else torch.tensor(self.weights)
        return (weights / weights.sum()).to(torch.float32)

    def messages(self, prompt: str, dimension: str) -> list[dict]:
        """The chat messages (image first, then the rubric question) for one prompt and dimension."""
        question = self.dimensions[self.dimension_index(dimension)].question
        text = self.prompt_template.format(prompt=prompt, dimension=dimension.replace("_", " "), question=question)
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rubric:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rubric fields {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**data)
