"""Scoring throughput: the student (one forward pass, no reasoning) against the teacher (sample a reasoning chain per
dimension, then read), at equal backbone size (the teacher's backbone read both ways) and at the tiny teacher/student
sizes, in one run on one machine. Reports images per second (all rubric dimensions) and the ratios.

    python -m benchmarks.scoring_throughput --teacher runs/teacher/gdso/model --student runs/student_risd/model
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.synthetic import SyntheticWorld


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    models = parser.add_argument_group("Models")
    measured = parser.add_argument_group("Measurement")
    models.add_argument("--teacher", default="runs/teacher/gdso/model")
    models.add_argument("--student", default="runs/student_risd/model")
    models.add_argument("--clip_student", default="runs/student_risd_clip/model")
    measured.add_argument("--batch_size", type=int, default=16)
    measured.add_argument("--max_new_tokens", type=int, default=96)
    measured.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    items = SyntheticWorld(0).generate(args.batch_size)
    images = torch.stack([torch.from_numpy(item.image).permute(2, 0, 1) for item in items]).float() / 255
    prompts = [item.prompt for item in items]
    teacher = ZRewardLoss.from_pretrained(args.teacher).scorer
    student = ZRewardLoss.from_pretrained(args.student).scorer
    clip = ZRewardLoss.from_pretrained(args.clip_student).scorer if Path(args.clip_student).exists() else None

    def read(scorer):
        def run():
            with torch.no_grad():
                scorer(images, prompts)
        return run

    def reason_then_read(scorer):
        def run():
            with torch.no_grad():
                chains = scorer.generate_reasoning(images, prompts, num_samples=1,
                                                   max_new_tokens=args.max_new_tokens)
                scorer(images, prompts, reasoning=[[c[0] for c in per_dim] for per_dim in chains])
        return run

    rows = {
        "teacher: reason, then read": timed(reason_then_read(teacher), args.repeats),
        "teacher backbone read as a student (one forward)": timed(read(teacher), args.repeats),
        "student: one forward": timed(read(student), args.repeats),
    }
    if clip is not None:
        rows["CLIP-sized student: one forward"] = timed(read(clip), args.repeats)
    sizes = {"teacher": sum(p.numel() for p in teacher.model.parameters()),
             "student": sum(p.numel() for p in student.model.parameters()),
             "CLIP student": sum(p.numel() for p in clip.parameters()) if clip is not None else 0}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; batch "
          f"{args.batch_size} images x {len(teacher.rubric.dimension_names)} dimensions; teacher {sizes['teacher']:,} "
          f"params, student {sizes['student']:,} params, CLIP student {sizes['CLIP student']:,} params; "
          f"max_new_tokens {args.max_new_tokens}\n")
    print("| scoring | s / batch | images / s |\n|---|---:|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {args.batch_size / seconds:.1f} |")
    base = rows["teacher: reason, then read"]
    print(f"\nequal backbone: one forward is {base / rows['teacher backbone read as a student (one forward)']:.1f}x "
          f"faster than reason-then-read; tiny student vs tiny teacher: {base / rows['student: one forward']:.1f}x")


if __name__ == "__main__":
    main()
