"""The scalar Bradley-Terry reward-model baseline (see `training.scalar_baselines`).

    python -m training.bradley_terry --config training/configs/teacher_bt_tiny.yaml
"""

from .scalar_baselines import main

if __name__ == "__main__":
    main("bradley_terry")
