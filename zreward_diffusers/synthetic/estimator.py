"""The oracle as a judge of any image: estimate a `Scene` from pixels alone, then score it with `oracle_scores`.

`judge(image, prompt)` = `oracle_scores(estimate_scene(image), parse_prompt(prompt))`. Rendered items carry their
true scene, but images made by a generator trained on this world do not; `estimate_scene` recovers from the pixels
everything the oracle reads. `parse_prompt` inverts `PromptSpec.text()` (style words included).

>>> import numpy as np
>>> from zreward_diffusers.synthetic.grammar import PromptSpec
>>> from zreward_diffusers.synthetic.render import render
>>> from zreward_diffusers.synthetic.scene import perfect_scene
>>> spec = PromptSpec(3, "red", "triangle", "blue")
>>> image = render(perfect_scene(spec, np.random.default_rng(1)), size=56)
>>> scene = estimate_scene(image)
>>> scene.count, scene.colour, scene.shape, scene.background, scene.shadows, scene.floating
(3, 'red', 'triangle', 'blue', 'consistent', 0)
>>> judge(image, spec.text())["alignment"]
5.0
>>> judge(image, "a photo of two green stars on a blue background")["alignment"]  # count, colour, shape off
1.0

How it works (every step vectorised numpy / scipy.ndimage; any size >= 32 px):

1. Raw statistics at the native size: the noise sigma (a robust Immerkaer estimate: median |3x3 Laplacian
   difference| over unclipped pixels) and JPEG evidence (luma jumps of >= 2 levels across the 8-px block grid where
   both neighbouring steps are smooth, against the same 4 px off the grid; the median jump grows as quality falls).
2. The image is resized to the 56 px working size (the renderer scales everything with the size, and the scene's
   blur is in pixels at 56 px) and denoised by a separable 3x3 median (twice when noisy).
3. Background and colour cast: the median sky colour (top rows, middle columns) and bottom-strip colour. For each
   palette background the cast implied by sky = background + cast and ground = 0.72 background + cast (clipping
   handled) is scored by misfit plus a prior for no cast and for a single-channel cast; the best pair wins.
4. Sun: pale-yellow (sun colour + cast) pixels in the top corners. The side with more is the light side; the
   distance of its centroid from the side edge, over 0.1 of the width, is the zoom (1 when the frame is not
   cropped). A "canonical" sun (zoom 0.85-1.12) pins the ground line to within 2 rows of 0.74 of the height.
5. Ground line: the row where pixels stop being sky-like (near the sky colour) and become ground- or shadow-like,
   found as the change point of (ground-like - sky-like share) per row.
6. Objects: pixels above the line far from the sky colour give the object colour (nearest palette object colour,
   allowing a mix with the sky, cast included); each pixel's coverage is its projection on the backdrop -> colour
   axis (the backdrop is the sky, mixed with the ground near a blurred line). Coverage > 0.5 gives blobs; a blob's
   column profile is cut at the dips between humps (objects side by side); light fragments (a star's point) rejoin.
7. Shape and blur: each object's coverage is compared, around its centroid, with the renderer's own masks of the
   four shapes blurred by sigma / radius in 0..0.8 (radius from the object's mass, x0.9/1/1.1). Misfits summed over
   the objects with one sigma shared by the image give the blur and, through a small logistic regression on the
   four misfits, the shape.
8. Count: one per object part; a part heavier than one object (touching squares make no humps) counts by mass.
   Overlap: exactly one pair of neighbours closer than 1.7 radii (the world pulls one pair to 1.5 radii; many close
   pairs are a crowd of five, which the oracle does not penalise). Floating: bottom more than 0.6 radii above the
   line.
9. Shadows: darkness (0 ground, 1 shadow colour) in a band under the line, per column; shadows are present if the
   columns 0.9 radii beside the objects are darker than the rest (75th percentile minus median >= 0.06), and fall
   on the side (right or left) that is darker; consistent if away from the sun. With no sun seen, present shadows
   are taken as consistent.
10. Crop (hard: the crop only zooms): cropped if the sun is zoomed (> 1.12), or missing with the ground line away
    from 0.74, or an object touches the left, right or top border (each such object is a cut object). The crop
    amount is 1 - 1 / zoom when the sun is seen, else 0.27 (the mean of the world's crops); the oracle only reads
    crop > 0.

The constants marked "calibrated" below were fitted on `SyntheticWorld(seed=7).generate(4000)`, disjoint from the
benchmark's seed 123. Accuracy and timing are measured by `python -m benchmarks.oracle_judge` and recorded in
benchmarks/README.md and docs/experiments/foundation.md.
"""

from __future__ import annotations

import functools
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .grammar import BACKGROUND_COLOURS, COUNT_WORDS, OBJECT_COLOURS, PALETTE, SHAPES, STYLES, PromptSpec
from .oracle import DIMENSIONS, oracle_scores
from .render import GROUND_SHADE, SHADOW_SHADE, SUN_COLOUR, shape_mask
from .scene import GROUND_LINE, Scene, SceneObject

__all__ = ["estimate_scene", "judge", "judge_batch", "parse_prompt"]

WORK_SIZE = 56  # every image is analysed at this size (the scene's blur is measured in pixels at 56 px)
MIN_SIZE = 32

# --- fixed by the world's design
_SUN_RADIUS = 0.06  # the sun's radius, as a fraction of the size; its centre is 0.1 from the top and the side
_CANONICAL_ZOOM = (0.85, 1.12)  # sun zoom of an uncropped frame (crops zoom by 1 / (1 - crop) >= 1.25)
_OVERLAP_SPACING = 1.7  # neighbours closer than this many radii overlap (the world pulls a pair to 1.5)
_FLOAT_GAP = 0.6  # an object whose bottom is more than this many radii above the line floats (lifts >= 1.2)
_CAST_MIN = 12.0  # cast channels below this many 8-bit levels are read as no cast (the world's casts are 30-60)
_DEFAULT_CROP = 0.27  # crop amount reported when the zoom cannot be measured (the world's crops: 0.2-0.35)
_JPEG_SHARE, _JPEG_SUPPORT, _JPEG_HITS = 0.03, 20, 8.0  # JPEG detection: grid share, smooth positions, hits

