"""A fast numpy renderer for `Scene`s: background and ground, sun, shadows, objects, then degradations.

Images are drawn at twice the target size and averaged down (anti-aliasing), so a 56 px image takes well under a
millisecond. The same scene and size always give the same bytes.

>>> import numpy as np
>>> from zreward_diffusers.synthetic.grammar import PromptSpec
>>> from zreward_diffusers.synthetic.scene import perfect_scene
>>> image = render(perfect_scene(PromptSpec(2, "red", "circle", "blue"), np.random.default_rng(0)), size=56)
>>> image.shape, image.dtype
((56, 56, 3), dtype('uint8'))
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .grammar import PALETTE
from .scene import GROUND_LINE, Scene

SUN_COLOUR = np.array([255.0, 236.0, 150.0])
GROUND_SHADE = 0.72  # the ground is the background colour, darker
SHADOW_SHADE = 0.45  # shadows darken the ground further


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside a `shape` of radius `r`, at offsets `dx`, `dy` from its centre (image-fraction units)."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.86 * r) & (np.abs(dy) <= 0.86 * r)
    if shape == "triangle":  # apex up, base on the bottom
        return (dy <= r) & (np.abs(dx) <= 0.58 * (dy + r))
    if shape == "star":  # five points
        angle = np.arctan2(dx, -dy)
        return np.hypot(dx, dy) <= r * (0.62 + 0.38 * np.cos(5 * angle))
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 56) -> np.ndarray:
    """Draw `scene` as a uint8 `(size, size, 3)` RGB array."""
    if size < 16:
        raise ValueError(f"`size` must be at least 16 pixels, got {size}")
    hi = 2 * size
    coords = (np.arange(hi) + 0.5) / hi
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    background = np.array(PALETTE[scene.background], dtype=np.float64)
    image = np.empty((hi, hi, 3))
    image[:] = background
    ground = yy >= GROUND_LINE
    image[ground] = background * GROUND_SHADE

    sun_x = 0.1 if scene.light == "left" else 0.9
    image[(xx - sun_x) ** 2 + (yy - 0.1) ** 2 <= 0.06**2] = SUN_COLOUR

    if scene.shadows != "none":
        away = 1.0 if scene.light == "left" else -1.0  # shadows fall away from the sun
        direction = away if scene.shadows == "consistent" else -away
        for obj in scene.objects:
            cx, cy = obj.x + direction * obj.r * 0.9, GROUND_LINE + 0.025
            inside = ((xx - cx) / (obj.r * 1.15)) ** 2 + ((yy - cy) / (obj.r * 0.28)) ** 2 <= 1.0
            image[inside & ground] = background * GROUND_SHADE * SHADOW_SHADE

    colour = np.array(PALETTE[scene.colour], dtype=np.float64)
    for obj in scene.objects:
        dx, dy = xx - obj.x, yy - obj.y
        inside = shape_mask(scene.shape, dx, dy, obj.r)
        # soft shading: the side towards the sun is a little brighter
        lit = 1.0 + 0.12 * np.clip((-dx if scene.light == "left" else dx) / obj.r, -1, 1)
        image[inside] = np.clip(colour * lit[inside][:, None], 0, 255)

    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))  # anti-aliasing
    return _degrade(image, scene, size)


def _degrade(image: np.ndarray, scene: Scene, size: int) -> np.ndarray:
    if scene.crop > 0:
        x0, y0, x1, y1 = scene.extra["crop_window"]
        box = (x0 * size, y0 * size, x1 * size, y1 * size)
        pil = Image.fromarray(image.round().clip(0, 255).astype(np.uint8))
        image = np.asarray(pil.resize((size, size), Image.BILINEAR, box=box), dtype=np.float64)
    if scene.blur > 0:
        sigma = scene.blur * size / 56
        image = gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    image = image + np.asarray(scene.cast)
    if scene.noise > 0:
        seed = int(scene.extra.get("noise_seed", 0))
        image = image + np.random.default_rng(seed).normal(0.0, scene.noise, size=image.shape)
    image = image.round().clip(0, 255).astype(np.uint8)
    if scene.compression > 0:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(round(40 - 36 * scene.compression)))
        image = np.asarray(Image.open(buffer).convert("RGB"))
    return image
