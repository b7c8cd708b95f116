"""Best-of-N reranking by ZReward and the Good-Same-Bad (GSB) comparison of two generators.

- `best_of_n`: sample N images per prompt and keep the one with the highest reward — the expected score, or, with
  `kappa > 0`, the uncertainty-aware μ − κσ (prefer images the reward is sure about).
- `gsb_compare`: the same prompts and seeds through two generators, each pair judged by any judge — the synthetic
  world's pixel oracle (`"oracle"`), a Z-Reward model (teacher or student: higher μ wins), or a callable returning
  +1 / 0 / −1 — summarised as GSB net improvement (G − B)/(G + S + B) with a bootstrap CI over prompts (eq. 16 in
  docs/method.md, 'Evaluation').

    python -m pipelines.judging --a world/generator --b world/generator --lora_b runs/draft/best_lora
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zreward_diffusers.metrics import gsb_with_ci


def generate(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int = 20, height: int = 32,
             width: int = 32, guidance_scale: float = 1.0, batch_size: int = 16, **kwargs) -> torch.Tensor:
    """Images in [−1, 1] `(N, 3, H, W)`, prompt i with seed i (the pipeline's own sampling), `batch_size` prompts
    per pipeline call: each image's starting noise comes from its own seeded generator, so an image does not depend
    on the batch it was drawn in (up to float rounding)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"`seeds` must have one seed per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
        out = pipe(prompts[chunk], num_inference_steps=num_inference_steps, height=height, width=width,
                   guidance_scale=guidance_scale, generator=generators, output_type="pt", **kwargs)
        images.append(out.images * 2 - 1)
    return torch.cat(images)


@torch.no_grad()
def reward_scores(reward, images: torch.Tensor, prompts: list[str], kappa: float = 0.0) -> np.ndarray:
    """Weighted mean over the reward's dimensions of μ − κσ, per image (on the rubric's level scale)."""
    out = reward.score(images.to(next(reward.parameters()).device), prompts)
    index = torch.tensor([reward.rubric.dimension_index(d) for d in out.dimensions], device=out.expected.device)
    weights = reward.scorer.dimension_weights[index]
    weights = weights / weights.sum()
    return ((out.expected - kappa * out.std) * weights).sum(-1).cpu().numpy()


def best_of_n(pipe, reward, prompts: list[str], n: int = 4, seed: int = 0, kappa: float = 0.0,
              **generate_kwargs) -> tuple[torch.Tensor, np.ndarray]:
    """The best of `n` samples per prompt by reward: `(images (P, 3, H, W) in [−1, 1], chosen scores (P,))`."""
    if n < 1:
        raise ValueError(f"`n` must be at least 1, got {n}")
    chosen, scores = [], []
    for p, prompt in enumerate(prompts):
        seeds = [seed * 1_000_003 + p * n + i for i in range(n)]
        images = generate(pipe, [prompt] * n, seeds, **generate_kwargs)
        values = reward_scores(reward, images, [prompt] * n, kappa)
        best = int(np.argmax(values))
        chosen.append(images[best])
        scores.append(values[best])
    return torch.stack(chosen), np.array(scores)


def score_judge(score_fn: Callable[[torch.Tensor, list[str]], np.ndarray], tie: float = 0.0):
    """A judge from a per-image scorer: +1 if a scores above b by more than `tie`, −1 below, else 0."""

    def judge(images_a, images_b, prompts):
        a, b = score_fn(images_a, prompts), score_fn(images_b, prompts)
        return np.where(a - b > tie, 1, np.where(b - a > tie, -1, 0))

    return judge


def oracle_judge(tie: float = 0.05):
    """The synthetic world's pixel oracle (mean over its rubric dimensions), ties within `tie` points."""
    from .reward_finetune import judge_images

    return score_judge(lambda images, prompts: judge_images(images, prompts), tie)


def gsb_compare(images_a: torch.Tensor, images_b: torch.Tensor, prompts: list[str], judge, groups=None,
                num_resamples: int = 1000, seed: int = 0) -> dict:
    """GSB of generator b (tuned) against a (base) on paired images; `judge` is "oracle", a reward or a callable."""
    if judge == "oracle":
        judge = oracle_judge()
    elif hasattr(judge, "score") and hasattr(judge, "rubric"):
        reward = judge
        judge = score_judge(lambda images, p: reward_scores(reward, images, p))
    judgements = np.asarray(judge(images_b, images_a, prompts))
    return dict(gsb_with_ci(judgements, groups=groups if groups is not None else prompts,
                            num_resamples=num_resamples, seed=seed), judgements=judgements.tolist())


ATTRIBUTES = ("count", "colour", "shape", "background")


@torch.no_grad()
def oracle_report(images: torch.Tensor, prompts: list[str]) -> dict:
    """What the world's oracle reads in generated images `(N, 3, H, W)` in [−1, 1]: its mean score per rubric
    dimension and overall, and how often each attribute the prompt asks for (count, colour, shape, background) is
    what the estimated scene shows (`synthetic.estimator.estimate_scene` against `parse_prompt`), with `all`: every
    attribute at once."""
    from zreward_diffusers.synthetic.estimator import estimate_scene, judge_batch, parse_prompt

    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3) uint8
    scores = judge_batch(arrays, prompts)
    hits = {attribute: [] for attribute in ATTRIBUTES}
    for array, prompt in zip(arrays, prompts, strict=True):
        scene, asked = estimate_scene(array), parse_prompt(prompt)
        for attribute in ATTRIBUTES:
            hits[attribute].append(getattr(scene, attribute) == getattr(asked, attribute))
    hit_rates = {attribute: float(np.mean(values)) for attribute, values in hits.items()}
    hit_rates["all"] = float(np.mean(np.all([hits[a] for a in ATTRIBUTES], axis=0)))
    return {"images": len(prompts), "oracle": {d: float(np.mean(v)) for d, v in scores.items()},
            "oracle_overall": float(np.mean(np.stack(list(scores.values())))), "hit_rates": hit_rates}


