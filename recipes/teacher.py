"""The teacher in one command: cold-start SFT, then GDSO from its exported model (docs/method.md, 'Teacher').

Stages are cached and resumable: a stage whose `metrics.json` exists is skipped, an interrupted one continues from
its last training state. `<output_dir>/sft/model` and `<output_dir>/gdso/model` are Z-Reward checkpoints
(`ZRewardLoss.from_pretrained`; read them in teacher mode, with reasoning).

    python -m recipes.teacher                                    # the tiny teacher on the synthetic world
    python -m recipes.teacher --seed 1 --output_dir runs/teacher_seed1
    python -m recipes.teacher --sft_config my_sft.yaml --gdso_config my_gdso.yaml --output_dir runs/my_teacher
    accelerate launch -m recipes.teacher ...                     # same code on N processes
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from training.config import load_config, parse_args
from training.gdso import GDSOConfig, GDSOTrainer
from training.sft import SFTConfig, SFTTrainer
from training.trainer import run_cached

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@dataclass
class TeacherRecipeConfig:
    """The teacher in one command: cold-start SFT, then GDSO from its exported model (stages cached, resumable)."""

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Stages": ("sft_config", "gdso_config"),
        "Run": ("base", "output_dir", "seed"),
    }

    sft_config: str = field(default=str(CONFIGS / "teacher_sft_tiny.yaml"),
                            metadata={"help": "config of the cold-start SFT stage"})
    gdso_config: str = field(default=str(CONFIGS / "teacher_gdso_tiny.yaml"),
                             metadata={"help": "config of the GDSO stage; its `base` becomes SFT's exported model"})
    base: str | None = field(default=None, metadata={"help": "backbone to start from (none: the SFT config's)"})
    output_dir: str = field(default="runs/teacher", metadata={"help": "<output_dir>/sft and <output_dir>/gdso"})
    seed: int = field(default=0, metadata={"help": "seed of both stages"})

    def __post_init__(self):
        for name in ("sft_config", "gdso_config"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"`{name}` must be a YAML config file, got {getattr(self, name)!r}")


def run(config: TeacherRecipeConfig) -> dict:
    """Run (or reuse) both stages; returns each stage's held-out accuracy and training time."""
    out = Path(config.output_dir)
    sft_overrides = {"output_dir": str(out / "sft"), "seed": config.seed}
    if config.base:
        sft_overrides["base"] = config.base
    sft = run_cached(SFTTrainer, load_config(SFTConfig, config.sft_config, sft_overrides))
    gdso_overrides = {"base": str(out / "sft" / "model"), "output_dir": str(out / "gdso"), "seed": config.seed}
    gdso = run_cached(GDSOTrainer, load_config(GDSOConfig, config.gdso_config, gdso_overrides))
    summary = {"sft": {k: sft[k] for k in ("preference_accuracy", "per_dimension", "train_seconds")},
               "gdso": {k: gdso[k] for k in ("preference_accuracy", "per_dimension", "train_seconds")}}
    logger.info("teacher: SFT %.4f -> GDSO %.4f held-out preference accuracy (%.0f s + %.0f s)",
                sft["preference_accuracy"], gdso["preference_accuracy"], sft["train_seconds"], gdso["train_seconds"])
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(parse_args(TeacherRecipeConfig, argv))


if __name__ == "__main__":
    main()
