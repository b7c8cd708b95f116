"""The synthetic oracle world: prompts, a renderer, a hidden oracle, an annotator panel, rationales.

It lets the paper's whole loop — teacher, student, reward-tuned generator — run and be measured on a CPU, with ground
truth for any image the world renders (and, through `estimate_scene`, for generated images). It is described in
docs/design.md, 'The synthetic world'.
"""

from .annotators import AnnotatorPanel, PanelConfig
from .estimator import estimate_scene, judge, judge_batch, parse_prompt
from .grammar import PromptSpec, all_prompt_specs, sample_prompt_spec
from .language import describe, rationale
from .oracle import DIMENSIONS, oracle_scores
from .render import render
from .scene import DeviationRates, Scene, SceneObject, perfect_scene, sample_scene
from .world import SyntheticGroup, SyntheticItem, SyntheticWorld, WorldConfig

__all__ = [
    "DIMENSIONS",
    "AnnotatorPanel",
    "DeviationRates",
    "PanelConfig",
    "PromptSpec",
    "Scene",
    "SceneObject",
    "SyntheticGroup",
    "SyntheticItem",
    "SyntheticWorld",
    "WorldConfig",
    "all_prompt_specs",
    "describe",
    "estimate_scene",
    "judge",
    "judge_batch",
    "oracle_scores",
    "parse_prompt",
    "perfect_scene",
    "rationale",
    "render",
    "sample_prompt_spec",
    "sample_scene",
]
