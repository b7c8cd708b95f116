"""What an image of the synthetic world really shows: objects, background, light and shadows, degradations.

A `Scene` is sampled from the `PromptSpec` it was asked for, with deviations (wrong count, colour, shape or
background), physical errors (shadows on the sun's side, missing shadows, floating objects) and degradations
(blur, noise, compression, colour cast, cropping, overlapping objects). The renderer draws it; the oracle scores
it; rationales and descriptions are written from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .grammar import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES, PromptSpec

GROUND_LINE = 0.74  # fraction of the height where the ground starts


@dataclass
class SceneObject:
    """One object: centre `x`, `y` and radius `r` as fractions of the image size; `grounded` if it rests on the
    ground line."""

    x: float
    y: float
    r: float
    grounded: bool


@dataclass
class Scene:
    count: int
    colour: str
    shape: str
    background: str
    objects: list[SceneObject]
    light: str  # side of the sun: "left" or "right"
    shadows: str  # where shadows fall: "consistent" (away from the sun), "wrong" (towards it) or "none"
    overlap: bool
    blur: float = 0.0  # gaussian sigma in pixels at 56 px (scaled with the image size)
    noise: float = 0.0  # gaussian noise std in 8-bit levels
    compression: float = 0.0  # 0..1 strength of blocky quantisation
    cast: tuple[float, float, float] = (0.0, 0.0, 0.0)  # additive colour cast in 8-bit levels
    crop: float = 0.0  # fraction of the image cut away by a zoom-in crop (0 = none)
    cut_objects: int = 0  # objects the crop cut partly out of frame
    extra: dict = field(default_factory=dict)

    @property
    def floating(self) -> int:
        return sum(not o.grounded for o in self.objects)

    @property
    def cast_strength(self) -> float:
        return float(np.abs(self.cast).max()) / 60.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        data = dict(data)
        data["objects"] = [SceneObject(**o) for o in data["objects"]]
        data["cast"] = tuple(data["cast"])
        return cls(**data)


@dataclass(frozen=True)
class DeviationRates:
    """Probabilities of each deviation from the prompt and of each degradation."""

    count: float = 0.25
    colour: float = 0.2
    shape: float = 0.2
    background: float = 0.15
    wrong_shadows: float = 0.15
    no_shadows: float = 0.1
    floating: float = 0.12  # per object
    overlap: float = 0.15
    blur: float = 0.25
    noise: float = 0.25
    compression: float = 0.2
    cast: float = 0.2
    crop: float = 0.12


def _other(rng: np.random.Generator, choices, current: str, exclude: str | None = None) -> str:
    return str(rng.choice([c for c in choices if c != current and c != exclude]))


def sample_scene(spec: PromptSpec, rng: np.random.Generator, rates: DeviationRates = DeviationRates()) -> Scene:
    """Sample what an imperfect generator might draw for `spec`."""
    count = spec.count
    if rng.random() < rates.count:
        count = int(np.clip(count + rng.choice([-2, -1, 1, 2]), 1, 5))
    colour = _other(rng, OBJECT_COLOURS, spec.colour, spec.background) if rng.random() < rates.colour else spec.colour
    shape = _other(rng, SHAPES, spec.shape) if rng.random() < rates.shape else spec.shape
    background = spec.background
    if rng.random() < rates.background:
        background = _other(rng, BACKGROUND_COLOURS, spec.background, colour)
    if background == colour:
        background = _other(rng, BACKGROUND_COLOURS, background, colour)

    overlap = count > 1 and rng.random() < rates.overlap
    radius = float(rng.uniform(0.075, 0.1)) if count > 2 else float(rng.uniform(0.09, 0.12))
    slots = np.linspace(0.18, 0.82, count) if count > 1 else np.array([rng.uniform(0.35, 0.65)])
    xs = slots + rng.uniform(-0.03, 0.03, size=count)
    if overlap:  # pull a neighbouring pair together so they overlap by about half a radius
        i = int(rng.integers(0, count - 1))
        middle = (xs[i] + xs[i + 1]) / 2
        xs[i], xs[i + 1] = middle - radius * 0.75, middle + radius * 0.75
    objects = []
    for x in xs:
        grounded = rng.random() >= rates.floating
        lift = 0.0 if grounded else float(rng.uniform(0.14, 0.3))
        objects.append(SceneObject(float(x), GROUND_LINE - radius - lift, radius, grounded))

    light = str(rng.choice(["left", "right"]))
    u = rng.random()
    if u < rates.wrong_shadows:
        shadows = "wrong"
    elif u < rates.wrong_shadows + rates.no_shadows:
        shadows = "none"
    else:
        shadows = "consistent"
    scene = Scene(count, colour, shape, background, objects, light, shadows, overlap)
    if rng.random() < rates.blur:
        scene.blur = float(rng.uniform(0.8, 2.2))
    if rng.random() < rates.noise:
        scene.noise = float(rng.uniform(12, 40))
        scene.extra["noise_seed"] = int(rng.integers(0, 2**31 - 1))
    if rng.random() < rates.compression:
        scene.compression = float(rng.uniform(0.4, 1.0))
    if rng.random() < rates.cast:
        channel = int(rng.integers(0, 3))
        cast = [0.0, 0.0, 0.0]
        cast[channel] = float(rng.uniform(30, 60)) * float(rng.choice([-1, 1]))
        scene.cast = tuple(cast)
    if rng.random() < rates.crop:
        _apply_crop(scene, float(rng.uniform(0.2, 0.35)), rng)
    return scene


def _apply_crop(scene: Scene, crop: float, rng: np.random.Generator) -> None:
    """Zoom in on a window `1 - crop` wide, flush with the left or right edge; objects whose centre falls outside
    disappear from view, those straddling the border are cut."""
    x0 = 0.0 if rng.random() < 0.5 else crop
    y0 = float(rng.uniform(0.0, crop))
    x1, y1 = x0 + 1 - crop, y0 + 1 - crop
    visible = [o for o in scene.objects if x0 <= o.x <= x1 and y0 <= o.y <= y1]
    scene.cut_objects = sum(o.x - o.r < x0 or o.x + o.r > x1 or o.y - o.r < y0 for o in visible)
    scene.count = len(visible)
    scene.crop = crop
    scene.extra["crop_window"] = [x0, y0, x1, y1]


def perfect_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A scene that follows its prompt with no error or degradation."""
    none = DeviationRates(**{name: 0.0 for name in DeviationRates.__dataclass_fields__})
    return sample_scene(spec, rng, none)
