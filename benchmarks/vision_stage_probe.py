"""Stage 0 of base pretraining alone, for comparing its settings: how well a tower's heads name colour, shape and
count of held-out images after a given number of steps.

    python -m benchmarks.vision_stage_probe --head mean --cell_weight 0 --steps 2500 --out runs/benchmarks/probe.json

Builds a model of `pretrain_base_tiny.yaml` (`--model`, default the student), renders a pool of the world's images
(groups from 3,000 on, `--pool` images) and 1,024 held-out ones (groups from 20,000, as `benchmarks/base_models.py`),
runs `training.vision_stage.train_vision` with the shipped config changed by the flags, and prints the probe
accuracy of its heads with the training time (one process; set `OMP_NUM_THREADS` to compare like with like).
The pool is cached (`--cache`, a safetensors file of images plus a JSON of scenes) so that runs compare on one set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from training.config import load_config
from training.pretrain_base import FAMILY, PretrainBaseConfig, build_model, build_processor, model_overrides
from training.vision_stage import train_vision
from zreward_diffusers.preprocessing import QwenVLImageTransform
from zreward_diffusers.synthetic import Scene, SyntheticWorld, WorldConfig
from zreward_diffusers.tiny_tokenizer import build_tiny_tokenizer

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "pretrain_base_tiny.yaml"


def images_and_scenes(world: SyntheticWorld, num_images: int, start_group: int) -> tuple[torch.Tensor, list[Scene]]:
    group_size = world.config.group_size
    items = [item for group in world.groups(-(-num_images // group_size), start=start_group)
             for item in group.items][:num_images]
    return torch.from_numpy(np.stack([item.image for item in items])), [item.scene for item in items]


def load_pool(cache: Path | None, world: SyntheticWorld, num_images: int):
    """(pool images, pool scenes, held-out images, held-out scenes), from `cache` when it holds this many."""
    if cache is not None and cache.exists():
        meta = json.loads(cache.with_suffix(".json").read_text())
        if meta["pool"] == num_images:
            tensors = load_file(cache)
            scenes = [Scene.from_dict(s) for s in meta["scenes"]]
            return tensors["pool"], scenes[:num_images], tensors["held_out"], scenes[num_images:]
    pool, pool_scenes = images_and_scenes(world, num_images, 3000)
    held_out, held_scenes = images_and_scenes(world, 1024, 20000)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"pool": pool, "held_out": held_out}, cache)
        scenes = [s.to_dict() for s in pool_scenes + held_scenes]
        cache.with_suffix(".json").write_text(json.dumps({"pool": num_images, "scenes": scenes}))
    return pool, pool_scenes, held_out, held_scenes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measured = parser.add_argument_group("Measurement")
    output = parser.add_argument_group("Output")
    measured.add_argument("--model", default="student",
                          help="a model of the shipped config, or several joined by commas (one shared trunk)")
    measured.add_argument("--steps", type=int, default=2500)
    measured.add_argument("--head", default=None, help="`vision.head` (default: the shipped config's)")
    measured.add_argument("--cell_weight", type=float, default=None, help="`vision.cell_weight` (default: shipped)")
    measured.add_argument("--lr", type=float, default=None, help="`vision.lr` (default: shipped)")
    measured.add_argument("--optimizer", default=None, help="`vision.optimizer` (default: shipped)")
    measured.add_argument("--muon_lr", type=float, default=None, help="`vision.muon_lr` (default: shipped)")
    measured.add_argument("--batch_size", type=int, default=None, help="`vision.batch_size` (default: shipped)")
    measured.add_argument("--seed", type=int, default=None, help="`seed` (model and heads init, step order)")
    measured.add_argument("--pool", type=int, default=32768, help="training images")
    output.add_argument("--cache", type=Path, default=None, help="safetensors file caching the rendered images")
    output.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args(argv)

    overrides = {"vision.steps": args.steps, "save_every": 10**9, "log_with": None}
    for key, value in (("vision.head", args.head), ("vision.cell_weight", args.cell_weight), ("vision.lr", args.lr),
                       ("vision.optimizer", args.optimizer), ("vision.muon_lr", args.muon_lr),
                       ("vision.batch_size", args.batch_size), ("seed", args.seed)):
        if value is not None:
            overrides[key] = value
    config = load_config(PretrainBaseConfig, CONFIG, overrides)
    stage = config.vision
    names = args.model.split(",")
    if not set(names) <= set(config.models):
        raise ValueError(f"`--model` must name models of {sorted(config.models)}, got {args.model!r}")
    world = SyntheticWorld(config.world_seed, WorldConfig(image_size=config.image_size))
    if 3000 + -(-args.pool // world.config.group_size) > 20000:
        raise ValueError(f"`--pool` {args.pool} would reach the held-out groups (from 20,000); at most 68,000")
    pool, pool_scenes, held_out, held_scenes = load_pool(args.cache, world, args.pool)

    processor = build_processor(build_tiny_tokenizer(FAMILY, vocab_size=config.vocab_size), config)
    models = {name: build_model(processor.tokenizer, model_overrides(name, config.models[name], config)[0],
                                config.seed) for name in names}
    transform = QwenVLImageTransform.from_image_processor(processor.image_processor)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as state_dir:
        result = train_vision(models, config, Accelerator(cpu=True), transform, pool, pool_scenes, held_out,
                              held_scenes, Path(state_dir))
    probe = result["probe_accuracy"]
    probe = probe[names[0]] if len(names) == 1 else probe
    summary = dict(model=args.model, steps=args.steps, head=stage.head, cell_weight=stage.cell_weight, lr=stage.lr,
                   optimizer=stage.optimizer, muon_lr=stage.muon_lr, batch_size=stage.batch_size, seed=config.seed,
                   pool=args.pool,
                   seconds=round(time.perf_counter() - started, 1), probe=probe)
    print(json.dumps(summary))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
