"""The model card (`README.md`) written next to every trained reward checkpoint: what it is, the rubric, the data,
the held-out metrics, how to use it and its limits — generated from the run, never hand-edited."""

from __future__ import annotations

from pathlib import Path

ROLES = {
    "sft": ("teacher (cold start)", "reason first, then read the score distribution"),
    "gdso": ("teacher (GDSO)", "reason first, then read the score distribution"),
    "grpo": ("teacher baseline (GRPO)", "reason first, then read the score distribution"),
    "risd": ("student (RISD)", "one forward pass, no reasoning: the differentiable reward"),
    "opd": ("student baseline (OPD)", "one forward pass, no reasoning"),
    "bradley_terry": ("scalar baseline (Bradley-Terry)", "the scalar value head in value_head.safetensors"),
    "rewarddance": ("scalar baseline (RewardDance-style P(yes))", "P(' yes') at the answer slot"),
}


def model_card(trainer_name: str, rubric, dimensions, base: str, data_description: str, metrics: dict,
               teacher: str | None = None) -> str:
    role, reading = ROLES.get(trainer_name, (trainer_name, ""))
    per_dimension = metrics.get("per_dimension", {})
    rows = "\n".join(f"| {d} | {per_dimension[d]:.3f} |" for d in dimensions if d in per_dimension)
    teacher_line = f"- teacher distilled: `{teacher}`\n" if teacher else ""
    student = trainer_name in ("risd", "opd")
    usage = ("loss_fn = ZRewardLoss.from_pretrained(path)          # differentiable: images in [-1, 1], prompts\n"
             "loss = loss_fn(images, prompts)                      # minimise it to raise the reward"
             if student else
             "scorer = ZRewardLoss.from_pretrained(path).scorer\n"
             "chains = scorer.generate_reasoning(pil_images, prompts, num_samples=8)\n"
             "out = scorer.score_pil(pil_images, prompts, reasoning=[[c[0] for c in per_dim] for per_dim in chains])")
    levels = rubric.levels
    return f"""---
library_name: zreward-diffusers
tags: [reward-model, z-reward, score-distribution, {trainer_name}]
---

# Z-Reward {role}

A reward model that outputs, for each rubric dimension, a probability distribution over {len(levels)} score levels
({levels[0]:g} to {levels[-1]:g}), as in Z-Reward ("Beyond Scalar Rewards by Internalizing Reasoning into Score
Distributions", arXiv 2606.09076). Read it as: {reading}.

- trained by: `training.{trainer_name}` ({metrics.get("steps", "?")} steps, {metrics.get("train_seconds", "?")} s)
- starting backbone: `{base}`
{teacher_line}- rubric dimensions: {", ".join(dimensions)}
- training data: {data_description}

## Held-out metrics

Pairwise preference accuracy against the annotator panel's pair preferences within prompt groups (ties left out),
mean over dimensions: **{metrics.get("preference_accuracy", float("nan")):.3f}**.

| dimension | preference accuracy |
|---|---:|
{rows}

## Use

```python
from zreward_diffusers import ZRewardLoss
{usage}
```

## Intended use and limits

For ranking, filtering and fine-tuning image generators against the rubric above. The scores are only as good as the
data the model was trained on: a model trained on the synthetic world judges the synthetic world's images (coloured
shapes on plain backgrounds) and nothing else. Used as a differentiable reward, any reward model can be exploited by
the generator it trains (reward hacking): keep a held-out judge, a regulariser and the uncertainty-averse κ > 0.
"""


def write_model_card(directory: Path, text: str) -> None:
    path = Path(directory) / "README.md"
    path.with_suffix(".tmp").write_text(text)
    path.with_suffix(".tmp").replace(path)
