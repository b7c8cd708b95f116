"""What the world's images can be asked, with each answer written from the image's true scene.

The world's base VLMs (`training.pretrain_base`) learn to see from conversations about one image (docs/design.md,
'The synthetic world'): short questions (object colour, shape and count, background colour, sun side, shadow
direction, floating objects, degradations), or one long one answered with the image's description (`describe`):
"What is in the image?", "Describe the image.", and the rubric's own question for the image's prompt, answered
with the description, never with a score. This module holds the question types and their wordings (`TASKS`,
`RUBRIC_TASK`), how they make up one conversation (`conversation`), the attributes evaluated on held-out images and
their candidate answers (`EVAL_CANDIDATES`, `evaluated_question`, `true_answer`, `is_clean`), and the text a
tokenizer for the world is trained on (`corpus`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..rubric import Rubric
from .grammar import BACKGROUND_COLOURS, COUNT_WORDS, OBJECT_COLOURS, SHAPES
from .language import describe
from .oracle import DIMENSIONS
from .scene import Scene
from .world import SyntheticItem


def _count_word(count: int) -> str:
    return COUNT_WORDS.get(count, str(count))


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _shadow_side(scene: Scene) -> str:
    if scene.shadows == "none":
        return "there are no shadows"
    away = "right" if scene.light == "left" else "left"
    return f"to the {away if scene.shadows == 'consistent' else scene.light}"


def _objects(scene: Scene) -> str:
    return describe(scene).split(".")[0]  # "three red circles on a blue background"


# Question types: the wordings of each, with the answer written from the true scene. Answers are lower-case words or
# phrases. The first wording of colour, shape, count and background is the one evaluated.
TASKS: dict[str, tuple[tuple[str, Callable[[Scene], str]], ...]] = {
    "colour": (("What colour are the objects?", lambda s: s.colour),
               ("Which colour are the shapes?", lambda s: s.colour)),
    "shape": (("What shape are the objects?", lambda s: s.shape), ("Which shape is drawn?", lambda s: s.shape)),
    "count": (("How many objects are there?", lambda s: _count_word(s.count)),
              ("How many shapes do you count?", lambda s: _count_word(s.count)),
              ("How many objects are there? Answer with a digit.", lambda s: str(s.count))),
    "background": (("What colour is the background?", lambda s: s.background),),
    "sun": (("Which side is the sun on?", lambda s: s.light),),
    "shadows": (("Which way do the shadows fall?", _shadow_side),),
    "floating": (("How many objects are floating?", lambda s: _count_word(s.floating) if s.floating else "none"),),
    "blur": (("Is the image blurry?", lambda s: _yes_no(s.blur > 0)),),
    "noise": (("Is the image noisy?", lambda s: _yes_no(s.noise > 0)),),
    "compression": (("Does the image show compression artefacts?", lambda s: _yes_no(s.compression > 0)),),
    "cast": (("Does the image have a colour cast?", lambda s: _yes_no(s.cast_strength > 0)),),
    "crop": (("Is the image cropped?", lambda s: _yes_no(s.crop > 0)),),
    "overlap": (("Do any objects overlap?", lambda s: _yes_no(s.overlap)),),
    "objects": (("What is in the image?", _objects),),
    "describe": (("Describe the image.", describe),),
}
# The rubric's question for the image's prompt and a random dimension, answered with the description (no score).
RUBRIC_TASK = "rubric"
# Question types whose answer gives the others away: asked alone, never in a conversation with other questions.
ASKED_ALONE = ("objects", "describe", RUBRIC_TASK)

# Attributes evaluated on held-out images: the candidate answers of each (every value the world can show).
EVAL_CANDIDATES = {
    "colour": OBJECT_COLOURS,
    "shape": SHAPES,
    "count": tuple(_count_word(n) for n in range(6)),
    "background": BACKGROUND_COLOURS,
}


def _ask(name: str, item: SyntheticItem, rng: np.random.Generator) -> tuple[str, str]:
    if name == RUBRIC_TASK:
        messages = Rubric().messages(item.prompt, DIMENSIONS[int(rng.integers(len(DIMENSIONS)))])
        return messages[0]["content"][-1]["text"], describe(item.scene)
    wordings = TASKS[name]
    question, answer = wordings[int(rng.integers(len(wordings)))]
    return question, answer(item.scene)


def conversation(item: SyntheticItem, task_weights: Mapping[str, float], questions_per_image: int,
                 rng: np.random.Generator) -> list[tuple[str, str]]:
    """The `(question, answer)` turns of one conversation about `item`, drawn with `rng`.

    A question type drawn by `task_weights` (keys: `TASKS` and `RUBRIC_TASK`) comes first; unless it is one of
    `ASKED_ALONE`, `questions_per_image - 1` further distinct types follow, drawn by weight among the others that are
    not. Each type's wording is drawn among its own.
    """
    names = list(task_weights)
    unknown = sorted(set(names) - set(TASKS) - {RUBRIC_TASK})
    if unknown:
        raise ValueError(f"unknown `task_weights` keys {unknown}; known: {sorted(TASKS) + [RUBRIC_TASK]}")
    weights = np.array([task_weights[name] for name in names], dtype=np.float64)
    first = int(rng.choice(len(names), p=weights / weights.sum()))
    chosen = [first]
    if names[first] not in ASKED_ALONE:
        others = [i for i, name in enumerate(names) if i != first and name not in ASKED_ALONE and weights[i] > 0]
        size = min(questions_per_image - 1, len(others))
        if size:
            p = weights[others] / weights[others].sum()
            chosen += rng.choice(others, size=size, replace=False, p=p).tolist()
    return [_ask(names[i], item, rng) for i in chosen]


def evaluated_question(attribute: str) -> str:
    """The question asked about `attribute` (a key of `EVAL_CANDIDATES`) on held-out images: its first wording."""
    return TASKS[attribute][0][0]


def true_answer(attribute: str, scene: Scene) -> str:
    """The evaluated answer of `attribute` (a key of `EVAL_CANDIDATES`) for `scene`."""
    return TASKS[attribute][0][1](scene)


def is_clean(scene: Scene) -> bool:
    """No degradation: neither blur, noise, compression, colour cast nor crop."""
    return not (scene.blur or scene.noise or scene.compression or scene.cast_strength or scene.crop)


def corpus(items: list[SyntheticItem]) -> list[str]:
    """Text a tokenizer for the world is trained on: the items' prompts, descriptions and rationales, the rubric's
    questions for the first 64 prompts, and every question of `TASKS` with its answers for each item."""
    rubric = Rubric()
    texts = [item.prompt for item in items] + [item.description for item in items]
    texts += [rationale for item in items for rationale in item.rationales.values()]
    texts += [rubric.messages(item.prompt, d)[0]["content"][-1]["text"] for item in items[:64] for d in DIMENSIONS]
    texts += [question for wordings in TASKS.values() for question, _ in wordings]
    texts += [answer(item.scene) for item in items for wordings in TASKS.values() for _, answer in wordings]
    return texts
