"""The student table's ablations, on a `make demo` run: RISD with fewer teacher chains per input (M), RISD without the
gap term, and the CLIP-sized student, each distilling that run's GDSO teacher from the run's own teacher cache (no new
teacher sampling) with its RISD settings, data and steps. The run's RISD student (M = its cache's chains, gap term)
is the reference row; RISD, OPD and the labels-only student over seeds are the demo's own rows
(`python -m recipes.demo_tables`).

    python -m recipes.student_table --demo runs/demo                  # after `make demo`
    python -m recipes.student_table --demo runs/demo_seed1 --seed 1
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from training.config import check_at_least, load_config, parse_args
from training.risd import RISDConfig, RISDTrainer
from training.risd_clip import RISDClipConfig
from training.risd_clip import train as train_clip
from training.trainer import run_cached as run

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
VARIANTS = {  # name: (label, changes to the demo's RISD config; None: the CLIP-sized student)
    "risd_m1": ("RISD, M = 1 (the first cached chain)", {"target_samples": 1}),
    "risd_m2": ("RISD, M = 2 (the first two)", {"target_samples": 2}),
    "risd_no_gap": ("RISD without the gap term", {"gap_weight": 0.0}),
    "clip": ("CLIP-sized student (tiny open_clip towers, a 9-level head per dimension)", None),
}
# what the CLIP-sized student takes from the demo's RISD config: the teacher, its cache and the data
CLIP_SHARED = ("teacher", "cache_dir", "train_data", "eval_data", "num_samples", "teacher_temperature",
               "teacher_max_new_tokens", "cache_chunk_size", "cache_seed", "groups_per_step", "gap_weight",
               "human_weight", "huber_delta")


@dataclass
class StudentTableConfig:
    """RISD's ablations and the CLIP-sized student on a demo run's teacher and teacher cache."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Measurement": ("demo", "seed", "clip_steps"),
        "Output": ("out",),
    }

    demo: str = field(default="runs/demo", metadata={"help": "a finished `python -m recipes.demo` run"})
    seed: int = field(default=0, metadata={"help": "training seed of every student"})
    clip_steps: int = field(default=600, metadata={"help": "steps of the CLIP-sized student (trained from scratch: "
                                                           "its towers are not pretrained on the world)"})
    out: str = field(default="runs/benchmarks/student_table", metadata={"help": "runs and table.json"})

    def __post_init__(self):
        check_at_least(self, 0, "seed")
        check_at_least(self, 1, "clip_steps")


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(StudentTableConfig, argv)
    demo, out = Path(args.demo), Path(args.out)
    source = demo / "configs" / "student_risd.yaml"
    for path in (source, demo / "student_risd" / "metrics.json", demo / "teacher_gdso" / "metrics.json"):
        if not path.exists():
            raise SystemExit(f"error: `demo` must be a finished demo run; {path} is missing")
    risd = load_config(RISDConfig, source)
    started = time.perf_counter()
    results = {}
    for name, (_, changes) in VARIANTS.items():
        output_dir = str(out / name / f"seed{args.seed}")
        if changes is None:
            shared = {key: getattr(risd, key) for key in CLIP_SHARED}
            config = load_config(RISDClipConfig, CONFIGS / "student_risd_clip_tiny.yaml",
                                 dict(shared, seed=args.seed, steps=args.clip_steps, output_dir=output_dir))
            metrics_path = Path(output_dir) / "metrics.json"
            metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else train_clip(config)
        else:
            config = load_config(RISDConfig, source, dict(changes, seed=args.seed, output_dir=output_dir,
                                                          log_with=None))
            metrics = run(RISDTrainer, config)
        results[name] = {"accuracy": metrics["preference_accuracy"], "per_dimension": metrics["per_dimension"],
                         "steps": metrics["steps"]}
    teacher = json.loads((demo / "teacher_gdso" / "metrics.json").read_text())["preference_accuracy"]
    reference = json.loads((demo / "student_risd" / "metrics.json").read_text())
    lines = [f"Demo run `{demo}`: its GDSO teacher {teacher:.3f}; the teacher cache holds M = {risd.num_samples} "
             f"chains per input", "",
             "| student | steps | held-out preference accuracy | vs teacher | vs the run's RISD student |",
             "|---|---:|---:|---:|---:|",
             f"| the run's RISD student (M = {risd.num_samples}, gap term) | {reference['steps']} | "
             f"{reference['preference_accuracy']:.3f} | {100 * (reference['preference_accuracy'] - teacher):+.1f} pts "
             "| – |"]
    for name, (label, _) in VARIANTS.items():
        value = results[name]["accuracy"]
        lines.append(f"| {label} | {results[name]['steps']} | {value:.3f} | {100 * (value - teacher):+.1f} pts | "
                     f"{100 * (value - reference['preference_accuracy']):+.1f} pts |")
    print("\n".join(lines))
    print(f"\nin {time.perf_counter() - started:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    table = {"args": asdict(args), "teacher": teacher, "risd": reference["preference_accuracy"],
             "num_samples": risd.num_samples, "results": results}
    (out / "table.json").write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
