"""The `zreward` command line: `create-tiny`, `score`, `eval` and `bench`.

    zreward create-tiny DIR [--family qwen2_vl] [--seed 0] [--overwrite]
    zreward score --model DIR --prompt "two red circles" image1.png image2.png
    zreward eval --model DIR --data DATASET_DIR [--out REPORT_DIR]
    zreward bench --model DIR --data hpdv2=HPDv2/test.json --data pickapic=pickapic_v2/test_unique \
        [--validation pickapic=pickapic_v2/validation_unique] [--out REPORT_DIR]

A user error (a bad argument, a missing file or checkpoint, an unreadable image, input the model refuses) is one
line on stderr, `zreward: error: ...`, and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class UserError(Exception):
    """An error in what the user asked for, reported as one line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_device(device: str | None) -> None:
    """A device the user named must exist and be usable here (checked before any loading)."""
    if device is None:
        return
    import torch

    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--device {device!r} is not usable here: {first}") from None


def _load_model(model: str, device: str | None):
    """The checkpoint `--model` names: a local directory, or else a hub repo id."""
    from .loss import ZRewardLoss

    _check_device(device)
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or os.sep in model.strip(os.sep).replace("/", "", 1)
    if not path.exists() and looks_local:
        raise UserError(f"--model {model!r}: no such directory")
    try:
        return ZRewardLoss.from_pretrained(str(path) if path.exists() else model, device=device)
    except OSError as error:
        if path.exists():
            raise
        raise UserError(f"--model {model!r} is not a local directory, and the hub repo could not be read: "
                        f"{_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _create_tiny(args) -> int:
    from .testing import TINY_FAMILIES, create_tiny_checkpoint

    if args.family not in TINY_FAMILIES:
        raise UserError(f"--family must be one of {', '.join(TINY_FAMILIES)}, got {args.family!r}")
    try:
        create_tiny_checkpoint(args.directory, family=args.family, seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as error:
        raise UserError(f"{error}".replace("pass overwrite=True (--overwrite on the command line)", "pass --overwrite")
                        ) from None
    sys.stdout.write(json.dumps({"created": args.directory, "family": args.family, "seed": args.seed}) + "\n")
    return 0


def _score(args) -> int:
    from PIL import Image

    if len(args.prompt) not in (1, len(args.images)):
        raise UserError(f"give one --prompt, or one per image ({len(args.images)}), got {len(args.prompt)}")
    prompts = args.prompt if len(args.prompt) == len(args.images) else args.prompt * len(args.images)
    loss_fn = _load_model(args.model, args.device)
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        images = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except (OSError, Image.DecompressionBombError) as error:
                raise UserError(f"cannot read image {path!r}: {_first_line(error)}") from None
        output = loss_fn.score(images, prompts[start : start + args.batch_size])
        for path, prompt, record in zip(paths, prompts[start:], output.to_records(), strict=False):
            sys.stdout.write(json.dumps({"image": path, "prompt": prompt, **record}) + "\n")
    return 0


def _eval(args) -> int:
    from .data import load_dataset
    from .evaluation import evaluate_probs, markdown_table, score_dataset, write_report

    if not Path(args.data).exists():
        raise UserError(f"--data {args.data!r}: no such file or directory")
    # before the model: a bad dataset fails in seconds
    dataset = load_dataset(args.data, verify_images=not args.no_verify_images,
                           allow_outside_root=args.allow_outside_root)
    loss_fn = _load_model(args.model, args.device)
    if args.limit is not None:
        dataset = _first_groups(dataset, args.limit)
    probs = score_dataset(loss_fn.scorer, dataset, batch_size=args.batch_size)
    report = evaluate_probs(probs, dataset, weights=loss_fn.rubric.weights)
    out = Path(args.out) if args.out else Path("runs") / "eval" / Path(args.model).name
    paths = write_report(report, dataset.dimensions, out, title=f"{args.model} on {args.data}")
    sys.stdout.write(markdown_table(report, dataset.dimensions))
    sys.stdout.write(json.dumps({key: str(path) for key, path in paths.items()}) + "\n")
    return 0


def _named_paths(values: list[str] | None, option: str) -> dict[str, str]:
    """`NAME=PATH` arguments as a dict; a malformed or repeated name is a user error."""
    from .bench import BENCHMARKS

    named = {}
    for value in values or []:
        name, equals, path = value.partition("=")
        if not equals or not name or not path:
            raise UserError(f"{option} takes NAME=PATH, got {value!r}")
        if name not in BENCHMARKS:
            raise UserError(f"{option} {value!r}: unknown benchmark {name!r}; the benchmarks are "
                            f"{', '.join(BENCHMARKS)}")
        if name in named:
            raise UserError(f"{option} names {name!r} twice")
        named[name] = path
    return named


def _local_copy(path: str, option: str):
    """A file or a `datasets.save_to_disk` directory (read with `datasets.load_from_disk`)."""
    location = Path(path).expanduser()
    if not location.exists():
        raise UserError(f"{option} {path!r}: no such file or directory")
    if location.is_dir():
        from .optional import import_optional

        datasets = import_optional("datasets")
        try:
            loaded = datasets.load_from_disk(str(location))
        except FileNotFoundError as error:
            raise UserError(f"{option} {path!r} is a directory but not one saved by `datasets`: "
                            f"{_first_line(error)}") from None
        if isinstance(loaded, datasets.DatasetDict):
            raise UserError(f"{option} {path!r} holds the splits {sorted(loaded)}: name one split's directory")
        return loaded
    return str(location)


def _bench(args) -> int:
    from .bench import bench_table, run_benchmarks, write_bench

    sources = _named_paths(args.data, "--data")
    if not sources:
        raise UserError("give at least one --data NAME=PATH")
    validation = _named_paths(args.validation, "--validation")
    roots = _named_paths(args.root, "--root")
    for option, named in (("--validation", validation), ("--root", roots)):
        stray = sorted(set(named) - set(sources))
        if stray:
            raise UserError(f"{option} names {', '.join(stray)} with no --data")
    others = sorted(set(validation) - {"pickapic"})
    if others:
        raise UserError(f"--validation sets Pick-a-Pic's tie threshold; {', '.join(others)} take none")
    loaded = {name: _local_copy(path, "--data") for name, path in sources.items()}
    held = {name: _local_copy(path, "--validation") for name, path in validation.items()}
    for name, path in roots.items():
        if not Path(path).expanduser().is_dir():
            raise UserError(f"--root {name}={path!r}: no such directory")
    loss_fn = _load_model(args.model, args.device)
    results = run_benchmarks(loss_fn, loaded, validation=held, roots=roots, batch_size=args.batch_size,
                             verify_images=not args.no_verify_images)
    out = Path(args.out) if args.out else Path("runs") / "bench" / Path(args.model).name
    paths = write_bench(results, out)

    sys.stdout.write(bench_table(results))
    sys.stdout.write(json.dumps({key: str(path) for key, path in paths.items()}) + "\n")
    return 0


def _first_groups(dataset, limit: int):
    """The records of the first groups, up to `limit` records, with their pairs."""
    kept, groups = [], set()
    for record in dataset.records:
        if len(kept) >= limit and record.group_id not in groups:
            break
        kept.append(record)
        groups.add(record.group_id)
    ids = {r.record_id for r in kept}
    pairs = [p for p in dataset.pairs if p.record_a in ids and p.record_b in ids]
    return type(dataset)(kept, pairs, dataset.root, dataset.dimensions, dataset.levels, [], dataset.description)


def _model_arguments(command: argparse.ArgumentParser) -> None:
    model = command.add_argument_group("Model")
    model.add_argument("--model", required=True, help="checkpoint directory or hub id")
    model.add_argument("--device", default=None, help="torch device (default: where the checkpoint loads, the CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zreward", description="Z-Reward score-distribution reward models")
    commands = parser.add_subparsers(dest="command", required=True, title="commands")

    about = "write a random tiny student checkpoint of a real architecture"
    tiny = commands.add_parser("create-tiny", help=about, description=about)
    model = tiny.add_argument_group("Model")
    model.add_argument("--family", default="qwen2_vl", help="backbone family (default qwen2_vl)")
    model.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    output = tiny.add_argument_group("Output")
    output.add_argument("directory", help="where the checkpoint is written")
    output.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty directory that is not a checkpoint written by zreward")
    tiny.set_defaults(func=_create_tiny)

    about = "print one JSON line per image: per-dimension distributions"
    score = commands.add_parser("score", help=about, description=about)
    _model_arguments(score)
    inputs = score.add_argument_group("Input")
    inputs.add_argument("--prompt", required=True, action="append", help="the prompt (repeat for one per image)")
    inputs.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (default 8)")
    inputs.add_argument("images", nargs="+", help="image files")
    score.set_defaults(func=_score)

    about = "metrics of a model on a dataset: JSON, markdown, reliability PNG"
    evaluate = commands.add_parser("eval", help=about, description=about)
    _model_arguments(evaluate)
    inputs = evaluate.add_argument_group("Input")
    inputs.add_argument("--data", required=True, help="dataset directory (ours) or a jsonl/csv/parquet file")
    inputs.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    inputs.add_argument("--limit", type=_positive_int, default=None,
                        help="evaluate only the first groups, ~this many images")
    inputs.add_argument("--no-verify-images", action="store_true",
                        help="only check that image files exist (default: decode each, refusing corrupt ones and "
                             "decompression bombs, before the model is loaded)")
    inputs.add_argument("--allow-outside-root", action="store_true",
                        help="accept image paths outside the data's folder (default: refused)")
    output = evaluate.add_argument_group("Output")
    output.add_argument("--out", default=None, help="report directory (default runs/eval/<model name>)")
    evaluate.set_defaults(func=_eval)

    about = "public benchmarks, each with its own rule (pair accuracy, ties, calibration): one table"
    bench = commands.add_parser("bench", help=about, description=about + ". The benchmarks: hpdv2, hpdv3, "
                                "imagereward, pickapic, genai_bench, richhf, evalmuse (docs/datasets.md).")
    _model_arguments(bench)
    inputs = bench.add_argument_group("Input")
    inputs.add_argument("--data", action="append", metavar="NAME=PATH",
                        help="a benchmark's local copy: a json/jsonl/csv/parquet file or a `datasets` split saved "
                             "with save_to_disk (repeat for several benchmarks)")
    inputs.add_argument("--validation", action="append", metavar="NAME=PATH",
                        help="the validation split that sets a benchmark's tie threshold (pickapic)")
    inputs.add_argument("--root", action="append", metavar="NAME=DIR",
                        help="where a benchmark's relative image paths resolve (default: its file's folder)")
    inputs.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    inputs.add_argument("--no-verify-images", action="store_true",
                        help="only check that image files exist (default: decode each first)")
    output = bench.add_argument_group("Output")
    output.add_argument("--out", default=None, help="results directory (default runs/bench/<model name>)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        message = str(error)
    except (ValueError, TypeError, OSError) as error:  # refused input, a missing or unreadable file
        message = _first_line(error) if isinstance(error, OSError) else str(error)
    sys.stderr.write(f"zreward: error: {' '.join(message.split())}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
