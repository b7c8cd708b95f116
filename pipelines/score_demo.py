"""The demo available today: create a tiny Z-Reward student checkpoint, score a few images, print distributions.

    python -m pipelines.score_demo --out runs/demo

The images are drawn procedurally (coloured shapes on a background) and scored both through the differentiable
tensor path (`ZRewardLoss.score` on a float batch in [-1, 1], as a diffusers VAE returns it) and through the
official processor (PIL). The checkpoint is randomly initialised, so the distributions are near uniform; the
point is the plumbing: distributions per dimension, their expectation and spread, and a gradient that reaches
the pixels. Later stages of the demo replace it with a trained student.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.testing import create_tiny_checkpoint

SCENES = [
    ("two red circles on a blue background", "blue", [("circle", "red"), ("circle", "red")]),
    ("a yellow square on a green background", "green", [("square", "yellow")]),
    ("three white triangles on a black background", "black", [("triangle", "white")] * 3),
]


def draw_scene(background: str, shapes: list[tuple[str, str]], size: int = 56) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    step = size // (len(shapes) + 1)
    for i, (shape, colour) in enumerate(shapes):
        cx, cy, r = step * (i + 1), size // 2, size // 8
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def _bar(p: float, width: int = 20) -> str:
    return "#" * round(p * width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--family", default="qwen2_vl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    checkpoint = out / f"tiny-student-{args.family}"
    create_tiny_checkpoint(checkpoint, family=args.family, seed=0)
    loss_fn = ZRewardLoss.from_pretrained(checkpoint)

    prompts = [scene[0] for scene in SCENES]
    pil_images = [draw_scene(background, shapes) for _, background, shapes in SCENES]
    images = torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1) for im in pil_images]).float()
    images = (images / 127.5 - 1.0).requires_grad_(True)  # diffusers VAE output range

    tensor_scores = loss_fn.score(images, prompts)
    pil_scores = loss_fn.score(pil_images, prompts)
    loss = loss_fn(images, prompts)
    loss.backward()

    write = sys.stdout.write
    write(f"checkpoint: {checkpoint} (random tiny {args.family}; distributions are near uniform)\n")
    for b, prompt in enumerate(prompts):
        write(f"\n{prompt!r}   reward {float(tensor_scores.reward[b]):.3f}\n")
        for d, dim in enumerate(tensor_scores.dimensions):
            probs = tensor_scores.probs[b, d].detach()
            write(
                f"  {dim:<22} E={float(tensor_scores.expected[b, d]):.3f}  std={float(tensor_scores.std[b, d]):.3f}"
                f"  (PIL path E={float(pil_scores.expected[b, d]):.3f})\n"
            )
            for level, p in zip(tensor_scores.levels, probs.tolist(), strict=True):
                write(f"      {level:.1f} {p:6.3f} {_bar(p)}\n")
    write(f"\nloss {float(loss):.4f}; gradient norm at the pixels {float(images.grad.norm()):.3e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
