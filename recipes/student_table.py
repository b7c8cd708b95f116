"""The student table in miniature: held-out preference accuracy of the RISD student against its teacher and the OPD
baseline (same student backbone, data and budget), over seeds, plus the RISD ablations (M ∈ {1, 4, 8}; without the
gap term). The teacher cache is built once (M = 8) and shared: M = 1 and M = 4 average its first chains.

    python -m recipes.student_table --config recipes/profiles/student_table.yaml   # the measured table
    python -m recipes.student_table --teacher runs/my_teacher/gdso/model --seeds [0]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from training.config import check_at_least, load_config, parse_args
from training.opd import OPDConfig, OPDTrainer
from training.risd import RISDConfig, RISDTrainer
from training.trainer import run_cached as run

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
VARIANTS = {
    "risd": ("RISD (M = 8, gap term)", {}),
    "opd": ("OPD baseline", None),
    "risd_m1": ("RISD, M = 1", {"target_samples": 1}),
    "risd_m4": ("RISD, M = 4", {"target_samples": 4}),
    "risd_no_gap": ("RISD without the gap term", {"gap_weight": 0.0}),
}


@dataclass
class StudentTableConfig:
    """The student table: RISD against its teacher and OPD over seeds, and RISD's ablations."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Measurement": ("teacher", "seeds", "ablation_seeds", "steps"),
        "Output": ("out",),
    }

    teacher: str = field(default="runs/teacher/gdso/model",
                         metadata={"help": "the GDSO teacher (`python -m recipes.teacher`); its metrics.json beside"})
    seeds: list = field(default_factory=lambda: [0, 1, 2], metadata={"help": "seeds of RISD and OPD"})
    ablation_seeds: list = field(default_factory=lambda: [0], metadata={"help": "seeds of the ablations"})
    steps: int = field(default=400, metadata={"help": "training steps of every student"})
    out: str = field(default="runs/benchmarks/student_table", metadata={"help": "runs and table.json"})

    def __post_init__(self):
        check_at_least(self, 1, "steps")
        for name in ("seeds", "ablation_seeds"):
            seeds = getattr(self, name)
            if not seeds or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
                raise ValueError(f"`{name}` must be a non-empty list of integers, got {seeds!r}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(StudentTableConfig, argv)
    started = time.perf_counter()
    teacher_metrics = json.loads((Path(args.teacher).parent / "metrics.json").read_text())
    results = {name: [] for name in VARIANTS}
    for name, (_, changes) in VARIANTS.items():
        seeds = args.seeds if name in ("risd", "opd") else args.ablation_seeds
        for seed in seeds:
            overrides = {"teacher": args.teacher, "seed": seed, "steps": args.steps, "log_with": None,
                         "output_dir": f"{args.out}/{name}/seed{seed}"}
            if changes is None:
                metrics = run(OPDTrainer, load_config(OPDConfig, CONFIGS / "student_opd_tiny.yaml", overrides))
            else:  # every student seed distils the same teacher cache (its own `cache_seed`)
                config = load_config(RISDConfig, CONFIGS / "student_risd_tiny.yaml", dict(overrides, **changes))
                metrics = run(RISDTrainer, config)
            results[name].append(metrics["preference_accuracy"])
    teacher = teacher_metrics["preference_accuracy"]
    lines = [f"Teacher (GDSO, `{args.teacher}`): {teacher:.3f}", "",
             "| model | held-out preference accuracy (mean ± std) | per seed | vs teacher |", "|---|---:|---|---:|"]
    for name, (label, _) in VARIANTS.items():
        values = np.array(results[name])
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        lines.append(f"| {label} | {values.mean():.3f} ± {std:.3f} | {', '.join(f'{v:.3f}' for v in values)} | "
                     f"{100 * (values.mean() - teacher):+.1f} pts |")
    print("\n".join(lines))
    print(f"\nin {time.perf_counter() - started:.0f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.json").write_text(json.dumps({"args": asdict(args), "teacher": teacher,
                                                           "accuracy": results}, indent=2))


if __name__ == "__main__":
    main()