# --- calibrated on `SyntheticWorld(seed=7).generate(4000)` (see the module docstring)
_NOISE_GAIN, _NOISE_MIN = 0.943, 6.0  # estimate / true noise sigma; below the minimum reads as no noise
_JPEG_A, _JPEG_B = 0.073, 0.294  # compression strength = a + b log(median grid jump), clipped to 0.4-1.0
_PIXEL_VAR = 0.25  # sigma^2 (px^2) the template fit reads on an unblurred image (anti-aliasing)
_BLUR_NOISE, _BLUR_JPEG = 3.0, 14.0  # sigma^2 the fit gains from noise (per (sigma_noise / 40)^2) and JPEG
_LINE_WEIGHT, _BLUR_MIN = 0.7, 0.8  # weight of the ground-line width on clean images; smaller blur reads as 0
_SHADOW_MIN = 0.06  # darkness beside the objects below which there are no shadows
# multinomial logistic regression over `_shape_features`; rows: circle, square, triangle, star
_SHAPE_WEIGHTS = np.array(
    [
        [-2.981, 0.392, 1.073, 1.012, -0.906, -0.105, -0.31, -0.128, -0.878, 1.035],
        [0.92, -2.9, 1.296, 0.126, 0.004, -0.816, 0.433, 0.235, -0.17, 0.199],
        [1.131, 1.24, -3.347, 0.86, 0.43, 0.456, -0.693, 0.187, 0.095, 0.057],
        [0.93, 1.268, 0.978, -1.997, 0.472, 0.465, 0.571, -0.293, 0.953, -1.29],
    ]
)

# --- template fit
_GRID = np.linspace(-1.5, 1.5, 11)  # sample points, in radii from the shape's centroid
_BETAS = np.linspace(0.0, 0.8, 17)  # blur sigma / radius of the templates
_SCALES = np.array([0.9, 1.0, 1.1])  # radii tried around the one the object's mass implies
_SIGMAS = np.linspace(0.3, 3.5, 33)  # blur sigmas (px at the working size) tried for the whole image
# per shape, in radii: width and area (the renderer's masks)
_WIDTH = {"circle": 2.0, "square": 1.72, "triangle": 2.32, "star": 1.90}
_AREA = {"circle": np.pi, "square": 2.96, "triangle": 2.32, "star": 1.434}

_BG = np.array([PALETTE[c] for c in BACKGROUND_COLOURS], dtype=np.float64)
_OBJ = np.array([PALETTE[c] for c in OBJECT_COLOURS], dtype=np.float64)
_SUN = np.asarray(SUN_COLOUR, dtype=np.float64)
_LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------------------------------- prompts
_COUNT_OF_WORD = {word: count for count, word in COUNT_WORDS.items()}
_PROMPT = re.compile(
    r"^(?:(?P<style>.+) )?(?P<article>\w+) (?P<colour>\w+) (?P<noun>\w+) on a (?P<bg>\w+) background$"
)


@functools.lru_cache(maxsize=4096)
def parse_prompt(text: str) -> PromptSpec:
    """The `PromptSpec` whose `text()` is `text`: "[style] <a|two|...> <colour> <shape(s)> on a <colour>
    background". Case, surrounding spaces, repeated spaces and a final full stop are forgiven; anything outside the
    grammar (unknown words, a plural that disagrees with the count, an object coloured like its background) raises
    a ValueError naming `prompt`.

    >>> parse_prompt("a photo of two red circles on a blue background")
    PromptSpec(count=2, colour='red', shape='circle', background='blue', style='a photo of')
    """
    if not isinstance(text, str):
        raise ValueError(f"`prompt` must be a string, got {type(text).__name__}")
    normal = " ".join(text.strip().lower().rstrip(".").split())
    match = _PROMPT.match(normal)
    problem = None
    if match is None:
        problem = "it does not read '[style] <count> <colour> <shape(s)> on a <colour> background'"
    else:
        style, article, colour, noun, background = match.group("style", "article", "colour", "noun", "bg")
        style = style or ""
        count = 1 if article == "a" else _COUNT_OF_WORD.get(article)
        shape = noun[:-1] if noun.endswith("s") else noun
        if style not in STYLES:
            problem = f"unknown style {style!r}"
        elif count is None:
            problem = f"unknown count {article!r}"
        elif colour not in OBJECT_COLOURS:
            problem = f"unknown object colour {colour!r}"
        elif shape not in SHAPES:
            problem = f"unknown shape {noun!r}"
        elif (count == 1) != (noun == shape):
            problem = f"{noun!r} does not agree with the count {article!r}"
        elif background not in BACKGROUND_COLOURS:
            problem = f"unknown background colour {background!r}"
        elif background == colour:
            problem = "the objects have the background's colour"
    if problem is not None:
        raise ValueError(f"`prompt` is outside the synthetic prompt grammar ({problem}): {text!r}")
    return PromptSpec(count, colour, shape, background, style)


# ----------------------------------------------------------------------------------------------- image helpers
def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"`image` must be a uint8 numpy array of shape (H, W, 3), got {dtype} with shape {shape}")
    if min(image.shape[:2]) < MIN_SIZE:
        raise ValueError(f"`image` must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {image.shape[:2]}")
    return image


def _to_work(image: np.ndarray) -> np.ndarray:
    """The image at the working size, as float64 (box filter down, bilinear up)."""
    if image.shape[:2] == (WORK_SIZE, WORK_SIZE):
        return image.astype(np.float64)
    resample = Image.BOX if min(image.shape[:2]) >= WORK_SIZE else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((WORK_SIZE, WORK_SIZE), resample), dtype=np.float64)


