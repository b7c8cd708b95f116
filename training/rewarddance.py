"""The RewardDance-style P("yes") reward baseline (see `training.scalar_baselines`).

    python -m training.rewarddance --config training/configs/teacher_rewarddance_tiny.yaml
"""

from .scalar_baselines import main

if __name__ == "__main__":
    main("rewarddance")
