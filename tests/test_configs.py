"""Every shipped YAML config loads into its entry point's config class (no unknown or mistyped key)."""

from pathlib import Path

import pytest

from pipelines.reward_finetune import RewardFinetuneConfig
from training.config import load_config
from training.gdso import GDSOConfig
from training.opd import OPDConfig
from training.pretrain_base import PretrainBaseConfig
from training.risd import RISDConfig
from training.risd_clip import RISDClipConfig
from training.sft import SFTConfig

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"pretrain_base": PretrainBaseConfig, "teacher_sft": SFTConfig, "teacher_gdso": GDSOConfig,
           "teacher_grpo": GDSOConfig, "student_risd_clip": RISDClipConfig, "student_risd": RISDConfig,
           "student_opd": OPDConfig,
           "draft": RewardFinetuneConfig}
CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))
CONFIGS += sorted((REPO / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    kind = next(prefix for prefix in sorted(CLASSES, key=len, reverse=True) if path.name.startswith(prefix))
    config = load_config(CLASSES[kind], path)
    assert config.output_dir


def test_every_config_is_checked():
    assert len(CONFIGS) >= 10
