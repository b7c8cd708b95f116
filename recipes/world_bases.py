"""The synthetic world's shipped models: trained by the project's own commands, measured, and copied into `world/`.

    make world-bases                                    # the shipped models' stages, then world/ and its manifest
    python -m recipes.world_bases --stages bases ship   # some stages (each cached under runs/world/)

Stages, each an ordinary entry point run in this process, cached (a stage whose result exists is skipped) and
resumable (an interrupted one continues from its checkpoints):

    bases      python -m training.pretrain_base --config training/configs/pretrain_base_tiny.yaml
               the teacher-size and student-size base VLMs (tiny Qwen2-VL)
    generator  python -m pipelines.train_tiny_generator --config pipelines/configs/generator_world.yaml
               the world's base text-to-image model (a tiny Stable Diffusion pipeline)
    teacher    python -m recipes.teacher (cold-start SFT, then GDSO) from the teacher-size base
    student    python -m training.risd --config training/configs/student_risd_tiny.yaml: the RISD student of that
               teacher, from the student-size base (the reward the quickstart and reward tuning use)
    ship       each model in fp16 safetensors under `world/`, measured as shipped, and `world/manifest.json`: per
               model its command, config, files with their sha256, and what it reaches

What is measured (held-out data only, never used for a choice): the bases name colour, shape and count of 2,048
unseen images (world groups from 1,000,000 and 2,000,000, `benchmarks.base_models`); the generator's oracle score
and how often its images show the count, colour, shape and background asked for (`pipelines.judging.oracle_report`,
held-out prompts); the student's held-out preference accuracy (64 prompt groups from 100,000, as every reward table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "world"
RUNS = Path("runs/world")
STAGES = ("bases", "generator", "teacher", "student", "ship")
DEFAULT_STAGES = ("bases", "generator", "teacher", "student", "ship")
MANIFEST = "manifest.json"
BASE_CONFIG = "training/configs/pretrain_base_tiny.yaml"
GENERATOR_CONFIG = "pipelines/configs/generator_world.yaml"
STUDENT_CONFIG = "training/configs/student_risd_tiny.yaml"
UNSEEN_GROUPS = (1_000_000, 2_000_000)  # two sets of 1,024 images, far from every pretraining pool
logger = logging.getLogger(__name__)


def run_bases(runs: Path) -> None:
    from training.config import load_config
    from training.pretrain_base import PretrainBaseConfig, pretrain

    out = runs / "base"
    if (out / "teacher" / "config.json").exists() and (out / "student" / "config.json").exists():
        logger.info("bases: done already (%s)", out)
        return
    pretrain(load_config(PretrainBaseConfig, ROOT / BASE_CONFIG,
                         {"output_dir": str(out), "resume": True, "log_with": None}))


def run_generator(runs: Path) -> None:
    from pipelines.train_tiny_generator import GeneratorConfig, train_generator
    from training.config import load_config

    train_generator(load_config(GeneratorConfig, ROOT / GENERATOR_CONFIG,
                                {"output_dir": str(runs / "generator"), "resume": True}))


def run_teacher(runs: Path) -> None:
    from recipes.teacher import TeacherRecipeConfig, run

    run(TeacherRecipeConfig(base=str(runs / "base" / "teacher"), output_dir=str(runs / "teacher")))


def run_student(runs: Path) -> None:
    from training.config import load_config
    from training.risd import RISDConfig, RISDTrainer
    from training.trainer import run_cached

    run_cached(RISDTrainer, load_config(RISDConfig, ROOT / STUDENT_CONFIG, {
        "base": str(runs / "base" / "student"), "teacher": str(runs / "teacher" / "gdso" / "model"),
        "output_dir": str(runs / "student_risd"), "cache_dir": str(runs / "teacher_cache"), "log_with": None}))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` but the save marker, by path relative to it."""
    from zreward_diffusers.saving import MARKER_NAME

    return {path.relative_to(directory).as_posix(): sha256(path) for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != MARKER_NAME}


def halve_weights(folder: Path) -> None:
    """Rewrite every safetensors file under `folder` with its float32 tensors in fp16 (half the bytes). The configs
    still say float32, so transformers ("auto") and diffusers load the weights back as float32."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata()
            tensors = {key: file.get_tensor(key) for key in file.keys()}
        tensors = {key: value.half() if value.dtype == torch.float32 else value for key, value in tensors.items()}
        save_file(tensors, path, metadata=metadata)


def ship_vlm(source: Path, target: Path) -> None:
    """A base VLM (transformers format), weights in fp16."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from zreward_diffusers.saving import save_directory

    model = AutoModelForImageTextToText.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        halve_weights(folder)

    save_directory(target, write, overwrite=True)


