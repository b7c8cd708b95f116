"""The world's groups rendered by worker processes.

Each group is a function of the world's seed and its index (docs/design.md, 'The synthetic world'), so what
`render_groups` and `render_world` return does not depend on the number of workers or on how the groups are split
among them.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from .scene import Scene
from .world import SyntheticGroup, SyntheticItem, SyntheticWorld, WorldConfig


def check_render_workers(workers) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`render_workers` must be a positive integer, got {workers!r}")


def _render_groups(seed: int, config: WorldConfig, start: int, stop: int, part: str):
    """The world's groups `start` to `stop` - 1 (a worker of `render_groups` / `render_world`): the groups
    (`part="groups"`), their items (`"items"`), or only their images stacked and their scenes (`"images"`: less to
    send back)."""
    groups = SyntheticWorld(seed, config).groups(stop - start, start=start)
    if part == "groups":
        return groups
    rendered = [item for group in groups for item in group.items]
    if part == "items":
        return rendered
    return np.stack([item.image for item in rendered]), [item.scene for item in rendered]


def _render_chunks(seed: int, config: WorldConfig, start_group: int, num_groups: int, workers: int, part: str,
                   desc: str) -> list:
    """`_render_groups` over `num_groups` groups from `start_group`, split into chunks among `workers` processes;
    the chunks' results in order."""
    check_render_workers(workers)
    bounds = np.linspace(start_group, start_group + num_groups, min(num_groups, 16 * workers) + 1).round()
    chunks = [(seed, config, int(a), int(b), part) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    progress = tqdm(total=num_groups, desc=desc, unit="group")
    parts = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # forked where the platform can (no `if __name__ == "__main__"` needed in a caller's script; the workers
            # use numpy only, no torch threads), else spawned
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)))
            rendered = pool.map(_render_groups, *zip(*chunks, strict=True))
        else:
            rendered = (_render_groups(*chunk) for chunk in chunks)
        for chunk, result in zip(chunks, rendered, strict=True):
            parts.append(result)
            progress.update(chunk[3] - chunk[2])
    progress.close()
    return parts


def render_groups(seed: int, config: WorldConfig, num_groups: int, start_group: int = 0,
                  workers: int = 1) -> list[SyntheticGroup]:
    """Groups `start_group` to `start_group + num_groups - 1` of the world (`seed`, `config`), rendered by `workers`
    processes."""
    parts = _render_chunks(seed, config, start_group, num_groups, workers, "groups", "world groups")
    return [group for part in parts for group in part]


def render_world(seed: int, image_size: int, start_group: int, num_images: int, workers: int = 1, items: bool = True,
                 desc: str = "world images") -> list[SyntheticItem] | tuple[np.ndarray, list[Scene]]:
    """The first `num_images` items of the world's groups from `start_group` on, rendered by `workers` processes.

    Returns the `SyntheticItem`s, or without `items` the images `(N, H, W, 3)` uint8 and their scenes. `desc`
    labels the progress bar.
    """
    check_render_workers(workers)
    if num_images == 0:
        return [] if items else (np.zeros((0, image_size, image_size, 3), dtype=np.uint8), [])
    config = WorldConfig(image_size=image_size)
    num_groups = math.ceil(num_images / config.group_size)
    parts = _render_chunks(seed, config, start_group, num_groups, workers, "items" if items else "images", desc)
    if items:
        return [item for part in parts for item in part][:num_images]
    images = np.concatenate([images for images, _ in parts])[:num_images]
    return images, [scene for _, scenes in parts for scene in scenes][:num_images]