def _med3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _median_filter(x: np.ndarray) -> np.ndarray:
    """Separable 3x3 median (rows, then columns), edges replicated: a fast stand-in for the true 3x3 median."""
    p = np.pad(x, [(1, 1), (1, 1), (0, 0)], mode="edge")
    r = _med3(p[:, :-2], p[:, 1:-1], p[:, 2:])
    return _med3(r[:-2], r[1:-1], r[2:])


def _noise_sigma(x: np.ndarray) -> float:
    """Immerkaer's noise estimate, robust variant: median |3x3 Laplacian difference| / (0.6745 * 6) over pixels
    away from clipping (edges are a minority, so the median ignores them)."""
    lap = (
        x[:-2, :-2] + x[:-2, 2:] + x[2:, :-2] + x[2:, 2:]
        - 2 * (x[:-2, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] + x[2:, 1:-1])
        + 4 * x[1:-1, 1:-1]
    )  # fmt: skip
    centre = x[1:-1, 1:-1]
    valid = (centre > 12) & (centre < 243)
    values = np.abs(lap[valid]) if valid.sum() >= 64 else np.abs(lap).ravel()
    return float(np.median(values)) / (0.6745 * 6.0)


def _jpeg_steps(x: np.ndarray) -> tuple[float, int, float]:
    """JPEG grid evidence: among luma positions whose two neighbouring steps are smooth (< 2 levels), the share
    with a jump of >= 2 levels over them on the 8-px block grid, minus that share 4 px off the grid; the number of
    smooth positions on the grid; and the median jump there."""
    y = x @ _LUMA
    shares, support, jumps = [], 0, []
    for offset in (0, 4):
        hits = total = 0
        for a in (y, y.T):
            step = np.abs(np.diff(a, axis=1))
            j = np.arange(7 + offset, step.shape[1] - 1, 8)
            if len(j) == 0:
                continue
            neighbours = np.maximum(step[:, j - 1], step[:, j + 1])
            smooth = neighbours < 2.0
            jump = (step[:, j] >= neighbours + 2.0) & smooth
            hits += int(jump.sum())
            total += int(smooth.sum())
            if offset == 0:
                jumps.append(step[:, j][jump])
        shares.append(hits / max(total, 1))
        if offset == 0:
            support = total
    found = np.concatenate(jumps) if jumps else np.zeros(0)
    return shares[0] - shares[1], support, float(np.median(found)) if len(found) else 0.0


def _distance(x: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.sqrt(((x - colour) ** 2).sum(axis=-1))


# --------------------------------------------------------------------------------------------- scene pieces
def _background(sky: np.ndarray, ground: np.ndarray | None) -> tuple[int, np.ndarray]:
    """Index of the palette background and the additive colour cast that best explain the sky colour and (when
    the ground is visible) the ground colour, preferring no cast and a single-channel cast."""
    cs = sky[None] - _BG  # (backgrounds, 3): the cast each background implies
    if ground is not None:
        cg = ground[None] - GROUND_SHADE * _BG
        sky_ok = np.broadcast_to((sky > 3) & (sky < 252), cs.shape)
        ground_ok = np.broadcast_to((ground > 3) & (ground < 252), cs.shape)
        cast = np.where(sky_ok & ground_ok, (cs + cg) / 2, np.where(ground_ok & ~sky_ok, cg, cs))
        residual = ((np.clip(_BG + cast, 0, 255) - sky) ** 2).sum(axis=1)
        residual += ((np.clip(GROUND_SHADE * _BG + cast, 0, 255) - ground) ** 2).sum(axis=1)
    else:
        cast = cs
        residual = np.zeros(len(_BG))
    magnitude = np.sort(np.abs(cast), axis=1)
    cost = residual + 4.0 * (magnitude[:, 0] + magnitude[:, 1]) ** 2 + 0.05 * magnitude[:, 2] ** 2
    best = int(np.argmin(cost))
    return best, cast[best]


def _object_colour(pixel: np.ndarray, sky: np.ndarray, cast: np.ndarray, background: str) -> str:
    """The object colour nearest `pixel`, allowing a mix with the sky (blur, anti-aliasing): the distance from
    `pixel` to the segment sky -> candidate (55-115% of the way), never the background's colour."""
    candidates = np.clip(_OBJ + cast, 0, 255)
    v = pixel - sky
    a = candidates - sky
    alpha = np.clip((a @ v) / np.maximum((a * a).sum(axis=1), 1.0), 0.55, 1.15)
    residual = _distance(v, alpha[:, None] * a)
    residual[np.array(OBJECT_COLOURS) == background] = np.inf
    return OBJECT_COLOURS[int(np.argmin(residual))]


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, np.ndarray]:
    """Each shape's mask (radius 1, centred on its centroid) blurred by every sigma in `_BETAS`, sampled on the
    `_GRID` x `_GRID` points: an array (shapes, betas, points), and the shapes' areas. Built once from the
    renderer's own `shape_mask`, as a cloud of points each spread by a gaussian."""
    step = 0.08
    c = np.arange(-1.2, 1.2 + 1e-9, step)
    qy, qx = np.meshgrid(c, c, indexing="ij")
    gy, gx = np.meshgrid(_GRID, _GRID, indexing="ij")
    table = np.zeros((len(SHAPES), len(_BETAS), _GRID.size**2))
    areas = np.zeros(len(SHAPES))
    for i, shape in enumerate(SHAPES):
        inside = shape_mask(shape, qx, qy, 1.0)
        py, px = qy[inside], qx[inside]
        py, px = py - py.mean(), px - px.mean()
        areas[i] = inside.sum() * step * step
        d2 = (gy.ravel()[:, None] - py[None]) ** 2 + (gx.ravel()[:, None] - px[None]) ** 2
        for j, beta in enumerate(_BETAS):
            b = max(beta, 0.6 * step)
            table[i, j] = (np.exp(-d2 / (2 * b * b)) * step * step / (2 * np.pi * b * b)).sum(axis=1)
    return table, areas