def ship_reward(source: Path, target: Path) -> None:
    """A Z-Reward checkpoint, weights in fp16."""
    from zreward_diffusers import ZRewardLoss
    from zreward_diffusers.saving import save_directory

    loss = ZRewardLoss.from_pretrained(source)

    def write(folder: Path) -> None:
        loss.save_pretrained(folder / "checkpoint")
        for path in (folder / "checkpoint").iterdir():
            path.rename(folder / path.name)
        (folder / "checkpoint").rmdir()
        halve_weights(folder)

    save_directory(target, write, overwrite=True)


def ship_generator(source: Path, target: Path) -> None:
    """The generator (a diffusers pipeline folder), weights in fp16."""
    from diffusers import StableDiffusionPipeline

    from zreward_diffusers.saving import save_directory

    pipe = StableDiffusionPipeline.from_pretrained(source, use_safetensors=True)

    def write(folder: Path) -> None:
        pipe.save_pretrained(folder, safe_serialization=True)
        halve_weights(folder)

    save_directory(target, write, overwrite=True)


def measure_bases(paths: list[Path], runs: Path) -> dict[str, dict]:
    """Colour / shape / count of each base on the two sets of unseen images (the lowest is the headline)."""
    from benchmarks.base_models import main as base_models

    measured = {str(path): {} for path in paths}
    for start in UNSEEN_GROUPS:
        results = base_models(["--models", *map(str, paths), "--num_images", "1024", "--start_group", str(start),
                               "--out", str(runs / f"unseen_{start}.json")])
        for path in paths:
            measured[str(path)][f"groups_from_{start}"] = {k: round(v, 4) for k, v in results[str(path)]["all"].items()
                                                           if k != "images"}
    return measured


def measure_generator(path: Path, num_prompts: int = 128, seeds_per_prompt: int = 2) -> dict:
    """The shipped generator on held-out prompts, 20 DDIM steps, without guidance and with the guidance
    `pipelines/configs/draft_tiny.yaml` samples it with."""
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines.judging import generate, oracle_report
    from pipelines.reward_finetune import RewardFinetuneConfig, world_prompts
    from training.config import load_config

    draft = load_config(RewardFinetuneConfig, ROOT / "pipelines" / "configs" / "draft_tiny.yaml")
    pipe = StableDiffusionPipeline.from_pretrained(path, use_safetensors=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in world_prompts(512, num_prompts, seed=0)[1] for _ in range(seeds_per_prompt)]
    measured = {"prompts": f"world_prompts(512, {num_prompts}, seed=0) held-out, {seeds_per_prompt} seeds",
                "num_inference_steps": draft.num_inference_steps}
    for guidance in sorted({1.0, draft.guidance_scale}):
        images = generate(pipe, prompts, list(range(len(prompts))), num_inference_steps=draft.num_inference_steps,
                          height=draft.height, width=draft.width, guidance_scale=guidance)
        measured[f"guidance_{guidance:g}"] = oracle_report(images, prompts)
    return measured


def measure_student(path: Path) -> dict:
    """Held-out preference accuracy of the shipped reward, as the trainers measure it (panel pairs, human ties left
    out, mean over dimensions; 64 prompt groups from 100,000)."""
    import numpy as np

    from training.data import load_split
    from zreward_diffusers import ZRewardLoss
    from zreward_diffusers.evaluation import evaluate_probs, score_dataset

    loss = ZRewardLoss.from_pretrained(path)
    dataset = load_split({"source": "synthetic", "world_seed": 0, "start": 100_000, "num_groups": 64,
                          "image_size": 56})
    report = evaluate_probs(score_dataset(loss.scorer, dataset, batch_size=32), dataset)
    accuracy = {d: round(float(report[d]["pair_accuracy"]["accuracy"]), 4) for d in dataset.dimensions
                if "pair_accuracy" in report[d]}
    return {"held_out_groups": "world seed 0, groups 100,000-100,063",
            "preference_accuracy": round(float(np.mean(list(accuracy.values()))), 4), "per_dimension": accuracy}


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