def before_after_grid(images_a: torch.Tensor, images_b: torch.Tensor, prompts: list[str], judgements, path,
                      count: int = 8, scale: int = 4, title: str | None = None) -> Path:
    """A PNG: each column one prompt and seed, base on top, tuned below, the judge's verdict under it."""
    from PIL import Image, ImageDraw

    count = min(count, len(prompts))
    size = images_a.shape[-1] * scale
    label_height, caption, top = 14, 54, 22
    title = title or ("Base (top) vs reward-tuned (bottom) generator: same held-out prompt and seed per column; "
                      "the judge's verdict under each")
    sheet = Image.new("RGB", (count * (size + 6) + 70, top + 2 * size + caption + label_height + 16), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 5), title, fill="black")
    draw.text((4, top + 8 + size // 2), "base", fill="black")
    draw.text((4, top + 12 + size + size // 2), "tuned", fill="black")
    verdict = {1: "tuned better", 0: "same", -1: "base better"}
    for i in range(count):
        x = 70 + i * (size + 6)
        for row, images in enumerate((images_a, images_b)):
            pixels = ((images[i].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            sheet.paste(Image.fromarray(pixels).resize((size, size), Image.NEAREST), (x, top + 6 + row * (size + 4)))
        words = prompts[i].split()
        lines = [" ".join(words[j:j + 3]) for j in range(0, len(words), 3)][:4]
        draw.multiline_text((x, top + 2 * size + 12), "\n".join(lines), fill="black", spacing=1)
        draw.text((x, top + 2 * size + 12 + caption), verdict[int(judgements[i])], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Path(path)


def main(argv: list[str] | None = None) -> dict:
    from diffusers import DiffusionPipeline

    from .reward_finetune import world_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    compared = parser.add_argument_group("Compared generators")
    compared.add_argument("--a", required=True, help="base pipeline directory")
    compared.add_argument("--b", required=True, help="compared pipeline directory")
    compared.add_argument("--lora_a", default=None, help="LoRA directory loaded into a (default: none)")
    compared.add_argument("--lora_b", default=None, help="LoRA directory loaded into b (default: none)")
    judging = parser.add_argument_group("Judging")
    judging.add_argument("--judge", default="oracle", help="oracle or a Z-Reward checkpoint")
    judging.add_argument("--num_prompts", type=int, default=64, help="held-out prompts (default: %(default)s)")
    judging.add_argument("--seeds_per_prompt", type=int, default=2, help="images per prompt (default: %(default)s)")
    judging.add_argument("--skip_prompts", type=int, default=0,
                         help="leave out the first held-out prompts (e.g. the eval_prompts that early stopping saw)")
    judging.add_argument("--prompt_seed", type=int, default=0,
                         help="seed of the prompt split: the tuning run's `seed`, so that the held-out prompts are "
                              "the ones it never trained on (default: %(default)s)")
    judging.add_argument("--num_inference_steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    judging.add_argument("--size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    judging.add_argument("--guidance_scale", type=float, default=1.0,
                         help="classifier-free guidance of both generators (default: %(default)s, none)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default=None, help="write the result JSON here")
    output.add_argument("--grid", default=None, help="write a before/after PNG of the first prompts here")
    args = parser.parse_args(argv)
    pipes = []
    for path, lora in ((args.a, args.lora_a), (args.b, args.lora_b)):
        pipe = DiffusionPipeline.from_pretrained(path, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        if lora:
            pipe.load_lora_weights(lora)
        pipes.append(pipe)
    if args.skip_prompts < 0:
        raise SystemExit(f"--skip_prompts must be >= 0, got {args.skip_prompts}")
    _, held_out = world_prompts(512, args.skip_prompts + args.num_prompts, seed=args.prompt_seed)
    held_out = held_out[args.skip_prompts:]
    prompts = [p for p in held_out for _ in range(args.seeds_per_prompt)]
    seeds = list(range(len(prompts)))
    kwargs = dict(num_inference_steps=args.num_inference_steps, height=args.size, width=args.size,
                  guidance_scale=args.guidance_scale)
    images_a, images_b = (generate(pipe, prompts, seeds, **kwargs) for pipe in pipes)
    judge = args.judge
    if judge != "oracle":
        from zreward_diffusers import ZRewardLoss

        judge = ZRewardLoss.from_pretrained(judge)
    result = dict(gsb_compare(images_a, images_b, prompts, judge), prompts=prompts, seeds=seeds)
    if args.grid:
        before_after_grid(images_a, images_b, prompts, result["judgements"], args.grid)
    shown = {k: v for k, v in result.items() if k not in ("judgements", "prompts", "seeds")}
    sys.stdout.write(json.dumps(shown, indent=2) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
