"""How often a teacher's own reasoning chains name what the image shows: one diagnosis of why GDSO may not beat the
scalar baselines on the synthetic world.

A RISD teacher cache (`<cache_dir>/<key>/entries.jsonl`, written by `training.risd` / `training.teacher_cache`) holds
the teacher's sampled chains for each training image and rubric dimension. The world writes its reference rationale
for alignment as "<asked> <count> <colour> <shape(s)> on a <background> background. <seen> <count> <colour>
<shape(s)> on a <background> background. ..." (`zreward_diffusers.synthetic.language.rationale`): the second clause
is what the image really shows. This script parses the same two clauses out of each alignment chain and scores them
against the true scene and the prompt:

- well formed: the chain has a parsable "seen" clause (count, colour and shape words in that order);
- seen count / colour / shape / background right: among the well-formed chains, the clause names the scene's own;
- prompt quoted right: the "asked" clause names the prompt's count, colour and shape.

The world's own rationales (the cold start's targets) score 1.0 on every column by construction; a chain that names
the wrong colour or count is reasoning the score cannot use.

    python -m benchmarks.teacher_chains --cache runs/demo/teacher_cache --num_groups 128
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from zreward_diffusers.synthetic import SyntheticWorld, WorldConfig
from zreward_diffusers.synthetic.grammar import BACKGROUND_COLOURS, COUNT_WORDS, OBJECT_COLOURS, SHAPES

SEEN = ("I count", "I see", "The image shows")
ASKED = ("The prompt asks for", "The text wants", "Requested:")
_COUNTS = {word: n for n, word in COUNT_WORDS.items()} | {str(n): n for n in range(10)}
_WORD = r"([A-Za-z0-9]+)"
_CLAUSE = _WORD + r" " + _WORD + r" " + _WORD + r"(?: on a " + _WORD + r" background)?"


def parse_clause(text: str, openers: tuple[str, ...]) -> dict | None:
    """`{"count", "colour", "shape", "background"}` of the first "<opener> <count> <colour> <shape>[ on a <bg>
    background]" in `text`, or None when no such clause has words of the right kinds."""
    for opener in openers:
        for match in re.finditer(re.escape(opener) + r" " + _CLAUSE, text):
            count, colour, shape, background = match.groups()
            shape = shape[:-1] if shape.endswith("s") and shape[:-1] in SHAPES else shape
            if count in _COUNTS and colour in OBJECT_COLOURS and shape in SHAPES:
                return {"count": _COUNTS[count], "colour": colour, "shape": shape,
                        "background": background if background in BACKGROUND_COLOURS else None}
    return None


def chain_report(entries: list[dict], items: dict) -> dict:
    """The shares described in the module docstring, over the alignment chains of `entries` (cache rows) whose
    `record_id` is in `items` (record id -> `SyntheticItem`)."""
    seen_rows, asked_rows, total = [], [], 0
    for entry in entries:
        item = items.get(entry["record_id"])
        if entry["dimension"] != "alignment" or item is None:
            continue
        scene, spec = item.scene, item.spec
        for chain in entry["chains"]:
            total += 1
            seen = parse_clause(chain, SEEN)
            if seen is not None:
                seen_rows.append((seen["count"] == scene.count, seen["colour"] == scene.colour,
                                  seen["shape"] == scene.shape,
                                  seen["background"] == scene.background if seen["background"] else False))
            asked = parse_clause(chain, ASKED)
            asked_rows.append(asked is not None and (asked["count"], asked["colour"], asked["shape"])
                              == (spec.count, spec.colour, spec.shape))
    if total == 0:
        raise ValueError("no alignment chain of the cache belongs to the given world records")
    seen_array = np.array(seen_rows, dtype=float).reshape(-1, 4)
    shares = seen_array.mean(axis=0) if len(seen_rows) else np.full(4, np.nan)
    return {"chains": total, "well_formed": len(seen_rows) / total,
            "seen_count_right": float(shares[0]), "seen_colour_right": float(shares[1]),
            "seen_shape_right": float(shares[2]), "seen_background_right": float(shares[3]),
            "all_three_right": float(seen_array[:, :3].all(axis=1).mean()) if len(seen_rows) else float("nan"),
            "prompt_quoted_right": float(np.mean(asked_rows))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("Data")
    data.add_argument("--cache", required=True, help="a RISD teacher cache directory (holds <key>/entries.jsonl)")
    data.add_argument("--world_seed", type=int, default=0, help="the training split's world (default: %(default)s)")
    data.add_argument("--start", type=int, default=0, help="its first group (default: %(default)s)")
    data.add_argument("--num_groups", type=int, default=256, help="its groups (default: %(default)s)")
    data.add_argument("--image_size", type=int, default=56, help="its image size (default: %(default)s)")
    output = parser.add_argument_group("Output")
    output.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    files = sorted(Path(args.cache).glob("*/entries.jsonl"))
    if not files:
        raise SystemExit(f"error: no */entries.jsonl under --cache {args.cache}")
    world = SyntheticWorld(args.world_seed, WorldConfig(image_size=args.image_size))
    items = {item.record_id: item for group in world.groups(args.num_groups, start=args.start)
             for item in group.items}
    entries = [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]
    report = chain_report(entries, items)
    sys.stdout.write("| chains | well formed | seen count | seen colour | seen shape | seen background | all three | "
                     "prompt quoted right |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
                     f"| {report['chains']} | " + " | ".join(f"{report[k]:.3f}" for k in (
                         "well_formed", "seen_count_right", "seen_colour_right", "seen_shape_right",
                         "seen_background_right", "all_three_right", "prompt_quoted_right")) + " |\n")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(report, args=vars(args)), indent=2))
    return report


if __name__ == "__main__":
    main()
