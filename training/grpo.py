"""The GRPO baseline of the paper's table: the GDSO loop with the score token *sampled* and rewarded by
1[|s − y| ≤ 0.5] + a format reward, policy gradient only (see `training.gdso`).

    python -m training.grpo --config training/configs/teacher_grpo_tiny.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gdso import GDSOConfig
from .gdso import main as gdso_main


@dataclass
class GRPOConfig(GDSOConfig):
    """The GRPO baseline: GDSO's loop with the sampled score token's reward and no direct terms.

    `python -m training.grpo --config training/configs/teacher_grpo_tiny.yaml`
    """

    objective: str = field(default="grpo", metadata={"help": "grpo (this baseline) or gdso"})
    output_dir: str = field(default="runs/teacher_grpo", metadata={"help": "checkpoints, final model, metrics"})


def main(argv: list[str] | None = None) -> dict:
    return gdso_main(argv, GRPOConfig)


if __name__ == "__main__":
    main()
