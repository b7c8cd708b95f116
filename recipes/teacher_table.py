"""The paper's teacher table in miniature: held-out preference accuracy of SFT, GRPO, scalar Bradley-Terry,
RewardDance-style P("yes") and GDSO on the same backbone (the world's pretrained tiny teacher), data and budget.

Budget, in optimizer steps of the same batch size: every method gets `sft_steps + rl_steps`. GDSO and GRPO spend
`sft_steps` on the shared cold start (SFT) and `rl_steps` on their own objective; "SFT" is the cold start trained on
for `rl_steps` more (the same run resumed, so it is the same model the RL methods start from); BT and RewardDance train
for `sft_steps + rl_steps` steps from the base. Every run's stage is cached (`<out>/seed<k>/<method>/metrics.json`).

    python -m recipes.teacher_table --config recipes/profiles/teacher_table.yaml   # the measured table
    python -m recipes.teacher_table --seeds [0] --rl_steps 50 --out runs/teacher_table_short
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from training.config import check_at_least, load_config, parse_args
from training.gdso import GDSOConfig, GDSOTrainer
from training.scalar_baselines import BradleyTerryTrainer, RewardDanceTrainer, ScalarConfig
from training.sft import SFTConfig, SFTTrainer
from training.trainer import run_cached as run

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
METHODS = ("sft", "grpo", "bradley_terry", "rewarddance", "gdso")
LABELS = {"sft": "SFT (cold start only)", "grpo": "GRPO (sampled score token)",
          "bradley_terry": "scalar Bradley-Terry", "rewarddance": "RewardDance-style P(yes)", "gdso": "GDSO (ours)"}


@dataclass
class TeacherTableConfig:
    """The teacher table: every method's held-out preference accuracy at equal budget, over seeds."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Measurement": ("seeds", "sft_steps", "rl_steps", "train_groups", "eval_groups"),
        "Output": ("out",),
    }

    seeds: list = field(default_factory=lambda: [0, 1, 2], metadata={"help": "seeds, one full table each"})
    sft_steps: int = field(default=400, metadata={"help": "the cold start's steps (SFT before GDSO and GRPO)"})
    rl_steps: int = field(default=100, metadata={"help": "GDSO's and GRPO's steps after the cold start"})
    train_groups: int = field(default=2048, metadata={"help": "training prompt groups of every method"})
    eval_groups: int = field(default=64, metadata={"help": "held-out prompt groups"})
    out: str = field(default="runs/benchmarks/teacher_table", metadata={"help": "runs and table.json"})

    def __post_init__(self):
        check_at_least(self, 1, "sft_steps", "rl_steps", "train_groups", "eval_groups")
        if not self.seeds or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in self.seeds):
            raise ValueError(f"`seeds` must be a non-empty list of integers, got {self.seeds!r}")


def seed_runs(seed: int, args) -> dict[str, dict]:
    out = Path(args.out) / f"seed{seed}"
    common = {"seed": seed, "log_with": None, "eval_data.num_groups": args.eval_groups,
              "train_data.num_groups": args.train_groups}
    total = args.sft_steps + args.rl_steps
    sft_overrides = dict(common, lr_scheduler="constant_with_warmup", eval_every=0, save_every=args.sft_steps)
    cold = load_config(SFTConfig, CONFIGS / "teacher_sft_tiny.yaml",
                       dict(sft_overrides, output_dir=str(out / "cold_start"), steps=args.sft_steps))
    run(SFTTrainer, cold)
    # the SFT baseline is the cold start trained on: its training state, resumed for `rl_steps` more steps
    if not (out / "sft" / "checkpoints").exists() and not (out / "sft" / "metrics.json").exists():
        shutil.copytree(out / "cold_start" / "checkpoints", out / "sft" / "checkpoints")
    results = {"sft": run(SFTTrainer, load_config(SFTConfig, CONFIGS / "teacher_sft_tiny.yaml",
                                                  dict(sft_overrides, output_dir=str(out / "sft"), steps=total)))}
    for method in ("gdso", "grpo"):
        config = load_config(GDSOConfig, CONFIGS / "teacher_gdso_tiny.yaml",
                             dict(common, output_dir=str(out / method), base=str(out / "cold_start" / "model"),
                                  objective=method, steps=args.rl_steps, save_every=args.rl_steps))
        results[method] = run(GDSOTrainer, config)
    for method, trainer in (("bradley_terry", BradleyTerryTrainer), ("rewarddance", RewardDanceTrainer)):
        config = load_config(ScalarConfig, None, dict(common, output_dir=str(out / method), base=cold.base,
                                                      steps=total, lr=cold.lr, warmup_steps=cold.warmup_steps,
                                                      batch_size=cold.batch_size, save_every=total))
        results[method] = run(trainer, config)
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(TeacherTableConfig, argv)
    started = time.perf_counter()
    table = {method: [] for method in METHODS}
    for seed in args.seeds:
        for method, metrics in seed_runs(seed, args).items():
            table[method].append(metrics["preference_accuracy"])
    lines = ["| method | held-out preference accuracy (mean ± std over seeds) | per seed |", "|---|---:|---|"]
    for method in METHODS:
        values = np.array(table[method])
        lines.append(f"| {LABELS[method]} | {values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f} "
                     f"| {', '.join(f'{v:.3f}' for v in values)} |")
    print("\n".join(lines))
    print(f"\n{len(args.seeds)} seeds in {time.perf_counter() - started:.0f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.json").write_text(json.dumps({"args": asdict(args), "accuracy": table}, indent=2))


if __name__ == "__main__":
    main()
