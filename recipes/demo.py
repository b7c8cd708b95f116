"""The whole paper in miniature, on the embedded default: `make demo` (`make demo QUICK=1` for a smoke run).

    python -m recipes.demo --out runs/demo                          # 13-21 minutes on 2 CPU cores
    python -m recipes.demo --out runs/demo_quick --profile quick    # a few minutes, numbers meaningless
    python -m recipes.demo --out runs/demo_scratch --from-scratch   # also pretrains the bases and the generator
    python -m recipes.demo --out runs/mine --profile my_profile.yaml

As in the real workflow, the demo starts from pretrained models: the world's base VLMs and base generator shipped in
`world/` (`make world-bases` retrains them; `--from-scratch`, `make demo FROM_SCRATCH=1`, pretrains them inside the
demo instead). A profile (`recipes/profiles/demo*.yaml`, or any YAML file of the same keys: `DemoProfile`) sizes
the stages. Each stage is a subprocess running an ordinary entry point with its config, written to `<out>/configs/`
after the stage's own validation; its log goes to `<out>/logs/`; a finished stage is skipped on the next run, an
interrupted one resumes from its training state:

    data           python -m training.make_synthetic      held-out labelled data + contact sheet
    base_teacher   python -m training.pretrain_base       (--from-scratch) teacher-size base VLM
    base_student   python -m training.pretrain_base       (--from-scratch) student-size base VLM
    teacher_sft    python -m training.sft                 cold start on rationales (docs/method.md, 'Cold start')
    teacher_gdso   python -m training.gdso                GDSO from the cold start
    student_risd   python -m training.risd                RISD: the student distils the teacher's distributions
    direct         python -m training.sft (no reasoning)  baseline: the student trained on panel labels alone
    bradley_terry  python -m training.bradley_terry       baseline: a scalar Bradley-Terry reward, teacher size
    rewarddance    python -m training.rewarddance         baseline: RewardDance-style P("yes"), teacher size
    sft_only       python -m training.sft                 baseline: the cold start trained on for GDSO's steps
    teacher_grpo   python -m training.grpo                baseline: GRPO from the cold start, GDSO's steps
    student_opd    python -m training.opd                 baseline: on-policy distillation of the GDSO teacher
    generator      python -m pipelines.train_tiny_generator   (--from-scratch, or none shipped) the base generator
    draft          python -m pipelines.reward_finetune    DRaFT-1 LoRA tuning with the RISD student as the reward
    gsb            python -m pipelines.judging            base vs tuned on test prompts, judged by the oracle

Budgets: the teacher-size methods all get the cold start's steps plus GDSO's (SFT only, GRPO and GDSO share the
cold start; Bradley-Terry and RewardDance train that long from the base); the student-size ones (RISD, OPD, labels
only) get the same steps from the student base. DRaFT keeps the LoRA of its best step on validation prompts, and
the GSB is measured on test prompts disjoint from them.

Two lanes run side by side (the reward chain, and the baselines and the generator), each a one-thread process: the
tiny models use two threads poorly, so two one-thread processes finish sooner than one after the other. Processes
(not threads) keep each stage exactly what its command runs alone, and let it resume on its own. A bar per lane
counts its finished stages and names the running one; each stage's own progress bar is in its log. At the end
`<out>/report.md` gathers the tables (every accuracy with a bootstrap 95% interval over prompt groups) and figures
(`<out>/figures/*.png`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from training.config import check_at_least, load_config, merge_mappings

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

TRAINING_CONFIGS = ROOT / "training" / "configs"
PIPELINE_CONFIGS = ROOT / "pipelines" / "configs"
WORLD = ROOT / "world"  # the shipped bases (recipes.world_bases)
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
PROFILES = {"quick": PROFILES_DIR / "demo_quick.yaml", "demo": PROFILES_DIR / "demo.yaml",
            "full": PROFILES_DIR / "demo_full.yaml"}
EVAL = {"source": "synthetic", "world_seed": 0, "start": 100_000, "image_size": 56}


@dataclass
class DataStage:
    """The held-out labelled data (`training.make_synthetic`)."""

    n: int = field(default=1024, metadata={"help": "records to write"})

    def __post_init__(self):
        check_at_least(self, 1, "n")


@dataclass
class GSBStage:
    """The oracle's good-same-bad judgement of the base against the tuned generator (`pipelines.judging`)."""

    num_prompts: int = field(default=64, metadata={"help": "held-out prompts"})
    seeds_per_prompt: int = field(default=2, metadata={"help": "images per prompt and generator"})
    num_inference_steps: int | None = field(default=None, metadata={"help": "sampler steps (none: the draft's)"})

    def __post_init__(self):
        check_at_least(self, 1, "num_prompts", "seeds_per_prompt", "num_inference_steps")


