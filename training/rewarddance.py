"""The RewardDance-style P("yes") reward baseline (see `training.scalar_baselines`).

    python -m training.rewarddance --steps 500 --output_dir runs/teacher_rewarddance     # every field: --help
"""

from .scalar_baselines import main as scalar_main


def main(argv: list[str] | None = None) -> dict:
    return scalar_main("rewarddance", argv)


if __name__ == "__main__":
    main()
