"""The prompt grammar of the synthetic world: counts, colours, shapes, backgrounds and optional style words.

>>> spec = PromptSpec(count=2, colour="red", shape="circle", background="blue")
>>> spec.text()
'two red circles on a blue background'
>>> len(all_prompt_specs()) > 500
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# RGB of every colour the world draws; object colours and background colours are subsets.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "pink": (240, 130, 180),
    "cyan": (40, 200, 210),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
}
OBJECT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "cyan")
BACKGROUND_COLOURS = ("blue", "green", "gray", "white", "black", "yellow", "brown", "pink")
SHAPES = ("circle", "square", "triangle", "star")
COUNTS = (1, 2, 3, 4)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
STYLES = ("", "a photo of", "a clean render of", "a minimal drawing of", "a detailed picture of")


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for."""

    count: int
    colour: str
    shape: str
    background: str
    style: str = ""

    def text(self) -> str:
        noun = self.shape + ("s" if self.count != 1 else "")
        article = {1: "a"}.get(self.count, COUNT_WORDS[self.count])
        body = f"{article} {self.colour} {noun} on a {self.background} background"
        return f"{self.style} {body}" if self.style else body


def all_prompt_specs(with_styles: bool = False) -> list[PromptSpec]:
    """Every prompt of the grammar (object colour never equal to the background colour)."""
    styles = STYLES if with_styles else ("",)
    return [
        PromptSpec(count, colour, shape, background, style)
        for style in styles
        for count in COUNTS
        for colour in OBJECT_COLOURS
        for shape in SHAPES
        for background in BACKGROUND_COLOURS
        if colour != background
    ]


def sample_prompt_spec(rng: np.random.Generator, style_probability: float = 0.3) -> PromptSpec:
    colour = str(rng.choice(OBJECT_COLOURS))
    background = str(rng.choice([b for b in BACKGROUND_COLOURS if b != colour]))
    style = str(rng.choice(STYLES[1:])) if rng.random() < style_probability else ""
    return PromptSpec(int(rng.choice(COUNTS)), colour, str(rng.choice(SHAPES)), background, style)