@dataclass
class ReportStage:
    """What the report computes itself."""

    eval_groups: int = field(default=64, metadata={"help": "held-out prompt groups of every reward model's "
                                                           "evaluation and of the human-agreement ceiling"})
    samples: int = field(default=6, metadata={"help": "held-out images in the score-distribution figure"})

    def __post_init__(self):
        check_at_least(self, 1, "eval_groups", "samples")


@dataclass
class DemoProfile:
    """The sizes of the demo's stages. A training stage's mapping overrides its config (the shipped YAML in
    `training/configs` or `pipelines/configs`, or the config's defaults): nested mappings reach nested fields, and
    the stage's config class checks the result. `base_teacher` / `base_student` may hold `model`: changes to that
    model's entry in `pretrain_base_tiny.yaml` (its `vision_config`, say); a profile's `steps` or `vision.steps`
    replace the model's own."""

    data: DataStage = field(default_factory=DataStage, metadata={"help": "held-out data"})
    base_teacher: dict = field(default_factory=dict, metadata={"help": "overrides of the teacher-size base's "
                                                                       "pretraining (training.pretrain_base)"})
    base_student: dict = field(default_factory=dict, metadata={"help": "the same for the student-size base"})
    teacher_sft: dict = field(default_factory=dict, metadata={"help": "overrides of teacher_sft_tiny.yaml"})
    teacher_gdso: dict = field(default_factory=dict, metadata={"help": "overrides of teacher_gdso_tiny.yaml"})
    student_risd: dict = field(default_factory=dict, metadata={"help": "overrides of student_risd_tiny.yaml"})
    direct: dict = field(default_factory=dict, metadata={"help": "overrides of the no-reasoning SFT baseline"})
    bradley_terry: dict = field(default_factory=dict, metadata={"help": "overrides of the Bradley-Terry baseline"})
    rewarddance: dict = field(default_factory=dict, metadata={"help": "overrides of the RewardDance-style baseline"})
    teacher_grpo: dict = field(default_factory=dict, metadata={"help": "overrides of teacher_grpo_tiny.yaml"})
    student_opd: dict = field(default_factory=dict, metadata={"help": "overrides of student_opd_tiny.yaml"})
    generator: dict = field(default_factory=dict, metadata={"help": "overrides of the tiny generator's config"})
    draft: dict = field(default_factory=dict, metadata={"help": "overrides of pipelines/configs/draft_tiny.yaml"})
    gsb: GSBStage = field(default_factory=GSBStage, metadata={"help": "the oracle's judgement"})
    report: ReportStage = field(default_factory=ReportStage, metadata={"help": "the report"})


def load_profile(profile: str) -> DemoProfile:
    """The profile named `profile` (`quick`, `demo`, `full`) or read from the YAML file `profile`."""
    path = PROFILES.get(profile) or Path(profile)
    if profile not in PROFILES and (path.suffix not in (".yaml", ".yml") or not path.is_file()):
        raise ValueError(f"`profile` must be one of {sorted(PROFILES)} or a YAML file, got {profile!r}")
    return load_config(DemoProfile, path)


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
    setup: Callable[[], None] | None = None  # run before the stage's command when the stage is not done


