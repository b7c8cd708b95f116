"""Every `python -m` entry point answers `--help` with a description and its parameters grouped by concern."""

import importlib
import re

import pytest

from training.config import field_groups

# module → the headings its --help must show (a dataclass config: none may fall under "Other")
ENTRY_POINTS = {
    "training.sft": ("Model", "Data", "Optimisation", "Objective", "Checkpoints and logging"),
    "training.gdso": ("Rollouts", "Reward and advantage", "Policy gradient", "Direct terms"),
    "training.grpo": ("Rollouts", "Policy gradient"),
    "training.bradley_terry": ("Model", "Optimisation"),
    "training.rewarddance": ("Model", "Optimisation"),
    "training.risd": ("Teacher cache", "Objective"),
    "training.annotate": ("Model", "Data", "Generation", "Consistency filter"),
    "training.opd": ("Model", "Objective"),
    "training.risd_clip": ("Teacher cache", "Checkpoints"),
    "training.pretrain_base": ("Models", "Stage 0: the vision tower alone"),
    "recipes.teacher": ("Stages", "Run"),
    "training.make_synthetic": ("World", "Output"),
    "pipelines.reward_finetune": ("Generator", "Reward", "Method"),
    "pipelines.train_tiny_generator": ("Data", "Model", "Optimisation"),
    "pipelines.judging": ("Compared generators", "Judging", "Output"),
    "recipes.demo": ("Run", "Output"),
    "recipes.world_bases": ("Run", "Output"),
    "benchmarks.base_frontier": ("Input", "Output"),
    "benchmarks.base_models": ("Measurement", "Output"),
    "benchmarks.draft_memory": ("Measurement",),
    "benchmarks.loss_overhead": ("Measurement", "Output"),
    "benchmarks.oracle_judge": ("Measurement", "Output"),
    "benchmarks.teacher_chains": ("Data", "Output"),
    "benchmarks.teacher_ceiling": ("Model", "Data", "Output"),
    "benchmarks.scoring_throughput": ("Models", "Measurement"),
    "recipes.student_table": ("Measurement", "Output"),
    "benchmarks.synthetic_world": ("Measurement", "Output"),
    "recipes.demo_tables": ("Input", "Output"),
    "benchmarks.gdso_budget": ("Input", "Measurement", "Output"),
    "benchmarks.vision_stage_probe": ("Measurement", "Output"),
}


def help_text(module: str, capsys) -> str:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_describes_and_groups(module, capsys):
    text = help_text(module, capsys)
    usage, _, rest = text.partition("\n\n")
    description = rest.split("\n\n")[0].strip()
    assert usage.startswith("usage:") and len(description) > 20 and not description.startswith(("options", "usage"))
    assert "(" not in description.split()[0], "a dataclass signature instead of a description"
    headings = re.findall(r"^(\S[^\n]*):$", text, flags=re.M)
    for heading in ENTRY_POINTS[module]:
        assert heading in headings, (heading, headings)
    assert "Other" not in headings


def test_field_groups_refuse_a_field_the_config_lacks():
    from dataclasses import dataclass, field
    from typing import ClassVar

    @dataclass
    class Example:
        help_groups: ClassVar[dict] = {"Optimisation": ("lr", "momentum")}
        lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
        seed: int = 0

    with pytest.raises(ValueError, match=r"\['momentum'\]"):
        field_groups(Example)
    Example.help_groups = {"Optimisation": ("lr",)}
    assert field_groups(Example) == {"Optimisation": ["lr"], "Other": ["seed"]}


@pytest.mark.parametrize(("command", "headings"), [("create-tiny", ("Model", "Output")),
                                                   ("score", ("Model", "Input")),
                                                   ("eval", ("Model", "Input", "Output"))])
def test_cli_commands_describe_and_group(command, headings, capsys):
    from zreward_diffusers.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert len(text.split("\n\n")[1].strip()) > 20  # the description
    found = re.findall(r"^(\S[^\n]*):$", text, flags=re.M)
    assert all(heading in found for heading in headings), found
