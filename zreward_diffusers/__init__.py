"""zreward-diffusers: Z-Reward score-distribution rewards that diffusers training scripts can backpropagate through.

>>> from zreward_diffusers import ZRewardLoss, ZRewardScorer, Rubric, ScoreOutput
"""

__version__ = "0.1.0"

from .grad_flow import check_grad_flow
from .loss import ZRewardLoss
from .rubric import Rubric, RubricDimension
from .scorer import ScoreOutput, ZRewardScorer

__all__ = [
    "Rubric",
    "RubricDimension",
    "ScoreOutput",
    "ZRewardLoss",
    "ZRewardScorer",
    "__version__",
    "check_grad_flow",
]
