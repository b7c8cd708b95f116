"""Where the world's base VLMs name colour, shape and count right, by image condition.

    python -m benchmarks.base_models --models world/base_teacher world/base_student --num_images 1024

Held-out images come from world groups far from every pretraining pool (`--start_group`, default 1,000,000; the script
refuses groups that a model's `pretrain_base` run used, as its `metrics.json` records them); each model
names the attribute by the highest-likelihood candidate (`training.pretrain_base.name_attributes`, the metric of
`pretrain_base`). Prints a markdown table and writes JSON (`--out`).

`--ideal_observer` adds the shape accuracy of an observer that knows everything about each scene but its shape: it
redraws the scene with each candidate shape (degradations included, noise left out) and names the one whose image
is nearest the real one in squared pixel distance. It bounds how readable the shapes of degraded images are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from training.pretrain_base import name_attributes
from training.sequences import ConversationEncoder
from zreward_diffusers.synthetic import Scene, SyntheticWorld
from zreward_diffusers.synthetic.grammar import SHAPES
from zreward_diffusers.synthetic.questions import EVAL_CANDIDATES, is_clean, true_answer
from zreward_diffusers.synthetic.render import render

ATTRIBUTES = ("colour", "shape", "count")
# Image conditions (a scene can be in several); "heavy": blur sigma > 1.5 px or JPEG quality below 13.
CONDITIONS = {
    "all": lambda s: True,
    "clean": is_clean,
    "blur": lambda s: s.blur > 0,
    "noise": lambda s: s.noise > 0,
    "compression": lambda s: s.compression > 0,
    "cast": lambda s: s.cast_strength > 0,
    "crop": lambda s: s.crop > 0,
    "overlap": lambda s: s.overlap,
    "heavy blur or JPEG": lambda s: s.blur > 1.5 or s.compression > 0.75,
}


def ideal_observer_shape(scene: Scene, image: np.ndarray) -> str:
    """The shape whose redrawing of `scene` (everything else kept, noise left out: its seed would give the answer
    away) is nearest `image` (H, W, 3) in squared pixel distance."""
    distances = []
    for shape in SHAPES:
        candidate = dataclasses.replace(scene, shape=shape, noise=0.0)  # render does not change the scene
        drawn = render(candidate, image.shape[0]).astype(np.float64)
        distances.append(float(((drawn - image.astype(np.float64)) ** 2).sum()))
    return SHAPES[int(np.argmin(distances))]


def condition_table(scenes: list[Scene], right: dict[str, list[bool]]) -> dict[str, dict]:
    """Per condition of `CONDITIONS`: its number of images and the accuracy of each attribute in `right` (whether
    each image's attribute was named right); attributes left out of `right` are None."""
    table = {}
    for condition, test in CONDITIONS.items():
        chosen = [i for i, scene in enumerate(scenes) if test(scene)]
        row = dict.fromkeys(ATTRIBUTES, None) | {"images": len(chosen)}
        for attribute, hits in right.items():
            row[attribute] = float(np.mean([hits[i] for i in chosen])) if chosen else None
        table[condition] = row
    return table


def check_unseen(model: str, world_seed: int, start: int, stop: int) -> None:
    """Refuse held-out groups `start` to `stop` - 1 if `model`'s pretraining used any of them (the `world_groups` of
    its entry in the `metrics.json` beside it, written by `training.pretrain_base`; older runs did not record them)."""
    metrics = Path(model).parent / "metrics.json"
    if not metrics.exists():
        return
    entry = json.loads(metrics.read_text()).get(Path(model).name, {})
    used = entry.get("world_groups")
    if used is None or used["world_seed"] != world_seed:
        return
    for part in ("train", "stage_0"):
        first, last = used.get(part, (0, 0))
        if first < stop and start < last:
            raise ValueError(f"--start_group {start}: groups {start}-{stop - 1} overlap the {part} groups "
                             f"{first}-{last - 1} of {model}; choose groups it has not seen")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    measured = parser.add_argument_group("Measurement")
    output = parser.add_argument_group("Output")
    measured.add_argument("--models", nargs="+", default=["world/base_teacher", "world/base_student"])
    measured.add_argument("--num_images", type=int, default=1024)
      # Groups from 20,000 lie inside the shipped stage-0 pool (groups 2,176-51,327): its towers have seen them.
    measured.add_argument("--start_group", type=int, default=1_000_000)
    measured.add_argument("--world_seed", type=int, default=0)
    measured.add_argument("--batch_size", type=int, default=64)
    output.add_argument("--out", default="runs/benchmarks/base_models.json")
    measured.add_argument("--ideal_observer", action="store_true", help="add the ideal observer's shape accuracy")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num_images must be positive, got {args.num_images}")

    world = SyntheticWorld(args.world_seed)
    num_groups = -(-args.num_images // world.config.group_size)
    for path in args.models:
        check_unseen(path, args.world_seed, args.start_group, args.start_group + num_groups)
    groups = world.groups(num_groups, start=args.start_group)
    items = [item for group in groups for item in group.items][: args.num_images]
    scenes = [item.scene for item in items]
    images = torch.from_numpy(np.stack([item.image for item in items]))
    results = {}
    for path in args.models:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        encoder = ConversationEncoder(processor, images)
        answers = name_attributes(model, encoder, list(range(len(items))), args.batch_size)
        right = {attribute: [answers[attribute][i] == true_answer(attribute, scene) for i, scene in enumerate(scenes)]
                 for attribute in EVAL_CANDIDATES}
        results[path] = condition_table(scenes, right)
    if args.ideal_observer:
        named = [ideal_observer_shape(scene, item.image) for scene, item in zip(scenes, items, strict=True)]
        hits = [name == scene.shape for name, scene in zip(named, scenes, strict=True)]
        results["ideal observer (knows all but the shape)"] = condition_table(scenes, {"shape": hits})

    lines = []
    for path, table in results.items():
        lines += [f"\n{path}\n", "| condition | images | " + " | ".join(ATTRIBUTES) + " |",
                  "|---|---:|" + "---:|" * len(ATTRIBUTES)]
        for condition, row in table.items():
            cells = " | ".join("–" if row[a] is None else f"{row[a]:.3f}" for a in ATTRIBUTES)
            lines.append(f"| {condition} | {row['images']} | {cells} |")
    print("\n".join(lines))  # noqa: T201 (a benchmark script's report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
