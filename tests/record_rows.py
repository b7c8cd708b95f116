"""Run a reward-training entry point with every process recording the rows each training step encodes.

    accelerate launch tests/record_rows.py OUT_DIR training.sft --config ...

writes `OUT_DIR/rows.<rank>.json`: `{step: [[image, prompt, dimension], ...]}` — the inputs that process encoded for
the step's forward passes (rollouts included), whatever the trainer. The sharding tests compare these across runs.
"""

import importlib
import json
import os
import sys
from pathlib import Path

from training.gdso import GDSOTrainer
from training.opd import OPDTrainer
from training.risd import RISDTrainer
from training.scalar_baselines import BradleyTerryTrainer, RewardDanceTrainer
from training.sequences import RowEncoder
from training.sft import SFTTrainer

TRAINERS = (SFTTrainer, GDSOTrainer, BradleyTerryTrainer, RewardDanceTrainer, RISDTrainer, OPDTrainer)


def main() -> None:
    out, module, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    recorded: dict[int, list] = {}
    current: list[int] = []
    encode = RowEncoder.__call__

    def recording_encode(self, rows, *args, **kwargs):
        if current:
            recorded.setdefault(current[-1], []).extend([row.image, row.prompt, row.dimension] for row in rows)
        return encode(self, rows, *args, **kwargs)

    def wrap(trainer_class):
        step_function = trainer_class.training_step

        def recording_step(self, step):
            current.append(step)
            try:
                return step_function(self, step)
            finally:
                current.pop()

        trainer_class.training_step = recording_step

    RowEncoder.__call__ = recording_encode
    for trainer_class in TRAINERS:
        wrap(trainer_class)
    importlib.import_module(module).main(argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rows.{os.environ.get('RANK', '0')}.json").write_text(json.dumps(recorded))


if __name__ == "__main__":
    main()
