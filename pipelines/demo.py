"""The whole paper in miniature, on the embedded default: `make demo` (`make demo QUICK=1` for a smoke run).

    python -m pipelines.demo --out runs/demo                  # about 25 minutes on 2 CPU cores
    python -m pipelines.demo --out runs/demo_quick --profile quick   # a few minutes, numbers meaningless
    python -m pipelines.demo --out runs/demo_full --profile full     # the benchmark-size stages (about 90 min)

Stages (each a subprocess running an ordinary entry point with a config written to `<out>/configs/`, its log in
`<out>/logs/`; a finished stage is skipped on the next run, an interrupted one resumes from its training state):

    data          python -m training.make_synthetic      held-out labelled data + contact sheet
    base_teacher  python -m training.pretrain_base       teacher-size base VLM (describes the world's images)
    base_student  python -m training.pretrain_base       student-size base VLM
    teacher_sft   python -m training.sft                 cold start on rationales (docs/method.md, 'Cold start')
    teacher_gdso  python -m training.gdso                GDSO from the cold start
    student_risd  python -m training.risd                RISD: the student distils the teacher's distributions
    direct        python -m training.sft (no reasoning)  baseline: the student trained on panel labels alone
    bradley_terry python -m training.bradley_terry       baseline: a scalar Bradley-Terry reward, student size
    generator     python -m pipelines.train_tiny_generator   the base text-to-image model (tiny SD pipeline)
    draft         python -m pipelines.reward_finetune    DRaFT-1 LoRA tuning with the RISD student as the reward
    gsb           python -m pipelines.judging            base vs tuned, judged by the oracle (GSB with a CI)

Two lanes run side by side (the reward chain, and the student/baseline/generator chain), each with half the CPU
threads: the tiny models use two threads poorly, so two one-thread processes finish sooner than one after the other.
At the end `<out>/report.md` gathers the tables and figures (`<out>/figures/*.png`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

TRAINING_CONFIGS = ROOT / "training" / "configs"
PIPELINE_CONFIGS = ROOT / "pipelines" / "configs"
EVAL = {"source": "synthetic", "world_seed": 0, "start": 100_000, "image_size": 56}

# Per profile: overrides of each stage's config (dotted keys). "demo" is sized to finish in about 25 minutes on this
# 2-core machine; "full" is the benchmark recipe (the configs in training/configs and pipelines/configs as they are).
PATCH_14 = {"patch_size": 14, "min_pixels": 112 * 112, "max_pixels": 112 * 112}
# The teacher-size vision tower the demo was measured with (the shipped base config gives the teacher the student's
# tower, whose stage 0 both share); a profile's `vision_config` replaces the model's.
TEACHER_TOWER_96 = {"embed_dim": 96, "depth": 3, "num_heads": 6, "initializer_range": 0.06}
PROFILES: dict[str, dict[str, dict]] = {
    "quick": {
        "data": {"n": 64},
        "base_teacher": {"steps": 40, "num_train_images": 512, "num_eval_images": 64, "eval_every": 0,
                         "warmup_steps": 5, "vision_steps": 10, "vision_num_images": 256},
        "base_student": {"steps": 40, "num_train_images": 512, "num_eval_images": 64, "eval_every": 0,
                         "warmup_steps": 5, "vision_steps": 10, "vision_num_images": 256},
        "teacher_sft": {"steps": 8, "warmup_steps": 2, "train_data.num_groups": 64,
                        "eval_max_new_tokens": 48, "eval_num_samples": 1},
        "teacher_gdso": {"steps": 2, "groups_per_step": 2, "num_rollouts": 4, "max_new_tokens": 48,
                         "train_data.num_groups": 64, "eval_max_new_tokens": 48,
                         "eval_num_samples": 1},
        "student_risd": {"steps": 12, "warmup_steps": 2, "train_data.num_groups": 6,
                         "num_samples": 2, "teacher_max_new_tokens": 48, "groups_per_step": 4},
        "direct": {"steps": 12, "warmup_steps": 2, "train_data.num_groups": 64},
        "bradley_terry": {"steps": 12, "warmup_steps": 2, "train_data.num_groups": 64},
        "generator": {"vae_steps": 30, "unet_steps": 40, "num_groups": 64},
        "draft": {"steps": 4, "eval_every": 2, "eval_prompts": 8, "num_inference_steps": 8, "save_every": 2},
        "gsb": {"num_prompts": 8, "seeds_per_prompt": 1, "num_inference_steps": 8},
        "report": {"eval_groups": 6, "samples": 4},
    },
    "demo": {
        "data": {"n": 1024},
        # measured (benchmarks/README.md) without the vision stage, with Qwen2-VL's 14-pixel patches on 56 px images
        # upsampled to 112 px (the shipped base config reads them unresized with 7-pixel patches), the teacher's own
        # 96-wide tower, 8,192 training images and AdamW (the shipped config: the student's tower, 65,536 images, Muon)
        "base_teacher": {"steps": 1200, "eval_every": 0, "vision_steps": 0, "vision_config": TEACHER_TOWER_96,
                         "num_train_images": 8192, "optimizer": "adamw", **PATCH_14},
        "base_student": {"steps": 1500, "eval_every": 0, "vision_steps": 0, "num_train_images": 8192,
                         "optimizer": "adamw", **PATCH_14},
        "teacher_sft": {"steps": 200, "save_every": 100},
        "teacher_gdso": {"steps": 50, "save_every": 25},
        "student_risd": {"steps": 300, "train_data.num_groups": 192},
        "direct": {"steps": 300},
        "bradley_terry": {"steps": 300},
        "generator": {"vae_steps": 600, "unet_steps": 1800},
        # as measured (benchmarks/README.md): draft_tiny.yaml's earlier batch and evaluation settings
        "draft": {"steps": 150, "batch_size": 4, "eval_prompts": 32, "eval_every": 50, "early_stopping_patience": 0},
        "gsb": {"num_prompts": 64, "seeds_per_prompt": 2},
        "report": {"eval_groups": 64, "samples": 6},
    },
    "full": {
        "data": {"n": 4096},
        "base_teacher": {}, "base_student": {}, "teacher_sft": {}, "teacher_gdso": {}, "student_risd": {},
        "direct": {"steps": 400}, "bradley_terry": {"steps": 400}, "generator": {}, "draft": {},
        "gsb": {"num_prompts": 64, "seeds_per_prompt": 2},
        "report": {"eval_groups": 64, "samples": 6},
    },
}


@dataclass
class Stage:
    """One step of the demo: `python -m <module> <args>`; `done` is the file that marks it finished."""

    name: str
    lane: str
    module: str
    args: list[str]
    done: Path
    after: list[str] = field(default_factory=list)
    title: str = ""


def _write_config(path: Path, config) -> Path:
    data = asdict(config) if is_dataclass(config) else config
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build_stages(out: Path, profile: str) -> list[Stage]:
    """The demo's stages for `profile`, their configs written under `<out>/configs/`."""
    from training.gdso import GDSOConfig
    from training.pretrain_base import PretrainBaseConfig
    from training.risd import RISDConfig
    from training.scalar_baselines import ScalarConfig
    from training.sft import SFTConfig

    from .reward_finetune import RewardFinetuneConfig
    from .train_tiny_generator import GeneratorConfig

    if profile not in PROFILES:
        raise ValueError(f"`profile` must be one of {sorted(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    configs = out / "configs"
    common = {"log_with": "tensorboard", "resume": True}
    eval_data = {f"eval_data.{key}": value for key, value in EVAL.items()}
    eval_data["eval_data.num_groups"] = p["report"]["eval_groups"]
    stages = []

    def reward_stage(name, lane, module, cls, yaml_file, overrides, after, title):
        values = {**common, "output_dir": str(out / name), **eval_data, **overrides, **p[name]}
        config = load_config(cls, yaml_file, values)
        path = _write_config(configs / f"{name}.yaml", config)
        stages.append(Stage(name, lane, module, ["--config", str(path)], out / name / "metrics.json", after, title))

    stages.append(Stage("data", "B", "training.make_synthetic",
                        ["--out", str(out / "data"), "--n", str(p["data"]["n"]), "--seed", "1",
                         "--contact-sheet", str(out / "figures" / "contact_sheet.png")],
                        out / "data" / "records.jsonl", [], "held-out synthetic data"))
    base_yaml = yaml.safe_load((TRAINING_CONFIGS / "pretrain_base_tiny.yaml").read_text())
    for name, lane, model in (("base_teacher", "A", "teacher"), ("base_student", "B", "student")):
        values = dict(base_yaml, output_dir=str(out / name), models={model: base_yaml["models"][model]},
                      log_with="tensorboard", resume=True)
        config = load_config(PretrainBaseConfig, None, {k: v for k, v in values.items() if k != "models"})
        config.models = values["models"]
        for key, value in p[name].items():
            if key == "vision_config":
                config.models = {model: dict(config.models[model], vision_config=value)}
            else:
                setattr(config, key, value)
        own = {"vision_steps", "steps"} & set(p[name])  # the profile's stage lengths replace the model's own ones
        config.models = {model: {k: v for k, v in config.models[model].items() if k not in own}}
        path = _write_config(configs / f"{name}.yaml", config)
        stages.append(Stage(name, lane, "training.pretrain_base", ["--config", str(path)], out / name / model /
                            "config.json", [], f"{model}-size base VLM"))
    reward_stage("teacher_sft", "A", "training.sft", SFTConfig, TRAINING_CONFIGS / "teacher_sft_tiny.yaml",
                 {"base": str(out / "base_teacher" / "teacher")}, ["base_teacher"], "teacher: cold-start SFT")
    reward_stage("teacher_gdso", "A", "training.gdso", GDSOConfig, TRAINING_CONFIGS / "teacher_gdso_tiny.yaml",
                 {"base": str(out / "teacher_sft" / "model")}, ["teacher_sft"], "teacher: GDSO")
    reward_stage("student_risd", "A", "training.risd", RISDConfig, TRAINING_CONFIGS / "student_risd_tiny.yaml",
                 {"base": str(out / "base_student" / "student"), "teacher": str(out / "teacher_gdso" / "model"),
                  "cache_dir": str(out / "teacher_cache")}, ["teacher_gdso", "base_student"], "student: RISD")
    student_base = {"base": str(out / "base_student" / "student"), "lr": 3e-4, "lr_scheduler": "cosine",
                    "warmup_steps": 20, "save_every": 100}
    reward_stage("direct", "B", "training.sft", SFTConfig, None,
                 dict(student_base, reasoning=False, **{"train_data.num_groups": 2048}), ["base_student"],
                 "baseline: student on panel labels")
    reward_stage("bradley_terry", "B", "training.bradley_terry", ScalarConfig, None,
                 dict(student_base, **{"train_data.num_groups": 2048}), ["base_student"], "baseline: Bradley-Terry")
    generator = load_config(GeneratorConfig, None, dict(output_dir=str(out / "generator"), **p["generator"]))
    path = _write_config(configs / "generator.yaml", generator)
    stages.append(Stage("generator", "B", "pipelines.train_tiny_generator", ["--config", str(path)],
                        out / "generator" / "metrics.json", [], "tiny SD generator"))
    draft = load_config(RewardFinetuneConfig, PIPELINE_CONFIGS / "draft_tiny.yaml",
                        dict(output_dir=str(out / "draft"), pretrained=str(out / "generator" / "pipeline"),
                             reward=str(out / "student_risd" / "model"), resume=True, **p["draft"]))
    path = _write_config(configs / "draft.yaml", draft)
    stages.append(Stage("draft", "C", "pipelines.reward_finetune", ["--config", str(path)],
                        out / "draft" / "metrics.json", ["generator", "student_risd"], "DRaFT LoRA with the student"))
    gsb = p["gsb"]
    stages.append(Stage("gsb", "C", "pipelines.judging",
                        ["--a", str(out / "generator" / "pipeline"), "--b", str(out / "generator" / "pipeline"),
                         "--lora_b", str(out / "draft" / "lora"), "--judge", "oracle",
                         "--num_prompts", str(gsb["num_prompts"]), "--seeds_per_prompt", str(gsb["seeds_per_prompt"]),
                         "--num_inference_steps", str(gsb.get("num_inference_steps", draft.num_inference_steps)),
                         "--size", str(draft.height), "--out", str(out / "gsb.json"),
                         "--grid", str(out / "figures" / "before_after.png")],
                        out / "gsb.json", ["draft"], "oracle GSB: base vs tuned"))
    return stages


_PROGRESS = re.compile(r"(\d+)/(\d+) \[")


def stage_progress(log: Path) -> tuple[int, int] | None:
    """The last tqdm `n/total` written to a stage's log, if any."""
    try:
        with open(log, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 4096))
            tail = file.read().decode("utf-8", "replace")
    except OSError:
        return None
    matches = _PROGRESS.findall(tail)
    return (int(matches[-1][0]), int(matches[-1][1])) if matches else None


