"""Write a labelled dataset of the synthetic world (docs/design.md, 'The synthetic world') in our on-disk format.

    python -m training.make_synthetic --out runs/synthetic --n 20000 --seed 0
    python -m training.make_synthetic --out runs/sheet --n 16 \
        --contact-sheet benchmarks/figures/synthetic_contact_sheet.png

Prompt groups are generated in parallel worker processes (`--workers`); every group has its own random stream, so
the output is byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from zreward_diffusers.saving import is_ours
from zreward_diffusers.synthetic import WorldConfig
from zreward_diffusers.synthetic.contact_sheet import contact_sheet
from zreward_diffusers.synthetic.export import to_reward_dataset
from zreward_diffusers.synthetic.parallel import render_groups

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a labelled dataset of the synthetic world.")
    world = parser.add_argument_group("World")
    world.add_argument("--n", type=int, required=True, help="number of images (whole prompt groups)")
    world.add_argument("--seed", type=int, default=0, help="seed of the world (default: %(default)s)")
    world.add_argument("--image-size", type=int, default=56, help="image side in pixels (default: %(default)s)")
    world.add_argument("--group-size", type=int, default=4, help="images per prompt group (default: %(default)s)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", required=True,
                        help="output directory; a dataset written here before is replaced, any other non-empty "
                             "folder only with --overwrite")
    output.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that holds no dataset")
    output.add_argument("--workers", type=int, default=2, help="generation processes (default: %(default)s)")
    output.add_argument("--contact-sheet", default=None, help="also draw the first 16 images into this PNG")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not (is_ours(out) or args.overwrite):
        parser.error(f"--out {out} is not empty and holds no dataset written here; pass --overwrite to replace it")

    config = WorldConfig(image_size=args.image_size, group_size=args.group_size)
    started = time.perf_counter()
    groups = render_groups(args.seed, config, -(-args.n // args.group_size), workers=args.workers)
    generated = time.perf_counter() - started
    description = f"synthetic world, seed {args.seed}, {args.image_size} px, groups of {args.group_size}"
    dataset = to_reward_dataset(groups, description=description)
    if len(dataset.records) > args.n:  # the last group cut short
        keep = {r.record_id for r in dataset.records[: args.n]}
        dataset = type(dataset).from_records(
            dataset.records[: args.n], [p for p in dataset.pairs if p.record_a in keep and p.record_b in keep],
            dimensions=dataset.dimensions, levels=dataset.levels, description=description,
        )
    dataset.save(out, overwrite=True)  # checked above
    elapsed = time.perf_counter() - started
    if args.contact_sheet:
        items = [item for group in groups for item in group.items][:16]
        contact_sheet(items, args.contact_sheet)
    summary = {
        "out": args.out,
        "images": len(dataset.records),
        "pairs": len(dataset.pairs),
        "groups": len(dataset.groups()),
        "generation_seconds": round(generated, 2),
        "total_seconds": round(elapsed, 2),
        "images_per_second": round(len(dataset.records) / elapsed, 1),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
