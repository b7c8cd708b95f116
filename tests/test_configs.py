"""Every shipped YAML config loads into its entry point's config class (no unknown or mistyped key)."""

from pathlib import Path

import pytest

from pipelines.reward_finetune import RewardFinetuneConfig
from pipelines.train_tiny_generator import GeneratorConfig
from training.config import load_config
from training.gdso import GDSOConfig
from training.opd import OPDConfig
from training.pretrain_base import PretrainBaseConfig
from training.risd import RISDConfig
from training.risd_clip import RISDClipConfig
from training.sft import SFTConfig
from training.vision_stage import VisionStageConfig

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"pretrain_base": PretrainBaseConfig, "teacher_sft": SFTConfig, "teacher_gdso": GDSOConfig,
           "teacher_grpo": GDSOConfig, "student_risd_clip": RISDClipConfig, "student_risd": RISDConfig,
           "student_opd": OPDConfig,
           "draft": RewardFinetuneConfig, "generator": GeneratorConfig}
CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))
CONFIGS += sorted((REPO / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    kind = next(prefix for prefix in sorted(CLASSES, key=len, reverse=True) if path.name.startswith(prefix))
    config = load_config(CLASSES[kind], path)
    assert config.output_dir


def test_every_config_is_checked():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize(("config_class", "field", "value", "message"), [
    (SFTConfig, "steps", 0, "`steps` must be an integer >= 1"),
    (SFTConfig, "micro_batch_size", 1.5, "`micro_batch_size` must be an integer >= 1"),
    (SFTConfig, "mixed_precision", "bf32", "`mixed_precision` must be one of"),
    (SFTConfig, "checkpoints_total_limit", 0, "`checkpoints_total_limit` must be an integer >= 1"),
    (GDSOConfig, "num_rollouts", 1, "`num_rollouts` must be an integer >= 2"),
    (GDSOConfig, "objective", "ppo", "`objective` must be one of"),
    (OPDConfig, "estimator", "mc", "`estimator` must be one of"),
    (RISDConfig, "temperature", 0.0, "`temperature` must be positive"),
    (RISDConfig, "target_samples", 9, r"`target_samples` must lie in \[1, num_samples=8\]"),
    (RISDClipConfig, "init", "ViT-B-32", "`init` must be tiny or"),
    (RISDClipConfig, "steps", -1, "`steps` must be an integer >= 1"),
    (RewardFinetuneConfig, "method", "ppo", "`method` must be one of"),
    (RewardFinetuneConfig, "batch_size", 0, "`batch_size` must be an integer >= 1"),
    (PretrainBaseConfig, "batch_size", 0, "`batch_size` must be an integer >= 1"),
    (GeneratorConfig, "tokenizer", "bpe", "`tokenizer` must be one of"),
    (GeneratorConfig, "noise_schedule", "cosine", "`noise_schedule` must be one of"),
    (GeneratorConfig, "unet_lr_schedule", "linear", "`unet_lr_schedule` must be one of"),
    (VisionStageConfig, "head", "max", "`vision.head` must be one of"),  # `PretrainBaseConfig.vision`
    (VisionStageConfig, "steps", -1, "`vision.steps` must be an integer >= 0"),
])
def test_bad_settings_are_refused_when_the_config_is_built(config_class, field, value, message):
    """Validation lives in each config's `__post_init__`: a bad value is refused before any work, by name, whether
    it comes from Python, a YAML file or the command line."""
    with pytest.raises(ValueError, match=message):
        config_class(**{field: value})
    with pytest.raises(ValueError, match=message):
        load_config(config_class, overrides={field: value})


def test_none_switches_the_tracker_off():
    assert SFTConfig(log_with="none").log_with is None and RewardFinetuneConfig(log_with="None").log_with is None


@pytest.mark.parametrize("name", ["demo", "demo_quick", "demo_full", "student_table"])
def test_recipe_profiles_load(name):
    """Every profile in recipes/profiles loads into its recipe's config class (the demo's stages are checked by
    their own config classes in tests/test_demo.py)."""
    from recipes.demo import DemoProfile
    from recipes.student_table import StudentTableConfig

    classes = {"student_table": StudentTableConfig}
    load_config(classes.get(name, DemoProfile), REPO / "recipes" / "profiles" / f"{name}.yaml")  # raises on a bad key
    assert sorted(path.stem for path in (REPO / "recipes" / "profiles").glob("*.yaml")) == sorted(
        ["demo", "demo_quick", "demo_full", "student_table"])
