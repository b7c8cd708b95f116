"""The scalar Bradley-Terry reward-model baseline (see `training.scalar_baselines`).

    python -m training.bradley_terry --steps 500 --output_dir runs/teacher_bradley_terry     # every field: --help
"""

from .scalar_baselines import main as scalar_main


def main(argv: list[str] | None = None) -> dict:
    return scalar_main("bradley_terry", argv)


if __name__ == "__main__":
    main()
