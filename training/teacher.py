"""One command for the teacher: cold-start SFT, then GDSO from its checkpoint (docs/method.md, 'Teacher').

Stages are cached and resumable: a stage whose `metrics.json` exists is skipped, an interrupted one continues from
its last training state. `<output_dir>/sft/model` and `<output_dir>/gdso/model` are Z-Reward checkpoints
(`ZRewardLoss.from_pretrained`; read them in teacher mode, with reasoning).

    python -m training.teacher                                   # the tiny teacher on the synthetic world
    python -m training.teacher --seed 1 --output_dir runs/teacher_seed1
    accelerate launch -m training.teacher ...                    # same code on N processes
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .config import load_config
from .gdso import GDSOConfig, GDSOTrainer
from .sft import SFTConfig, SFTTrainer
from .trainer import run_cached

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).parent / "configs"


def run_stage(trainer_class, config_class, config_path, overrides: dict) -> dict:
    """Run one stage unless its metrics exist; returns its metrics."""
    return run_cached(trainer_class, load_config(config_class, config_path, overrides))


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_argument_group("Stages")
    stages.add_argument("--sft_config", default=str(CONFIGS / "teacher_sft_tiny.yaml"),
                        help="config of the cold-start SFT stage (default: %(default)s)")
    stages.add_argument("--gdso_config", default=str(CONFIGS / "teacher_gdso_tiny.yaml"),
                        help="config of the GDSO stage; its base is SFT's exported model (default: %(default)s)")
    run = parser.add_argument_group("Run")
    run.add_argument("--base", default=None, help="backbone to start from (default: the SFT config's)")
    run.add_argument("--output_dir", default="runs/teacher",
                     help="<output_dir>/sft and <output_dir>/gdso (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0, help="seed of both stages (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    sft_overrides = {"output_dir": str(out / "sft"), "seed": args.seed}
    if args.base:
        sft_overrides["base"] = args.base
    sft = run_stage(SFTTrainer, SFTConfig, args.sft_config, sft_overrides)
    gdso = run_stage(GDSOTrainer, GDSOConfig, args.gdso_config,
                     {"base": str(out / "sft" / "model"), "output_dir": str(out / "gdso"), "seed": args.seed})
    summary = {"sft": {k: sft[k] for k in ("preference_accuracy", "per_dimension", "train_seconds")},
               "gdso": {k: gdso[k] for k in ("preference_accuracy", "per_dimension", "train_seconds")}}
    logger.info("teacher: SFT %.4f -> GDSO %.4f held-out preference accuracy (%.0f s + %.0f s)",
                sft["preference_accuracy"], gdso["preference_accuracy"], sft["train_seconds"], gdso["train_seconds"])
    return summary


if __name__ == "__main__":
    main()