def _shape_features(misfit: np.ndarray, beta: float) -> np.ndarray:
    """Inputs of the shape classifier: each shape's summed template misfit (log, relative to the best), the same
    times the fitted blur / radius, the blur / radius, and a constant."""
    m = np.log(misfit + 0.05)
    m -= m.min()
    return np.concatenate([m, m * beta, [beta, 1.0]])


def _humps(profile: np.ndarray, radius: float) -> list[int]:
    """Objects side by side in a blob: the maxima of its column profile at least 1.2 radii apart with a dip below
    85% of the lower one between them."""
    p = np.convolve(np.pad(profile, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    rising = np.r_[True, p[1:] > p[:-1]]
    falling = np.r_[p[:-1] >= p[1:], True]
    kept: list[int] = []
    for i in np.flatnonzero(rising & falling):
        j = kept[-1] if kept else None
        if j is None or (p[j : i + 1].min() <= 0.85 * min(p[i], p[j]) and i - j >= 1.2 * radius):
            kept.append(int(i))
        elif p[i] > p[j]:
            kept[-1] = int(i)
    return kept or [int(np.argmax(p))]


def _split(profile: np.ndarray, radius: float) -> list[int]:
    """Columns (within the blob) where a blob is cut into objects: the lowest point between humps; a part lighter
    than 40% of the heaviest (a star's point) joins its lighter neighbour."""
    humps = _humps(profile, radius)
    dips = [a + int(np.argmin(profile[a:b])) for a, b in zip(humps[:-1], humps[1:], strict=True)]
    while dips:
        edges = [0, *dips, len(profile)]
        masses = np.array([profile[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
        lightest = int(np.argmin(masses))
        if masses[lightest] >= 0.4 * masses.max():
            break
        left_is_lighter = lightest > 0 and (lightest == len(dips) or masses[lightest - 1] < masses[lightest + 1])
        del dips[lightest - 1 if left_is_lighter else lightest]
    return dips


# ---------------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class Measurements:
    """Everything `_analyse` measures in one image, before `_scene` decides what the scene is.

    Lengths are pixels at the 56 px working size; colours, casts and noise are 8-bit levels. The fields from
    `colour` on keep their defaults when no object stands out from the sky (`colour`) or no object is found (the
    rest).
    """

    noise_raw: float  # noise sigma at the native size (`_noise_sigma`, before the `_NOISE_GAIN` correction)
    jpeg_share: float  # share of >= 2-level jumps on the 8-px block grid minus the share 4 px off it
    jpeg_support: int  # smooth positions on the block grid
    jpeg_jump: float  # median jump on the block grid (levels); 0 when there is none
    background: str  # the palette background
    cast: tuple[float, float, float]  # additive RGB colour cast, not yet thresholded by `_CAST_MIN`
    light: str | None  # side of the sun, "left" or "right"; None when no sun is seen
    sun_zoom: float | None  # the sun's distance from its side edge over 0.1 of the width; None when not seen
    at_default_line: bool  # the ground line was found, within 1 row of `GROUND_LINE`
    colour: str | None = None  # the object colour
    line_sigma: float = np.nan  # width (gaussian sigma, px) of the sky -> ground step; nan when not measured
    shape: str | None = None  # the object shape
    template_sigma: float | None = None  # blur sigma (px) of the best template fit, before the degradation map
    radius: float | None = None  # object radius (px)
    instances: tuple[tuple[float, float, bool], ...] = ()  # per object: x centre (px), bottom (px), floating
    overlap: bool = False  # exactly one pair of neighbours closer than `_OVERLAP_SPACING` radii
    cut_objects: int = 0  # objects touching the left, right or top border
    shadow: str | None = None  # side ("left" / "right") the shadows fall on; None when the band is out of frame
    shadow_amount: float = 0.0  # darkness beside the objects over the rest (0 ground .. 1 shadow colour)


@dataclass(frozen=True, eq=False)
class _Colours:
    """The backdrop colours of the denoised working image, each an RGB float array `(3,)`."""

    sky: np.ndarray
    ground: np.ndarray  # the bottom strip, or the background's ground colour when the strip looks like the sky
    shadow: np.ndarray  # the background's shadow colour, cast included
    contrast: float  # distance from the sky to the bottom strip (levels)
    ground_seen: bool  # the bottom strip differs from the sky
    background: str
    cast: np.ndarray


@dataclass(frozen=True, eq=False)
class _Sun:
    """The sun, when seen: its side, its zoom and the `(56, 56)` bool mask of its sun-like pixels."""

    light: str | None = None
    zoom: float | None = None
    mask: np.ndarray | None = None

    @property
    def canonical(self) -> bool:
        """The frame is uncropped, so the ground line sits at its default row (within 2 rows)."""
        return self.zoom is not None and _CANONICAL_ZOOM[0] <= self.zoom <= _CANONICAL_ZOOM[1]


@dataclass(frozen=True, eq=False)
class _Coverage:
    """The object colour and each working-size pixel's coverage by an object (0 backdrop, 1 object colour)."""

    colour: str
    region: np.ndarray  # (56, 56) bool: above the ground line and away from the sun
    hard: np.ndarray  # (56, 56) coverage from the denoised image
    soft: np.ndarray  # (56, 56) coverage clipped to -0.3..1.2, 0 outside `region` (undenoised when clean)
    line_sigma: float  # see `Measurements.line_sigma`


@dataclass(frozen=True, eq=False)
class _Object:
    """One object, or one blob part holding several side by side; px at the working size."""

    parts: int  # parts its blob was cut into
    x_range: tuple[int, int]  # its columns, [start, stop)
    bottom: float  # one below its lowest row
    mass: float  # summed coverage in its window
    x: float  # centroid column
    cut: bool  # touches the left, right or top border
    misfit: np.ndarray  # (shapes, scales, betas) template misfits (see `_template_misfit`)
    radii: np.ndarray  # (shapes, scales) radii (px) the templates were sampled at


def _colours(d: np.ndarray) -> _Colours:
    """Sky and bottom-strip colours of the denoised image `d` `(56, 56, 3)`, and the background and cast they imply."""
    size = WORK_SIZE
    sky = np.median(d[: int(0.25 * size), int(0.22 * size) : int(0.78 * size)].reshape(-1, 3), axis=0)
    bottom = np.median(d[int(0.9 * size) :].reshape(-1, 3), axis=0)
    contrast = float(np.sqrt(((sky - bottom) ** 2).sum()))
    ground_seen = contrast > 6.0
    bg_index, cast = _background(sky, bottom if ground_seen else None)
    ground = bottom if ground_seen else np.clip(GROUND_SHADE * _BG[bg_index] + cast, 0, 255)
    shadow = np.clip(GROUND_SHADE * SHADOW_SHADE * _BG[bg_index] + cast, 0, 255)
    return _Colours(sky, ground, shadow, contrast, ground_seen, BACKGROUND_COLOURS[bg_index], cast)


def _find_sun(d: np.ndarray, sky: np.ndarray, cast: np.ndarray) -> _Sun:
    """The pale-yellow disk in a top corner of `d`: the side with more sun-like pixels, and the distance of their
    centroid from that side's edge over 0.1 of the width (the zoom). A faint sun (JPEG) falls back on the brighter
    corner disk, with zoom 1."""
    size = WORK_SIZE
    sun_axis = np.clip(_SUN + cast, 0, 255) - sky
    sun_len = max(float(np.sqrt((sun_axis**2).sum())), 1.0)
    top, side = int(0.22 * size), int(0.24 * size)
    corners = np.concatenate([d[:top, :side], d[:top, size - side :]], axis=1) - sky
    ts = (corners @ sun_axis) / sun_len**2
    perp = _distance(corners, ts[..., None] * sun_axis)
    sunlike = (ts > 0.5) & (ts < 1.6) & (perp < 0.5 * sun_len)
    counts = (int(sunlike[:, :side].sum()), int(sunlike[:, side:].sum()))
    yy, xx = np.mgrid[:top, :side] + 0.5
    disk = (xx - 0.1 * size) ** 2 + (yy - 0.1 * size) ** 2 <= (_SUN_RADIUS * size) ** 2
    tsc = np.clip(ts, -0.5, 1.5)
    means = (float(tsc[:, :side][disk].mean()), float(tsc[:, side:][disk[:, ::-1]].mean()))
    if max(counts) >= 0.2 * np.pi * (_SUN_RADIUS * size) ** 2:
        light = "left" if counts[0] >= counts[1] else "right"
        xs = np.nonzero(sunlike[:, :side] if light == "left" else sunlike[:, side:])[1] + 0.5
        zoom = float((xs.mean() if light == "left" else side - xs.mean()) / (0.1 * size))
    elif max(means) > 0.3 and abs(means[0] - means[1]) > 0.2:
        light, zoom = ("left" if means[0] > means[1] else "right"), 1.0
    else:
        return _Sun()
    mask = np.zeros((size, size), dtype=bool)
    sun_cols = slice(0, side) if light == "left" else slice(size - side, size)
    mask[:top, sun_cols] = sunlike[:, :side] if light == "left" else sunlike[:, side:]
    return _Sun(light, zoom, mask)


def _ground_line(d: np.ndarray, colours: _Colours, sun: _Sun, sigma: float) -> tuple[int, bool]:
    """The ground line (first ground row) of `d`, and whether it was found from the pixels: the change point from
    sky-like rows to ground- or shadow-like rows when sky and ground differ by more than the noise `sigma`, else
    the default row (or `WORK_SIZE`, no ground in frame, when the bottom strip is sky)."""
    size = WORK_SIZE
    default_line = int(GROUND_LINE * size)
    if not colours.contrast > max(6.0, 2.0 * sigma):
        line = default_line if sun.canonical or colours.background == "black" or colours.ground_seen else size
        return line, False
    to_sky = _distance(d, colours.sky)
    to_ground, to_shadow = _distance(d, colours.ground), _distance(d, colours.shadow)
    tau = max(0.45 * colours.contrast, sigma, 8.0)
    skylike = (to_sky < tau) & (to_sky <= to_ground)
    groundlike = ((to_ground < tau) | (to_shadow < tau)) & (to_sky > np.minimum(to_ground, to_shadow))
    gain = np.concatenate([[0.0], np.cumsum(skylike.mean(axis=1) - groundlike.mean(axis=1))])
    if sun.canonical:
        return default_line - 2 + int(np.argmax(gain[default_line - 2 : default_line + 3])), True
    return int(np.argmax(gain)), True


def _backdrop(
    d: np.ndarray, rough: np.ndarray, colours: _Colours, line: int, reliable: bool
) -> tuple[np.ndarray, float]:
    """Each row's backdrop colour `(56, 3)`: the sky, mixed with the ground in the 6 rows above a blurred line
    (measured in object-free columns, `rough` marking object pixels); and the line's step width (px, nan when not
    measured)."""
    size = WORK_SIZE
    backdrop = np.broadcast_to(colours.sky, (size, 3)).copy()
    line_sigma = np.nan
    if reliable and 6 <= line <= size - 6:
        free = ~ndi.binary_dilation(rough[max(0, line - 12) : line].any(axis=0), iterations=3)
        if free.sum() >= 4:
            axis = colours.sky - colours.ground
            t = ((d[line - 6 : line + 6][:, free] - colours.ground) @ axis) / float(axis @ axis)
            profile = np.clip(np.median(t, axis=1), 0.0, 1.0)
            backdrop[line - 6 : line] = colours.ground + profile[:6, None] * axis
            step = np.clip(-np.diff(profile), 0, None)
            if step.sum() > 0.3:
                pos = np.arange(len(step))
                mu = (step * pos).sum() / step.sum()
                line_sigma = float(np.sqrt((step * (pos - mu) ** 2).sum() / step.sum()))
    return backdrop, line_sigma


def _coverage(
    d: np.ndarray, src: np.ndarray, sigma: float, colours: _Colours, sun: _Sun, line: int, reliable: bool
) -> _Coverage | None:
    """The object colour (from the pixels above `line` far from the sky) and each pixel's coverage: its projection
    on the backdrop -> object colour axis, from the denoised `d` and from `src` (the image the soft coverage is
    read from). None when fewer than 4 pixels stand out from the sky."""
    size = WORK_SIZE
    region = np.zeros((size, size), dtype=bool)
    region[:line] = True
    if sun.mask is not None:
        region &= ~ndi.binary_dilation(sun.mask, iterations=2)
    dist = _distance(d, colours.sky)
    rough = region & (dist > max(30.0, 3.0 * sigma))
    if rough.sum() < 4:
        return None
    pixel = np.median(d[rough & (dist >= np.median(dist[rough]))], axis=0)
    colour = _object_colour(pixel, colours.sky, colours.cast, colours.background)
    backdrop, line_sigma = _backdrop(d, rough, colours, line, reliable)
    obj_axis = np.clip(np.asarray(PALETTE[colour], dtype=np.float64) + colours.cast, 0, 255) - backdrop  # (rows, 3)
    norm = np.maximum((obj_axis * obj_axis).sum(axis=1), 1.0)[:, None]
    hard = ((d - backdrop[:, None]) * obj_axis[:, None]).sum(axis=-1) / norm
    soft = np.clip(((src - backdrop[:, None]) * obj_axis[:, None]).sum(axis=-1) / norm, -0.3, 1.2)
    soft[~region] = 0.0
    return _Coverage(colour, region, hard, soft, line_sigma)


def _blobs(coverage: _Coverage) -> tuple[np.ndarray, list[tuple[int, tuple[slice, slice]]], int]:
    """Blobs of coverage > 0.5: the label image `(56, 56)`, each blob of >= 5 px as (label, bounding slices), and
    the margin (px) an object's window needs for its blurred edge. Fragments (a star's thin point, noise) join a
    big neighbour within 3 px or go."""
    region, hard = coverage.region, coverage.hard
    labels, n = ndi.label(region & (hard > 0.5))
    if n == 0:
        return labels, [], 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    sizable = areas[1:][areas[1:] >= 5]
    big = areas >= max(5.0, 0.3 * float(np.median(sizable)) if len(sizable) else 5.0)
    big[0] = False
    if not big[1:].all():
        near = ndi.grey_dilation(np.where(big[labels], labels, 0), size=(7, 7))
        labels = np.where(big[labels], labels, np.where(labels > 0, near, 0))
        areas = np.bincount(labels.ravel(), minlength=n + 1)
    edge = ndi.binary_dilation(labels > 0, iterations=2) & region & (hard > 0.2) & (hard < 0.8)
    gy, gx = np.gradient(hard)
    edge_sigma = 1.0 / (np.sqrt(2 * np.pi) * max(float(np.median(np.hypot(gx, gy)[edge])), 0.1)) if edge.any() else 1
    margin = int(np.ceil(3 + 2 * min(edge_sigma, 3.0)))
    slices = [(k, sl) for k, sl in enumerate(ndi.find_objects(labels), start=1) if sl is not None and areas[k] >= 5]
    return labels, slices, margin


def _template_misfit(
    window: np.ndarray, centre: tuple[float, float], rows_above_line: float, mass: float
) -> tuple[np.ndarray, np.ndarray]:
    """Squared misfit of an object's coverage `window` to every shape's blurred template, sampled around its
    `centre` (px in the window) at each radius scale, above the line only: an array (shapes, scales, betas), and
    the radii (px) `(shapes, scales)`."""
    table, shape_areas = _templates()
    radii = np.sqrt(mass / shape_areas)[:, None] * _SCALES[None, :]  # (shapes, scales) px
    ys = centre[0] + _GRID[None, None, :, None] * radii[:, :, None, None]
    xs = centre[1] + _GRID[None, None, None, :] * radii[:, :, None, None]
    ys, xs = np.broadcast_arrays(ys, xs)
    obs = ndi.map_coordinates(window, [ys.ravel(), xs.ravel()], order=1, cval=0.0)
    obs = obs.reshape(*radii.shape, -1)
    valid = ys.reshape(*radii.shape, -1) <= rows_above_line
    return (((table[:, None] - obs[:, :, None]) ** 2) * valid[:, :, None]).sum(axis=-1), radii


def _objects(coverage: _Coverage, line: int) -> list[_Object]:
    """The objects above `line`: each blob cut at the dips of its column profile, with its template misfits."""
    size = WORK_SIZE
    labels, slices, margin = _blobs(coverage)
    if not slices:
        return []
    soft = coverage.soft
    height = float(statistics.median(sl[0].stop - sl[0].start for _, sl in slices))
    objects = []
    for k, sl in slices:
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        own = labels[sl] == k
        profile = np.where(own, soft[sl], 0.0).sum(axis=0)
        cuts = [x0] + [x0 + c for c in _split(profile, height / 2.0)] + [x1]
        bottoms = np.where(own.any(axis=0), own.shape[0] - np.argmax(own[::-1], axis=0), 0) + y0
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            wx0 = max(0, a - margin) if i == 0 else a
            wx1 = min(size, b + margin) if i == len(cuts) - 2 else b
            wy0, wy1 = max(0, y0 - margin), min(size, y1 + margin)
            lab = labels[wy0:wy1, wx0:wx1]
            window = np.where((lab == 0) | (lab == k), soft[wy0:wy1, wx0:wx1], 0.0)
            mass = max(float(window.sum()), 1.0)
            wy, wx = np.indices(window.shape)
            centre = (float((window * wy).sum() / mass), float((window * wx).sum() / mass))
            misfit, radii = _template_misfit(window, centre, line - 0.5 - wy0, mass)
            objects.append(
                _Object(
                    parts=len(cuts) - 1,
                    x_range=(a, b),
                    bottom=float(bottoms[a - x0 : b - x0].max()),
                    mass=mass,
                    x=centre[1] + wx0 + 0.5,
                    cut=bool(a == 0 or b == size or y0 == 0),
                    misfit=misfit,
                    radii=radii,
                )
            )
    return objects


def _fit_shape_and_blur(objects: list[_Object]) -> tuple[str, float, float]:
    """The shape, the template blur sigma (px) and the radius (px): template misfits summed over the whole objects
    of typical mass, with one blur sigma shared by all; the shape through `_SHAPE_WEIGHTS` on `_shape_features`."""
    fit_set = [o for o in objects if not o.cut] or objects
    typical = statistics.median(o.mass for o in fit_set)
    fit_set = [o for o in fit_set if o.mass <= 1.6 * typical] or fit_set
    total = np.zeros((len(SHAPES), len(_SIGMAS)))
    best_scales = []  # per object in `fit_set`: (shapes, sigmas) index of the best radius scale
    for o in fit_set:
        beta = _SIGMAS[None, None, :] / o.radii[:, :, None]  # (shapes, scales, sigmas)
        index = np.clip(np.searchsorted(_BETAS, beta) - 1, 0, len(_BETAS) - 2)
        frac = np.clip((beta - _BETAS[index]) / (_BETAS[1] - _BETAS[0]), 0.0, 1.0)
        lower = np.take_along_axis(o.misfit, index, axis=-1)
        misfit = lower + frac * (np.take_along_axis(o.misfit, index + 1, axis=-1) - lower)
        best_scales.append(misfit.argmin(axis=1))
        total += misfit.min(axis=1)
    best_index, sigma_index = np.unravel_index(int(np.argmin(total)), total.shape)

    def radius_of(index: int) -> float:  # px at the working size
        radii = (o.radii[index, scale[index, sigma_index]] for o, scale in zip(fit_set, best_scales, strict=True))
        return float(statistics.median(radii))

    template_sigma = float(_SIGMAS[sigma_index])
    features = _shape_features(total.min(axis=1), template_sigma / radius_of(int(best_index)))
    shape_index = int(np.argmax(_SHAPE_WEIGHTS @ features))
    return SHAPES[shape_index], template_sigma, radius_of(shape_index)


def _instances(objects: list[_Object], shape: str, radius: float, line: int) -> list[tuple[float, float, bool]]:
    """One (x centre px, bottom px, floating) per object: one per object part, except that a part heavier than one
    object (touching squares make no humps) counts by its mass, its objects evenly spaced across it."""
    one, single_width = _AREA[shape] * radius**2, _WIDTH[shape] * radius
    instances = []
    for o in objects:
        a, b = o.x_range
        n_obj = 1
        if shape == "square" or o.parts == 1:
            n_obj = max(1, int(round(o.mass / one)))
            if o.cut:  # partly out of frame: its width bounds how many it can be
                n_obj = min(n_obj, max(1, int(round((b - a) / single_width + 0.2))))
            n_obj = min(n_obj, 6, b - a)
        floating = line - o.bottom > _FLOAT_GAP * radius
        if n_obj == 1:
            instances.append((o.x, o.bottom, floating))
        else:
            spacing = max(b - a - single_width, 0.0) / (n_obj - 1)
            instances.extend((a + 0.5 * single_width + j * spacing, o.bottom, floating) for j in range(n_obj))
    return instances


def _overlap(instances: list[tuple[float, float, bool]], radius: float) -> bool:
    """Exactly one pair of neighbours closer than `_OVERLAP_SPACING` radii."""
    gaps = np.diff(sorted(x for x, _, _ in instances)) / radius
    return int((gaps < _OVERLAP_SPACING).sum()) == 1


def _shadows(
    d: np.ndarray, line: int, colours: _Colours, instances: list[tuple[float, float, bool]], radius: float, sun: _Sun
) -> tuple[str | None, float]:
    """The side the shadows fall on and how dark the columns 0.9 radii beside the objects are against the rest
    (0 ground .. 1 shadow colour, in a band under `line`); (None, 0.0) when the band is out of frame."""
    size = WORK_SIZE
    if line + 2 > size:
        return None, 0.0
    zoom = sun.zoom
    band = max(3, int(round(0.07 * size * (zoom if zoom is not None and zoom > 1.12 else 1.0))) + 1)
    sh_axis = colours.shadow - colours.ground
    t_sh = ((d[line + 1 : line + 1 + band] - colours.ground) @ sh_axis) / max(float(sh_axis @ sh_axis), 1.0)
    dark = np.clip(t_sh, -0.5, 1.5).mean(axis=0)
    cols = np.arange(size) + 0.5
    centres = np.array([x for x, _, _ in instances])[:, None]
    right = (np.abs(cols - centres - 0.9 * radius) <= 1.15 * radius).any(axis=0)
    left = (np.abs(cols - centres + 0.9 * radius) <= 1.15 * radius).any(axis=0)
    either = right | left
    rest = float(np.median(dark[~either])) if (~either).sum() >= 3 else 0.0
    amount = float(np.percentile(dark[either], 75)) - rest if either.any() else 0.0
    only_right = float(dark[right & ~left].mean()) if (right & ~left).any() else 0.0
    only_left = float(dark[left & ~right].mean()) if (left & ~right).any() else 0.0
    return ("right" if only_right >= only_left else "left"), amount


def _analyse(image: np.ndarray) -> Measurements:
    """The `Measurements` of a checked RGB uint8 image `(H, W, 3)` (steps 1-9 of the module docstring)."""
    raw = image.astype(np.float64)
    noise_raw = _noise_sigma(raw)
    jpeg_share, jpeg_support, jpeg_jump = _jpeg_steps(raw)
    w = _to_work(image)
    noise_w = noise_raw if w.shape == raw.shape else _noise_sigma(w)
    d = _median_filter(w)
    if noise_w > 12:
        d = _median_filter(d)
    sigma = max(0.5 * noise_w, 1.0)  # per-channel noise left after the median filter

    colours = _colours(d)
    sun = _find_sun(d, colours.sky, colours.cast)
    line, reliable = _ground_line(d, colours, sun, sigma)
    found = Measurements(
        noise_raw=noise_raw,
        jpeg_share=jpeg_share,
        jpeg_support=jpeg_support,
        jpeg_jump=jpeg_jump,
        background=colours.background,
        cast=tuple(float(c) for c in colours.cast),
        light=sun.light,
        sun_zoom=sun.zoom,
        at_default_line=reliable and abs(line - int(GROUND_LINE * WORK_SIZE)) <= 1,
    )
    coverage = _coverage(d, d if noise_w > 3 else w, sigma, colours, sun, line, reliable)
    if coverage is None:
        return found
    found = replace(found, colour=coverage.colour, line_sigma=coverage.line_sigma)
    objects = _objects(coverage, line)
    if not objects:
        return found
    shape, template_sigma, radius = _fit_shape_and_blur(objects)
    instances = _instances(objects, shape, radius, line)
    shadow, shadow_amount = _shadows(d, line, colours, instances, radius, sun)
    return replace(
        found,
        shape=shape,
        template_sigma=template_sigma,
        radius=radius,
        instances=tuple(instances),
        overlap=_overlap(instances, radius),
        cut_objects=sum(o.cut for o in objects),
        shadow=shadow,
        shadow_amount=shadow_amount,
    )


# ---------------------------------------------------------------------------------------------------- decisions
def _degradations(found: Measurements) -> tuple[float, float, float]:
    """Blur sigma (px at 56 px), noise sigma (8-bit levels) and compression strength from the measurements."""
    jpeg = (
        found.jpeg_share > _JPEG_SHARE
        and found.jpeg_support >= _JPEG_SUPPORT
        and found.jpeg_share * found.jpeg_support >= _JPEG_HITS
    )
    compression = float(np.clip(_JPEG_A + _JPEG_B * np.log(max(found.jpeg_jump, 1.0)), 0.4, 1.0)) if jpeg else 0.0
    noise = found.noise_raw / _NOISE_GAIN
    noise = 0.0 if noise < _NOISE_MIN or jpeg else float(noise)
    blur = 0.0
    if found.template_sigma is not None:
        var = found.template_sigma**2 - _PIXEL_VAR - _BLUR_NOISE * (noise / 40) ** 2 - _BLUR_JPEG * compression
        blur = float(np.sqrt(max(var, 0.0)))
    if np.isfinite(found.line_sigma) and noise == 0 and compression == 0:
        line_blur = float(np.sqrt(max(found.line_sigma**2 - _PIXEL_VAR, 0.0)))
        blur = _LINE_WEIGHT * line_blur + (1 - _LINE_WEIGHT) * blur
    return (blur if blur >= _BLUR_MIN else 0.0), noise, compression


def _scene(found: Measurements) -> Scene:
    """The `Scene` the measurements imply: shadow state, degradations and crop decided (step 10 of the module
    docstring); positions and radius in fractions of the image size."""
    size = WORK_SIZE
    radius = (found.radius if found.radius is not None else 0.1 * size) / size
    objects = [
        SceneObject(x / size, bottom / size - radius, radius, not floating) for x, bottom, floating in found.instances
    ]
    light = found.light or "left"
    if found.shadow is None:
        shadows = "consistent"
    elif found.shadow_amount < _SHADOW_MIN:
        shadows = "none"
    elif found.light is None:  # no sun seen: trust the shadows
        shadows = "consistent"
        light = "left" if found.shadow == "right" else "right"
    else:
        shadows = "consistent" if found.shadow != light else "wrong"
    blur, noise, compression = _degradations(found)
    zoom = found.sun_zoom
    zoomed = zoom is not None and zoom > _CANONICAL_ZOOM[1]
    cropped = zoomed or found.cut_objects > 0 or (zoom is None and not found.at_default_line)
    return Scene(
        count=len(objects),
        colour=found.colour or next(c for c in OBJECT_COLOURS if c != found.background),
        shape=found.shape or "circle",
        background=found.background,
        objects=objects,
        light=light,
        shadows=shadows,
        overlap=found.overlap,
        blur=blur,
        noise=noise,
        compression=compression,
        cast=tuple(c if abs(c) >= _CAST_MIN else 0.0 for c in found.cast),
        crop=float((1.0 - 1.0 / zoom if zoomed else _DEFAULT_CROP) if cropped else 0.0),
        cut_objects=found.cut_objects,
        extra={"estimated": True},
    )


# ----------------------------------------------------------------------------------------------------- public
def estimate_scene(image: np.ndarray) -> Scene:
    """The `Scene` an RGB uint8 image `(H, W, 3)` (H, W >= 32) shows, estimated from its pixels: everything
    `oracle_scores` reads (count, colour, shape, background, cast, overlap, crop and cut objects, sun side, shadows,
    floating objects, blur, noise, compression). Objects carry estimated positions; `extra["estimated"]` is True.
    The image is analysed at 56x56 px, so a non-square image is squashed.
    """
    return _scene(_analyse(_check_image(image)))


def judge(image: np.ndarray, prompt: str) -> dict[str, float]:
    """The oracle's scores (1.0-5.0 per rubric dimension) for any image of the world drawn for `prompt`."""
    return oracle_scores(estimate_scene(image), parse_prompt(prompt))


def judge_batch(images: np.ndarray | Sequence[np.ndarray], prompts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """`judge` over a batch: `images` a uint8 array `(N, H, W, 3)` or a sequence of `(H, W, 3)` arrays, `prompts`
    N strings (or one for all). Returns an `(N,)` float array per rubric dimension."""
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if len(prompts) != len(images):
        raise ValueError(f"`prompts` must have one entry per image: {len(prompts)} prompts for {len(images)} images")
    scores = [judge(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
    return {d: np.array([s[d] for s in scores], dtype=np.float64) for d in DIMENSIONS}
