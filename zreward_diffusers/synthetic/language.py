"""Text written from a scene's true attributes: teacher rationales (varied wording) and plain descriptions.

Rationales describe before they judge, per dimension ("the prompt asks for three circles; I count two ..."), as the
teacher's cold start needs; descriptions name what the image shows, for pretraining the world's base models.
"""

from __future__ import annotations

import numpy as np

from .grammar import COUNT_WORDS, PromptSpec
from .scene import Scene


def _objects(count: int, colour: str, shape: str) -> str:
    return f"{COUNT_WORDS.get(count, str(count))} {colour} {shape}{'s' if count != 1 else ''}"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _verdict(problems: list[str], rng: np.random.Generator, good: list[str], bad: list[str]) -> str:
    if not problems:
        return _pick(rng, good)
    return " ".join(problems) + " " + _pick(rng, bad)


def rationale(dimension: str, scene: Scene, spec: PromptSpec, rng: np.random.Generator) -> str:
    """A short reasoning text for `dimension`, written from what the image really shows."""
    if dimension == "alignment":
        asked = _pick(rng, ["The prompt asks for", "The text wants", "Requested:"])
        seen = _pick(rng, ["I count", "I see", "The image shows"])
        problems = []
        if scene.count != spec.count:
            problems.append(f"The count is wrong ({scene.count} instead of {spec.count}).")
        if scene.colour != spec.colour:
            problems.append(f"The colour is {scene.colour}, not {spec.colour}.")
        if scene.shape != spec.shape:
            problems.append(f"They are {scene.shape}s, not {spec.shape}s.")
        if scene.background != spec.background:
            problems.append(f"The background is {scene.background}, not {spec.background}.")
        if scene.cut_objects:
            problems.append("Some objects are cut by the frame.")
        opening = (
            f"{asked} {_objects(spec.count, spec.colour, spec.shape)} on a {spec.background} background. "
            f"{seen} {_objects(scene.count, scene.colour, scene.shape)} on a {scene.background} background."
        )
        return opening + " " + _verdict(problems, rng, ["Everything matches.", "It matches the prompt."],
                                        ["So the alignment is poor.", "The match is weak."])
    if dimension == "aesthetics":
        problems = []
        if scene.overlap:
            problems.append("Two objects overlap awkwardly.")
        if scene.cast_strength > 0:
            problems.append("There is a colour cast.")
        if scene.crop > 0:
            problems.append("The framing is cropped.")
        if scene.compression > 0:
            problems.append("Compression blocks spoil it.")
        opening = _pick(rng, ["Looking at the composition:", "Composition and colour:", "As a picture:"])
        return opening + " " + _verdict(problems, rng, ["the layout is clean and balanced.", "it looks pleasing."],
                                        ["It is not pleasing.", "The look suffers."])
    if dimension == "realism":
        problems = []
        if scene.blur > 0:
            problems.append("The image is blurry." if scene.blur > 1.4 else "The image is a little soft.")
        if scene.noise > 0:
            problems.append("It is noisy." if scene.noise > 25 else "There is some noise.")
        if scene.compression > 0:
            problems.append("I see compression artefacts.")
        if scene.cast_strength > 0:
            problems.append("The colours have a cast.")
        opening = _pick(rng, ["Checking image quality:", "As a photograph:", "Sharpness and noise:"])
        return opening + " " + _verdict(problems, rng, ["it is sharp and clean.", "no artefacts are visible."],
                                        ["It does not look real.", "Realism is low."])
    if dimension == "physical_plausibility":
        away = "right" if scene.light == "left" else "left"
        opening = f"The sun is on the {scene.light}, so shadows should fall to the {away}."
        problems = []
        if scene.shadows == "wrong":
            problems.append(f"But the shadows fall to the {scene.light}, towards the sun.")
        elif scene.shadows == "none":
            problems.append("But there are no shadows.")
        if scene.floating:
            problems.append(f"{COUNT_WORDS.get(scene.floating, scene.floating).capitalize()} "
                            f"object{'s' if scene.floating > 1 else ''} float{'' if scene.floating > 1 else 's'} "
                            "above the ground.")
        return opening + " " + _verdict(problems, rng, ["The shadows agree and every object rests on the ground."],
                                        ["This is not plausible.", "The physics is wrong."])
    raise ValueError(f"unknown rubric dimension {dimension!r}")


def describe(scene: Scene) -> str:
    """What the image shows, in one canonical sentence list (for pretraining base models on the world)."""
    parts = [f"{_objects(scene.count, scene.colour, scene.shape)} on a {scene.background} background."]
    parts.append(f"The sun is on the {scene.light}.")
    if scene.shadows == "none":
        parts.append("There are no shadows.")
    else:
        side = ("right" if scene.light == "left" else "left") if scene.shadows == "consistent" else scene.light
        parts.append(f"Shadows fall to the {side}.")
    if scene.floating:
        parts.append(f"{COUNT_WORDS.get(scene.floating, scene.floating).capitalize()} floating.")
    if scene.overlap:
        parts.append("Two objects overlap.")
    quality = [word for flag, word in ((scene.blur > 0, "blurry"), (scene.noise > 0, "noisy"),
                                      (scene.compression > 0, "compressed"), (scene.cast_strength > 0, "colour cast"),
                                      (scene.crop > 0, "cropped")) if flag]
    parts.append(("Quality: " + ", ".join(quality) + ".") if quality else "Quality: clean.")
    return " ".join(parts)