def _copy_checkpoints(source: Path, target: Path) -> Callable[[], None]:
    """A stage setup: start `target` from the training state in `source` (once; a copy is renamed into place)."""
    def copy() -> None:
        if target.exists():
            return
        staging = target.with_name(target.name + ".copying")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        staging.rename(target)
    return copy


def _write_config(path: Path, config) -> Path:
    data = asdict(config) if is_dataclass(config) else config
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dotted(overrides: dict, prefix: str = "") -> dict:
    """`{"train_data": {"num_groups": 6}}` as `{"train_data.num_groups": 6}` (load_config's override keys)."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def shipped_models(world: Path = WORLD) -> dict[str, Path | None]:
    """The shipped base models in `world` (`teacher`, `student`, `generator`), None for those not there."""
    paths = {"teacher": world / "base_teacher", "student": world / "base_student", "generator": world / "generator"}
    marker = {"teacher": "config.json", "student": "config.json", "generator": "model_index.json"}
    return {name: path if (path / marker[name]).exists() else None for name, path in paths.items()}


def build_stages(out: Path, profile: DemoProfile | str, from_scratch: bool = False,
                 world: Path = WORLD, seed: int = 0) -> list[Stage]:
    """The demo's stages for `profile` (a `DemoProfile`, or a name or YAML file for `load_profile`), their configs
    checked by each stage's config class and written under `<out>/configs/`. They start from the bases shipped in
    `world`, or with `from_scratch` pretrain them first (the generator too when `world` ships none).

    `seed` is the training seed of every reward model (and of the RISD teacher cache's sampling); a profile that sets
    a stage's `seed` keeps it. The bases, the data, the generator and DRaFT keep theirs: DRaFT's seed also draws its
    prompt split, which the GSB's test prompts must stay disjoint from."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}")
    from pipelines.reward_finetune import RewardFinetuneConfig
    from pipelines.train_tiny_generator import GeneratorConfig
    from training.gdso import GDSOConfig
    from training.grpo import GRPOConfig
    from training.opd import OPDConfig
    from training.pretrain_base import PretrainBaseConfig
    from training.risd import RISDConfig
    from training.scalar_baselines import ScalarConfig
    from training.sft import SFTConfig

    p = load_profile(profile) if isinstance(profile, str) else profile
    shipped = shipped_models(world)
    if not from_scratch and (shipped["teacher"] is None or shipped["student"] is None):
        raise ValueError(f"{world} lacks the shipped base VLMs (base_teacher, base_student): retrain them with "
                         "`make world-bases`, or pretrain them inside the demo with --from-scratch")
    configs = out / "configs"
    common = {"log_with": "tensorboard", "resume": True}
    eval_data = {f"eval_data.{key}": value for key, value in EVAL.items()}
    eval_data["eval_data.num_groups"] = p.report.eval_groups
    stages = []

    def reward_stage(name, lane, module, cls, yaml_file, overrides, after, title, setup=None):
        values = {**common, "seed": seed, "output_dir": str(out / name), **eval_data, **overrides,
                  **dotted(getattr(p, name))}
        config = load_config(cls, yaml_file, values)
        path = _write_config(configs / f"{name}.yaml", config)
        stages.append(Stage(name, lane, module, ["--config", str(path)], out / name / "metrics.json", after, title,
                            setup))
        return config

    stages.append(Stage("data", "B", "training.make_synthetic",
                        ["--out", str(out / "data"), "--n", str(p.data.n), "--seed", "1",
                         "--contact-sheet", str(out / "figures" / "contact_sheet.png")],
                        out / "data" / "records.jsonl", [], "held-out synthetic data"))
    # the base VLMs' pretraining configs are checked whichever the mode (a bad key in the profile is never ignored)
    base_yaml = yaml.safe_load((TRAINING_CONFIGS / "pretrain_base_tiny.yaml").read_text())
    with tempfile.TemporaryDirectory() as scratch_configs:
        for name, lane, model in (("base_teacher", "A", "teacher"), ("base_student", "B", "student")):
            settings = dict(getattr(p, name))
            entry = merge_mappings(base_yaml["models"][model], settings.pop("model", {}))
            # the profile's stage lengths replace the model's own ones
            if "steps" in settings:
                entry.pop("steps", None)
            if "steps" in settings.get("vision", {}):
                entry.pop("vision_steps", None)
            path = _write_config((configs if from_scratch else Path(scratch_configs)) / f"{name}.yaml",
                                 dict(base_yaml, models={model: entry}))
            config = load_config(PretrainBaseConfig, path,
                                 {**common, "output_dir": str(out / name), **dotted(settings)})
            if from_scratch:
                _write_config(path, config)
                stages.append(Stage(name, lane, "training.pretrain_base", ["--config", str(path)],
                                    out / name / model / "config.json", [], f"{model}-size base VLM"))
    if from_scratch:
        bases = {"teacher": out / "base_teacher" / "teacher", "student": out / "base_student" / "student"}
        after_base = {"teacher": ["base_teacher"], "student": ["base_student"]}
    else:
        bases = {"teacher": shipped["teacher"], "student": shipped["student"]}
        after_base = {"teacher": [], "student": []}
    # the reward chain (lane A)
    cold = reward_stage("teacher_sft", "A", "training.sft", SFTConfig, TRAINING_CONFIGS / "teacher_sft_tiny.yaml",
                        {"base": str(bases["teacher"])}, after_base["teacher"], "teacher: cold-start SFT")
    gdso = reward_stage("teacher_gdso", "A", "training.gdso", GDSOConfig, TRAINING_CONFIGS / "teacher_gdso_tiny.yaml",
                        {"base": str(out / "teacher_sft" / "model")}, ["teacher_sft"], "teacher: GDSO")
    student_overrides = {"base": str(bases["student"]), "teacher": str(out / "teacher_gdso" / "model")}
    risd = reward_stage("student_risd", "A", "training.risd", RISDConfig, TRAINING_CONFIGS / "student_risd_tiny.yaml",
                        dict(student_overrides, cache_dir=str(out / "teacher_cache"), cache_seed=seed),
                        ["teacher_gdso", *after_base["student"]], "student: RISD")
    # the baselines (lane B): the teacher-size ones at the cold start's + GDSO's steps, the student-size ones at RISD's
    teacher_budget = cold.steps + gdso.steps
    student_base = {"base": str(bases["student"]), "lr": 3e-4, "lr_scheduler": "cosine", "warmup_steps": 20,
                    "save_every": 100, "steps": risd.steps}
    reward_stage("direct", "B", "training.sft", SFTConfig, None,
                 dict(student_base, reasoning=False, **{"train_data.num_groups": 2048}), after_base["student"],
                 "baseline: student on panel labels")
    scalar = {"base": str(bases["teacher"]), "steps": teacher_budget, "lr": cold.lr, "warmup_steps": cold.warmup_steps,
              "batch_size": cold.batch_size, "save_every": teacher_budget,
              "train_data.num_groups": cold.train_data["num_groups"]}
    reward_stage("bradley_terry", "B", "training.bradley_terry", ScalarConfig, None, scalar, after_base["teacher"],
                 "baseline: Bradley-Terry")
    reward_stage("rewarddance", "B", "training.rewarddance", ScalarConfig, None, scalar, after_base["teacher"],
                 "baseline: RewardDance-style")
    # SFT only: the cold start's own run, its training state copied and trained on for GDSO's steps
    if cold.lr_scheduler not in ("constant", "constant_with_warmup"):
        raise ValueError(f"teacher_sft.lr_scheduler must be constant or constant_with_warmup (the SFT-only baseline "
                         f"continues the cold start's run for GDSO's steps), got {cold.lr_scheduler!r}")
    values = {**common, "seed": seed, "output_dir": str(out / "sft_only"), **eval_data, **dotted(p.teacher_sft),
              "base": str(bases["teacher"]), "steps": teacher_budget, "save_every": teacher_budget}
    config = load_config(SFTConfig, TRAINING_CONFIGS / "teacher_sft_tiny.yaml", values)
    path = _write_config(configs / "sft_only.yaml", config)
    stages.append(Stage("sft_only", "B", "training.sft", ["--config", str(path)], out / "sft_only" / "metrics.json",
                        ["teacher_sft"], "baseline: SFT only",
                        _copy_checkpoints(out / "teacher_sft" / "checkpoints", out / "sft_only" / "checkpoints")))
    reward_stage("teacher_grpo", "B", "training.grpo", GRPOConfig, TRAINING_CONFIGS / "teacher_grpo_tiny.yaml",
                 {"base": str(out / "teacher_sft" / "model"), "objective": "grpo", "steps": gdso.steps,
                  "save_every": gdso.save_every, **dotted(p.teacher_gdso)}, ["teacher_sft"], "baseline: GRPO")
    reward_stage("student_opd", "B", "training.opd", OPDConfig, TRAINING_CONFIGS / "student_opd_tiny.yaml",
                 dict(student_overrides, steps=risd.steps), ["teacher_gdso", *after_base["student"]],
                 "baseline: OPD")
    # the generator and its tuning (lane C)
    if from_scratch or shipped["generator"] is None:
        # the shipped generator's recipe (unit-std latents, zero-terminal-SNR schedule...), the profile's lengths
        generator = load_config(GeneratorConfig, PIPELINE_CONFIGS / "generator_world.yaml",
                                dict(output_dir=str(out / "generator"), resume=True, **dotted(p.generator)))
        path = _write_config(configs / "generator.yaml", generator)
        stages.append(Stage("generator", "B", "pipelines.train_tiny_generator", ["--config", str(path)],
                            out / "generator" / "metrics.json", [], "tiny SD generator"))
        pipeline, after_generator = out / "generator" / "pipeline", ["generator"]
    else:
        pipeline, after_generator = shipped["generator"], []
    draft = load_config(RewardFinetuneConfig, PIPELINE_CONFIGS / "draft_tiny.yaml",
                        dict(output_dir=str(out / "draft"), pretrained=str(pipeline),
                             reward=str(out / "student_risd" / "model"), resume=True, **dotted(p.draft)))
    path = _write_config(configs / "draft.yaml", draft)
    stages.append(Stage("draft", "C", "pipelines.reward_finetune", ["--config", str(path)],
                        out / "draft" / "metrics.json", [*after_generator, "student_risd"],
                        "DRaFT LoRA with the student"))
    gsb_steps = p.gsb.num_inference_steps or draft.num_inference_steps
    stages.append(Stage("gsb", "C", "pipelines.judging",
                        ["--a", str(pipeline), "--b", str(pipeline), "--lora_b", str(out / "draft" / "best_lora"),
                         "--judge", "oracle", "--skip_prompts", str(draft.eval_prompts),
                         "--num_prompts", str(p.gsb.num_prompts), "--seeds_per_prompt", str(p.gsb.seeds_per_prompt),
                         "--num_inference_steps", str(gsb_steps), "--size", str(draft.height),
                         "--guidance_scale", str(draft.guidance_scale),
                         "--out", str(out / "gsb.json"), "--grid", str(out / "figures" / "before_after.png")],
                        out / "gsb.json", ["draft"], "oracle GSB: base vs tuned, test prompts"))
    return stages


class Runner:
    """Runs the stages lane by lane (lanes in parallel), showing one progress bar per lane."""

    def __init__(self, out: Path, stages: list[Stage], threads_per_lane: int):
        self.out, self.stages, self.threads = out, {s.name: s for s in stages}, threads_per_lane
        self.finished = {name: threading.Event() for name in self.stages}
        self.failed: list[str] = []
        self.timings: dict[str, float] = {}
        timing_file = out / "timings.json"
        self.timings.update(json.loads(timing_file.read_text()) if timing_file.exists() else {})
        self.current: dict[str, tuple[str, Path, float] | None] = {}
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
        if stage.setup is not None:
            stage.setup()
        started = time.perf_counter()
        self.current[stage.lane] = (stage.name, log, started)
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
        """One bar per lane: its finished stages, and the running one with its time so far (the stage's own
        progress bar is in its log)."""
        bars = {lane: tqdm(total=sum(s.lane == lane for s in self.stages.values()), position=i, desc=f"lane {lane}",
                           leave=True, dynamic_ncols=True, unit="stage")
                for i, lane in enumerate(lanes)}
        while any(worker.is_alive() for worker in workers):
            for lane, bar in bars.items():
                bar.n = sum(self.finished[s.name].is_set() for s in self.stages.values() if s.lane == lane)
                current = self.current.get(lane)
                if current is not None:
                    name, log, started = current
                    bar.set_description(f"lane {lane}: {name} ({time.perf_counter() - started:.0f} s, "
                                        f"log: {log.relative_to(self.out)})", refresh=False)
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


def schedule(stages: list[Stage], sequential: bool) -> tuple[list[Stage], list[list[str]]]:
    """The stages and the groups of lanes run together, in order: lanes A and B side by side, then C; or
    (`sequential`) every stage in one lane, in the order they were built (each after the stages it waits for)."""
    if sequential:
        return [replace(stage, lane="all") for stage in stages], [["all"]]
    return stages, [["A", "B"], ["C"]]


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
                     help=f"stage sizes: one of {sorted(PROFILES)} (recipes/profiles/demo*.yaml) or a YAML file of "
                          "the same keys (default: %(default)s)")
    run.add_argument("--sequential", action="store_true", help="one stage at a time (all threads each)")
    run.add_argument("--seed", type=int, default=0,
                     help="training seed of every reward model (default: %(default)s); the bases, data, generator and "
                          "DRaFT keep theirs. `python -m recipes.demo_tables` gathers runs of several seeds")
    run.add_argument("--from-scratch", action="store_true",
                     help="pretrain the base VLMs and the base generator inside the demo instead of starting from the "
                          "ones shipped in world/ (adds about an hour)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default="runs/demo", help="where every stage, the report and the figures go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    profile = load_profile(args.profile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "profile.txt"
    kind = args.profile + (" --from-scratch" if args.from_scratch else "")
    kind += f" --seed {args.seed}" if args.seed else ""
    if marker.exists() and marker.read_text().strip() != kind:
        held = marker.read_text().strip()
        raise SystemExit(f"--out {out} holds a `{held}` demo; its finished stages would be reused as if they were "
                         f"`{kind}` ones. Pick another --out, or delete {out}.")
    marker.write_text(kind + "\n")
    started = time.perf_counter()
    try:
        stages = build_stages(out, profile, from_scratch=args.from_scratch, seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    stages, lanes = schedule(stages, args.sequential)
    validate_schedule(stages, lanes)
    runner = Runner(out, stages, threads_per_lane=1)
    runner.run(lanes)
    from recipes.demo_report import write_report

    report = write_report(out, kind, runner.timings, asdict(profile.report),
                          world_dir=None if args.from_scratch else WORLD)
    wall = time.perf_counter() - started
    sys.stdout.write(report["summary"] + f"\nthis run: {wall / 60:.1f} min; report: {out / 'report.md'}\n")
    return report


if __name__ == "__main__":
    main()