class Runner:
    """Runs the stages lane by lane (lanes in parallel), showing one progress bar per lane."""

    def __init__(self, out: Path, stages: list[Stage], threads_per_lane: int):
        self.out, self.stages, self.threads = out, {s.name: s for s in stages}, threads_per_lane
        self.finished = {name: threading.Event() for name in self.stages}
        self.failed: list[str] = []
        self.timings: dict[str, float] = {}
        timing_file = out / "timings.json"
        self.timings.update(json.loads(timing_file.read_text()) if timing_file.exists() else {})
        self.current: dict[str, tuple[str, Path] | None] = {}
        self.lock = threading.Lock()

    def run_stage(self, stage: Stage, threads: int) -> None:
        if stage.done.exists():
            logger.info("%s: done already (%s)", stage.name, stage.done)
            return
        log = self.out / "logs" / f"{stage.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", stage.module, *stage.args]
        self.current[stage.lane] = (stage.name, log)
        started = time.perf_counter()
        with open(log, "ab") as handle:
            handle.write(f"\n$ {' '.join(command)}\n".encode())
            handle.flush()
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        self.current[stage.lane] = None
        if result.returncode != 0 or not stage.done.exists():
            raise RuntimeError(f"stage {stage.name!r} failed (exit {result.returncode}); see {log}")
        with self.lock:
            self.timings[stage.name] = round(self.timings.get(stage.name, 0.0) + seconds, 1)
            (self.out / "timings.json").write_text(json.dumps(self.timings, indent=2))

    def run_lane(self, lane: str, threads: int) -> None:
        for stage in [s for s in self.stages.values() if s.lane == lane]:
            for dependency in stage.after:
                self.finished[dependency].wait()
            if self.failed:
                return
            try:
                self.run_stage(stage, threads)
            except Exception as error:  # reported by `run`, which stops the other lanes
                self.failed.append(str(error))
                for event in self.finished.values():
                    event.set()
                return
            self.finished[stage.name].set()

    def watch(self, lanes: list[str], workers: list[threading.Thread]) -> None:
        bars = {lane: tqdm(total=1, position=i, desc=f"lane {lane}", leave=True, dynamic_ncols=True)
                for i, lane in enumerate(lanes)}
        while any(worker.is_alive() for worker in workers):
            for lane, bar in bars.items():
                current = self.current.get(lane)
                if current is None:
                    continue
                name, log = current
                progress = stage_progress(log) or (0, 1)
                bar.set_description(f"lane {lane}: {name}")
                bar.total, bar.n = progress[1], min(progress[0], progress[1])
                bar.refresh()
            time.sleep(1.0)
        for bar in bars.values():
            bar.close()

    def run(self, lanes: list[list[str]]) -> None:
        """Run `lanes` (groups of lane names run together), in order."""
        cores = os.cpu_count() or 1
        for group in lanes:
            threads = max(1, cores // len(group))
            workers = [threading.Thread(target=self.run_lane, args=(lane, threads), daemon=True) for lane in group]
            for worker in workers:
                worker.start()
            self.watch(group, workers)
            for worker in workers:
                worker.join()
            if self.failed:
                raise RuntimeError("; ".join(self.failed))


def schedule(sequential: bool) -> list[list[str]]:
    """Groups of lanes run together, in order: lanes A and B side by side (or B, then A), then C."""
    return [["B"], ["A"], ["C"]] if sequential else [["A", "B"], ["C"]]


def validate_schedule(stages: list[Stage], groups: list[list[str]]) -> None:
    """Raise `ValueError` if a stage waits for one that the schedule runs later (which would never finish)."""
    group_of = {lane: g for g, lanes in enumerate(groups) for lane in lanes}
    by_name = {stage.name: stage for stage in stages}
    order = {stage.name: i for i, stage in enumerate(stages)}
    for stage in stages:
        for dependency in stage.after:
            other = by_name[dependency]
            later_group = group_of[other.lane] > group_of[stage.lane]
            later_in_lane = other.lane == stage.lane and order[dependency] > order[stage.name]
            if later_group or later_in_lane:
                raise ValueError(f"stage {stage.name!r} waits for {dependency!r}, which the schedule runs after it")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run = parser.add_argument_group("Run")
    run.add_argument("--profile", default="demo",
                     help=f"stage sizes: one of {sorted(PROFILES)} (default: %(default)s)")
    run.add_argument("--sequential", action="store_true", help="one stage at a time (all threads each)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default="runs/demo", help="where every stage, the report and the figures go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "profile.txt"
    if marker.exists() and marker.read_text().strip() != args.profile:
        held = marker.read_text().strip()
        raise SystemExit(f"--out {out} holds a `{held}` demo; its finished stages would be reused as if they were "
                         f"`{args.profile}` ones. Pick another --out, or delete {out}.")
    marker.write_text(args.profile + "\n")
    started = time.perf_counter()
    stages = build_stages(out, args.profile)
    lanes = schedule(args.sequential)
    validate_schedule(stages, lanes)
    runner = Runner(out, stages, threads_per_lane=1)
    runner.run(lanes)
    from .demo_report import write_report

    report = write_report(out, args.profile, runner.timings, PROFILES[args.profile]["report"])
    wall = time.perf_counter() - started
    sys.stdout.write(report["summary"] + f"\nthis run: {wall / 60:.1f} min; report: {out / 'report.md'}\n")
    return report


if __name__ == "__main__":
    main()