SHIPPED = ("bases", "generator", "student_risd")
DEFAULT_SHIPPED = SHIPPED


def ship(runs: Path, world: Path, which: tuple[str, ...] = DEFAULT_SHIPPED) -> dict:
    """Copy the trained models `which` (of `SHIPPED`; those not trained yet are left out) into `world/` in fp16,
    measure the copies, and update the manifest."""
    manifest_path = world / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    entries = manifest["models"]
    started = time.perf_counter()
    shipped = []
    if "bases" in which and (runs / "base" / "teacher" / "config.json").exists():
        for name in ("teacher", "student"):
            ship_vlm(runs / "base" / name, world / f"base_{name}")
        measured = measure_bases([world / "base_teacher", world / "base_student"], runs)
        metrics = json.loads((runs / "base" / "metrics.json").read_text())
        for name in ("teacher", "student"):
            entries[f"base_{name}"] = {
                "what": f"the world's {name}-size base VLM (tiny Qwen2-VL), pretrained on descriptions of its images",
                "command": f"python -m training.pretrain_base --config {BASE_CONFIG} --output_dir {runs / 'base'}",
                "config": BASE_CONFIG, "parameters": metrics[name]["parameters"],
                "train_seconds": {"stage_0_vision_shared_by_both": metrics[name]["vision_stage"]["train_seconds"],
                                  "stage_1_conversations": metrics[name]["train_seconds"]},
                "colour_shape_count_on_unseen_images": measured[str(world / f"base_{name}")]}
            shipped.append(f"base_{name}")
    if "generator" in which and (runs / "generator" / "pipeline").exists():
        ship_generator(runs / "generator" / "pipeline", world / "generator")
        metrics = json.loads((runs / "generator" / "metrics.json").read_text())
        entries["generator"] = {
            "what": "the world's base text-to-image model: a tiny Stable Diffusion pipeline trained from scratch",
            "command": f"python -m pipelines.train_tiny_generator --config {GENERATOR_CONFIG} "
                       f"--output_dir {runs / 'generator'}",
            "config": GENERATOR_CONFIG, "parameters": metrics["parameters"], "train_seconds": metrics["seconds"],
            "held_out_prompts": measure_generator(world / "generator")}
        shipped.append("generator")
    if "student_risd" in which and (runs / "student_risd" / "model").exists():
        ship_reward(runs / "student_risd" / "model", world / "student_risd")
        teacher = json.loads((runs / "teacher" / "gdso" / "metrics.json").read_text())
        entries["student_risd"] = {
            "what": "the world's RISD student: a no-reasoning Z-Reward distilled from the GDSO teacher",
            "command": f"python -m recipes.world_bases --stages teacher student (teacher: python -m recipes.teacher "
                       f"--base {runs / 'base' / 'teacher'}; student: python -m training.risd --config "
                       f"{STUDENT_CONFIG} with the shipped student base)",
            "config": STUDENT_CONFIG,
            "teacher_held_out_preference_accuracy": round(float(teacher["preference_accuracy"]), 4),
            "held_out": measure_student(world / "student_risd")}
        shipped.append("student_risd")
    for name in shipped:
        entries[name]["files"] = file_hashes(world / name)
        entries[name]["commit"] = commit()
        entries[name]["date"] = time.strftime("%Y-%m-%d")
    world.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("shipped %s into %s in %.0f s", shipped, world, time.perf_counter() - started)
    return manifest


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run = parser.add_argument_group("Run")
    run.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES,
                     help="stages to run, in their order (default: %(default)s)")
    output = parser.add_argument_group("Output")
    output.add_argument("--runs", default=str(RUNS), help="where the stages train (default: %(default)s)")
    output.add_argument("--world", default=str(WORLD), help="where the shipped copies go (default: %(default)s)")
    output.add_argument("--ship", nargs="+", default=list(DEFAULT_SHIPPED), choices=SHIPPED,
                        help="with the ship stage: which models to copy and measure (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = Path(args.runs)
    steps = {"bases": run_bases, "generator": run_generator, "teacher": run_teacher, "student": run_student}
    for stage in STAGES:
        if stage in args.stages and stage in steps:
            logger.info("stage %s", stage)
            steps[stage](runs)
    if "ship" in args.stages:
        return ship(runs, Path(args.world), tuple(args.ship))
    return None


if __name__ == "__main__":
    main()
