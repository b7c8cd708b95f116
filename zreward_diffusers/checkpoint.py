"""Z-Reward checkpoints: a directory with our JSON config, the backbone (full, or a PEFT adapter over a named base)
and the processor files. safetensors only; pickle files are refused; `trust_remote_code` is off unless asked.

Layout (file names live here and nowhere else):

    zreward_config.json        rubric, family, preprocessing constants, reward shaping, versions
    config.json + model.safetensors (or model-*.safetensors + index)        full backbone, transformers format
    adapter_config.json + adapter_model.safetensors                          or a PEFT adapter over `base_model`
    tokenizer / processor files (tokenizer.json, preprocessor_config.json, chat_template.jinja, ...)

Saves go through `zreward_diffusers.saving` (atomic, never over a folder they did not write, recoverable after a kill).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from .data.jsonl import read_json_object
from .saving import recover_directory

logger = logging.getLogger(__name__)

CONFIG_NAME = "zreward_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
BACKBONE_CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# What a hub download fetches: never pickle files.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "README.md"]


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, revision: str | None = None, token=None) -> Path:
    """A local checkpoint directory, or a hub repo id downloaded (safetensors and config files only). A local
    directory missing because a save was interrupted is first recovered (`saving.recover_directory`)."""
    path = Path(path_or_hub_id)
    if not path.exists():
        recover_directory(path)  # a save killed between its renames: the last complete state goes back in place
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"`pretrained_model_name_or_path` must be a directory, got the file {str(path)!r}")
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ValueError(
            f"`pretrained_model_name_or_path` {name!r} is neither an existing directory nor a hub id (owner/name)"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, revision=revision, token=token, allow_patterns=HUB_ALLOW_PATTERNS))


# The weight files the loaders read (transformers with `use_safetensors=True`, peft), and nothing else is checked.
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# transformers loads every *.safetensors of a directory holding one file of this name (a distributed checkpoint).
_DISTRIBUTED_SHARD = r"shard-[0-9]{5}-model-[0-9]{5}-of-[0-9]{5}\.safetensors"
# The fields a rubric's `prompt_template` may use.
TEMPLATE_FIELDS = ("prompt", "dimension", "question")
_MAX_LISTED_KEYS = 10


def _refuse_pickles(checkpoint_dir: Path, missing: str | None = None) -> None:
    """Refuse a checkpoint directory holding pickle files, whatever else it holds: they are never handed to a
    loader (unpickling can run arbitrary code, and transformers or peft may pick one up). `missing` names the
    safetensors file absent from the directory, for the message."""
    pickles = sorted(p.name for p in checkpoint_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if not pickles:
        return
    if missing is not None:
        raise ValueError(
            f"{str(checkpoint_dir)!r} has pickle files {pickles} and no {missing}: pickle checkpoints are refused "
            "(unpickling can run arbitrary code); save the weights as safetensors"
        )
    raise ValueError(
        f"{str(checkpoint_dir)!r} has pickle files {pickles} next to its weights: a checkpoint with pickle files is "
        "refused (unpickling can run arbitrary code, and a loader may read one in place of the safetensors "
        "weights); delete them"
    )


def _listed(names) -> str:
    names = sorted(names)
    shown = ", ".join(repr(name) for name in names[:_MAX_LISTED_KEYS])
    return f"[{shown}{f', ... ({len(names) - _MAX_LISTED_KEYS} more)' if len(names) > _MAX_LISTED_KEYS else ''}]"


def _safetensors_keys(file: Path) -> set[str]:
    """The tensor names of a readable safetensors file; a ValueError names the file otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return set(handle.keys())
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{str(file)!r} is not a readable safetensors file: {error}") from error


def _plain_file_name(name) -> bool:
    """A file name inside the directory: no separators, no `..`."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _sharded_weight_files(checkpoint_dir: Path, index_name: str) -> dict[Path, set[str]]:
    """The shards an index lists, each with the tensors it must hold."""
    index_path = checkpoint_dir / index_name
    index = read_json_object(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{str(index_path)!r}: field 'weight_map' must be a non-empty object (tensor -> shard file), "
                         f"got {type(weight_map).__name__}")
    shards: dict[Path, set[str]] = {}
    for tensor, file in weight_map.items():
        if not _plain_file_name(file) or not file.endswith(".safetensors"):
            raise ValueError(f"{str(index_path)!r}: tensor {tensor!r} is mapped to {file!r}, which is not a "
                             ".safetensors file in the checkpoint directory")
        shards.setdefault(checkpoint_dir / file, set()).add(tensor)
    missing = sorted(path.name for path in shards if not path.is_file())
    if missing:
        raise ValueError(f"{str(index_path)!r} lists shard files that are missing: {missing}")
    return shards


def _backbone_weight_files(checkpoint_dir: Path) -> dict[Path, set[str]] | None:
    """The files transformers' `from_pretrained(dir, use_safetensors=True)` reads, each with the tensors it must
    hold (empty: no requirement), or None when there are none."""
    import re

    distributed = sorted(p.name for p in checkpoint_dir.iterdir() if re.fullmatch(_DISTRIBUTED_SHARD, p.name))
    if distributed:
        raise ValueError(
            f"{str(checkpoint_dir)!r} holds distributed-checkpoint shards {_listed(distributed)}, which transformers "
            f"would load (with every other *.safetensors file) in place of {WEIGHTS_NAME}: not a Z-Reward checkpoint "
            "layout; save the backbone with `save_pretrained`"
        )
    explicit = None
    config_path = checkpoint_dir / BACKBONE_CONFIG_NAME
    if config_path.is_file():
        explicit = read_json_object(config_path).get("transformers_weights")
        if explicit is not None and not (_plain_file_name(explicit) and explicit.endswith(
                (".safetensors", ".safetensors.index.json")) and (checkpoint_dir / explicit).is_file()):
            raise ValueError(
                f"{str(config_path)!r}: field 'transformers_weights' must name a .safetensors (or "
                f".safetensors.index.json) file in the checkpoint directory, got {explicit!r}"
            )
    name = explicit
    if name is None:
        name = next((n for n in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) if (checkpoint_dir / n).is_file()), None)
    if name is None:
        return None
    if name.endswith(".index.json"):
        return _sharded_weight_files(checkpoint_dir, name)
    return {checkpoint_dir / name: set()}


def check_weight_files(checkpoint_dir: Path, adapter: bool) -> list[Path]:
    """Check exactly the weight files the loader will read: they exist as readable safetensors holding the tensors
    an index assigns them; returns them. Pickle files in the directory refuse the checkpoint (never unpickled).

    Full backbone: what transformers reads — `transformers_weights` of config.json if set, else model.safetensors,
    else model.safetensors.index.json and its shards. PEFT adapter: adapter_model.safetensors, exactly.
    """
    if adapter:
        weights = {checkpoint_dir / ADAPTER_WEIGHTS_NAME: set()}
        if not (checkpoint_dir / ADAPTER_WEIGHTS_NAME).is_file():
            _refuse_pickles(checkpoint_dir, missing=ADAPTER_WEIGHTS_NAME)
            others = sorted(p.name for p in checkpoint_dir.glob("adapter_model*.safetensors"))
            found = f" (found {others}; peft reads {ADAPTER_WEIGHTS_NAME} only)" if others else ""
            raise ValueError(f"{str(checkpoint_dir)!r} has no {ADAPTER_WEIGHTS_NAME} weights{found}")
    else:
        weights = _backbone_weight_files(checkpoint_dir)
        if weights is None:
            _refuse_pickles(checkpoint_dir, missing=WEIGHTS_NAME)
            raise ValueError(f"{str(checkpoint_dir)!r} has no model*.safetensors weights ({WEIGHTS_NAME}, or "
                             f"{WEIGHTS_INDEX_NAME} and its shards)")
    _refuse_pickles(checkpoint_dir)
    for file, tensors in weights.items():
        absent = tensors - _safetensors_keys(file)
        if absent:
            raise ValueError(f"{str(file)!r} lacks tensors its index assigns to it: {_listed(absent)}")
    return list(weights)


def _check_loaded_keys(where: str, missing, unexpected, mismatched=(), errors=()) -> None:
    """A ValueError naming the tensors a checkpoint lacks (left randomly initialised) or holds that nothing reads."""
    problems = []
    if missing:
        problems.append(f"missing tensors {_listed(missing)} (they would be left randomly initialised)")
    if unexpected:
        problems.append(f"unexpected tensors {_listed(unexpected)} (nothing in the model reads them)")
    if mismatched:
        problems.append(f"tensors of the wrong shape {_listed(str(key) for key in mismatched)}")
    if errors:
        problems.append(f"load errors {list(errors)[:_MAX_LISTED_KEYS]}")
    if problems:
        raise ValueError(f"{where} does not match the model it configures: " + "; ".join(problems))


def zero_shot_config(checkpoint_dir: Path) -> dict | None:
    """The Z-Reward config under which a plain transformers VLM directory (its `config.json`, no `zreward_config.json`)
    is read zero-shot: the default rubric, whose score tokens the model's next-token distribution is read at
    (Q-Align-style); None for a directory that is a Z-Reward checkpoint or holds no `config.json`."""
    from .rubric import Rubric

    path = checkpoint_dir / BACKBONE_CONFIG_NAME
    if (checkpoint_dir / CONFIG_NAME).is_file() or not path.is_file():
        return None
    model_type = read_json_object(path).get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"{str(path)!r} names no `model_type`: not a transformers checkpoint")
    return {"format_version": FORMAT_VERSION, "family": model_type,
            "backbone": {"type": "full", "model_type": model_type}, "rubric": Rubric().to_dict()}


def read_config(checkpoint_dir: Path) -> dict:
    """Read and check `zreward_config.json`: every field's type and value (a ValueError names the file and the
    field); refuse pickle-only directories with a clear error."""
    config_path = checkpoint_dir / CONFIG_NAME
    if not config_path.is_file():
        _refuse_pickles(checkpoint_dir, missing=CONFIG_NAME)
        raise ValueError(f"{str(checkpoint_dir)!r} is not a Z-Reward checkpoint: {CONFIG_NAME} is missing")
    config = read_json_object(config_path)
    for key in ("format_version", "family", "backbone", "rubric"):
        if key not in config:
            raise ValueError(f"{str(config_path)!r} lacks the field {key!r}")
    check = _ConfigCheck(config_path)
    version = check.integer(config["format_version"], "format_version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{str(config_path)!r} has format_version {config['format_version']}, newer than this library "
            f"reads ({FORMAT_VERSION}); upgrade zreward-diffusers"
        )
    if version < 1:
        raise check.fail("format_version", f"must be between 1 and {FORMAT_VERSION}, got {version}")
    family = check.string(config["family"], "family")
    check.backbone(config["backbone"], family)
    rubric = check.rubric(config["rubric"])
    if "reward" in config:
        check.reward(config["reward"], rubric)
    if "quantize" in config:
        check.boolean(config["quantize"], "quantize")
    if config.get("preprocessing") is not None:
        check.mapping(config["preprocessing"], "preprocessing")
    for key in ("library_version", "transformers_version"):
        if config.get(key) is not None:
            check.string(config[key], key)
    unknown = sorted(set(config) - _CONFIG_FIELDS)
    if unknown:
        logger.warning("%r: ignoring unknown fields %s", str(config_path), unknown)
    return config


_CONFIG_FIELDS = {"format_version", "family", "backbone", "rubric", "reward", "quantize", "preprocessing",
                  "library_version", "transformers_version"}
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_MAX_WIDTH = 1 << 16  # a sanity bound on the CLIP student's widths (its towers' sizes are open_clip's to check)


def _shown(value) -> str:
    """A short repr of a config value for a message (long or deeply nested values are abbreviated)."""
    import reprlib

    shown = reprlib.Repr()
    shown.maxstring, shown.maxother, shown.maxlist, shown.maxdict, shown.maxlevel = 60, 60, 10, 10, 3
    return shown.repr(value)


def _finite_number(value) -> bool:
    import math

    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


class _ConfigCheck:
    """Type and value checks of `zreward_config.json` fields; each failure a ValueError naming file and field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> ValueError:
        return ValueError(f"{str(self.path)!r}: field {field!r} {problem}")

    def mapping(self, value, field: str, known=None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, got {type(value).__name__} {_shown(value)}")
        if known is not None:
            for key in value:
                if key not in known:
                    raise self.fail(f"{field}.{key}", f"is not a known field of {field!r}; the fields are "
                                                      f"{sorted(known)}")
        return value

    def string(self, value, field: str, empty: bool = False) -> str:
        if not isinstance(value, str) or not (empty or value.strip()):
            raise self.fail(field, f"must be a {'' if empty else 'non-empty '}string, got {_shown(value)}")
        return value

    def boolean(self, value, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {_shown(value)}")
        return value

    def integer(self, value, field: str, low: int | None = None, high: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low) or (
                high is not None and value > high):
            bound = f" in [{low}, {high}]" if high is not None else "" if low is None else f" >= {low}"
            raise self.fail(field, f"must be an integer{bound}, got {_shown(value)}")
        return value

    def number(self, value, field: str, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        ok = _finite_number(value) and (low is None or (value > low if low_open else value >= low)) and (
            high is None or value <= high)
        if not ok:
            bounds = f" in {'(' if low_open else '['}{low}, {high}]" if high is not None else (
                f" {'>' if low_open else '>='} {low}" if low is not None else "")
            raise self.fail(field, f"must be a finite number{bounds}, got {_shown(value)}")
        return float(value)

    def sequence(self, value, field: str, length: int | None = None, non_empty: bool = True) -> list:
        if not isinstance(value, list) or (non_empty and not value) or (length is not None and len(value) != length):
            wanted = f"a list of {length} entries" if length is not None else "a non-empty list" if non_empty \
                else "a list"
            raise self.fail(field, f"must be {wanted}, got {_shown(value)}")
        return value

    def numbers(self, value, field: str, length: int | None = None, low: float | None = None) -> list[float]:
        values = self.sequence(value, field, length)
        for index, item in enumerate(values):
            self.number(item, f"{field}[{index}]", low=low)
        return values

    def names(self, value, field: str) -> list[str]:
        """A non-empty list of distinct non-empty strings."""
        names = self.sequence(value, field)
        for index, name in enumerate(names):
            self.string(name, f"{field}[{index}]")
        if len(set(names)) != len(names):
            raise self.fail(field, f"must not repeat a name, got {_shown(names)}")
        return names

    # ------------------------------------------------------------------------------------------------ sections
    def backbone(self, backbone, family: str) -> None:
        backbone = self.mapping(backbone, "backbone")
        kind = self.string(backbone.get("type"), "backbone.type")
        if family == "open_clip" or kind == "open_clip":
            if (family, kind) != ("open_clip", "open_clip"):
                raise self.fail("backbone.type", f"is {kind!r} for family {family!r}; an open_clip student has "
                                                 "family and backbone type 'open_clip'")
            model_config = self.mapping(backbone.get("model_config"), "backbone.model_config")
            self.integer(model_config.get("embed_dim"), "backbone.model_config.embed_dim", low=1, high=_MAX_WIDTH)
            for tower in ("vision_cfg", "text_cfg"):
                self.mapping(model_config.get(tower), f"backbone.model_config.{tower}")
            self.integer(backbone.get("hidden"), "backbone.hidden", low=1, high=_MAX_WIDTH)
            self.string(backbone.get("tokenizer"), "backbone.tokenizer")
            self.numbers(backbone.get("mean"), "backbone.mean", length=3)
            for index, value in enumerate(self.numbers(backbone.get("std"), "backbone.std", length=3)):
                self.number(value, f"backbone.std[{index}]", low=0.0, low_open=True)
        elif kind == "peft":
            self.string(backbone.get("base_model"), "backbone.base_model")
            if backbone.get("base_revision") is not None:
                self.string(backbone["base_revision"], "backbone.base_revision")
        elif kind == "full":
            if backbone.get("model_type") is not None:
                self.string(backbone["model_type"], "backbone.model_type")
        else:
            raise self.fail("backbone.type", f"must be 'full', 'peft' or 'open_clip', got {_shown(kind)}")

    def rubric(self, rubric):
        from .rubric import Rubric

        rubric = self.mapping(rubric, "rubric", known=Rubric.__dataclass_fields__)
        if "dimensions" in rubric:
            dimensions = self.sequence(rubric["dimensions"], "rubric.dimensions")
            for index, dimension in enumerate(dimensions):
                field = f"rubric.dimensions[{index}]"
                self.mapping(dimension, field, known=("name", "question"))
                self.string(dimension.get("name"), f"{field}.name")
                self.string(dimension.get("question"), f"{field}.question", empty=True)
            names = [dimension["name"] for dimension in dimensions]
            if len(set(names)) != len(names):
                raise self.fail("rubric.dimensions", f"names must be distinct, got {_shown(names)}")
        if "levels" in rubric:
            levels = self.numbers(rubric["levels"], "rubric.levels")
            if len(levels) < 2 or any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
                raise self.fail("rubric.levels", f"must be at least two strictly increasing values, got "
                                                 f"{_shown(levels)}")
        if "score_tokens" in rubric:
            self.names(rubric["score_tokens"], "rubric.score_tokens")
        for key in ("answer_prefix", "student_prefix", "reasoning_prefix", "reasoning_suffix"):
            if key in rubric:
                self.string(rubric[key], f"rubric.{key}", empty=True)
        if "prompt_template" in rubric:
            self.template(self.string(rubric["prompt_template"], "rubric.prompt_template"))
        if rubric.get("weights") is not None:
            self.numbers(rubric["weights"], "rubric.weights", low=0.0)
        try:
            return Rubric.from_dict(rubric)
        except (TypeError, ValueError) as error:  # relations between fields (one score token per level, ...)
            raise self.fail("rubric", f"does not make a rubric: {error}") from error

    def template(self, template: str) -> None:
        import string

        field = "rubric.prompt_template"
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as error:
            raise self.fail(field, f"is not a valid format string ({error}): {_shown(template)}") from error
        used = set()
        for _, name, spec, _ in parsed:
            if name is None:
                continue
            if name not in TEMPLATE_FIELDS or "{" in (spec or ""):
                raise self.fail(field, f"uses the unknown template field {{{name}}}; the fields are "
                                       f"{['{' + known + '}' for known in TEMPLATE_FIELDS]}")
            used.add(name)
        if "prompt" not in used:
            raise self.fail(field, f"must contain {{prompt}}, got {_shown(template)}")
        try:
            template.format(**dict.fromkeys(TEMPLATE_FIELDS, ""))
        except (ValueError, TypeError) as error:  # a bad format spec, e.g. {prompt:d}
            raise self.fail(field, f"cannot be formatted: {error}") from error

    def reward(self, reward, rubric) -> None:
        import inspect

        from .image_inputs import IMAGE_RANGES
        from .loss import REDUCTIONS, ZRewardLoss

        parameters = list(inspect.signature(ZRewardLoss.__init__).parameters)[2:]  # after self, scorer
        reward = self.mapping(reward, "reward", known=[*parameters, *_RUNNING_STATS])
        if "image_range" in reward and not (isinstance(reward["image_range"], str)
                                            and reward["image_range"] in IMAGE_RANGES):
            raise self.fail("reward.image_range", f"must be one of {sorted(IMAGE_RANGES)}, got "
                                                  f"{_shown(reward['image_range'])}")
        if "reduction" in reward and not (isinstance(reward["reduction"], str) and reward["reduction"] in REDUCTIONS):
            raise self.fail("reward.reduction", f"must be one of {list(REDUCTIONS)}, got "
                                                f"{_shown(reward['reduction'])}")
        if "kappa" in reward:
            self.number(reward["kappa"], "reward.kappa", low=0.0)
        if reward.get("margin") is not None:
            self.number(reward["margin"], "reward.margin")
        if "normalize" in reward:
            self.boolean(reward["normalize"], "reward.normalize")
        if "momentum" in reward:
            self.number(reward["momentum"], "reward.momentum", low=0.0, high=1.0, low_open=True)
        dimensions = rubric.dimension_names
        if reward.get("dimensions") is not None:
            dimensions = self.names(reward["dimensions"], "reward.dimensions")
            for index, name in enumerate(dimensions):
                if name not in rubric.dimension_names:
                    raise self.fail(f"reward.dimensions[{index}]", f"names {name!r}, not a rubric dimension; the "
                                                                   f"rubric has {list(rubric.dimension_names)}")
        from .loss import objective_settings

        objective = {key: reward[key] for key in ("statistic", "alpha", "threshold", "combine", "temperature",
                                                  "floors", "floor_weight", "groupwise") if key in reward}
        try:
            objective_settings(**objective, kappa=reward.get("kappa", 0.0), normalize=reward.get("normalize", False),
                               levels=rubric.levels, dimensions=dimensions)
        except (ValueError, TypeError) as error:
            named = re.search(r"`(\w+)", str(error))  # the setting the check names first
            field = f"reward.{named.group(1)}" if named and named.group(1) in reward else "reward"
            raise self.fail(field, f"is refused by the loss: {error}") from None
        present = [key for key in _RUNNING_STATS if key in reward]
        if present and len(present) != len(_RUNNING_STATS):
            missing = sorted(set(_RUNNING_STATS) - set(present))
            raise self.fail(f"reward.{missing[0]}", f"is missing; the running statistics {list(_RUNNING_STATS)} "
                                                    "are saved together")
        if present:
            self.numbers(reward["running_mean"], "reward.running_mean", length=len(dimensions))
            self.numbers(reward["running_var"], "reward.running_var", length=len(dimensions), low=0.0)
            self.integer(reward["num_batches_tracked"], "reward.num_batches_tracked", low=0, high=2**63 - 1)


def load_backbone(
    checkpoint_dir: Path,
    config: dict,
    torch_dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token=None,
):
    """Load `(model, processor)` from a checkpoint directory: full backbone or PEFT adapter over its base.

    Only safetensors are read (see `check_weight_files`); a tensor the checkpoint lacks (which transformers or peft
    would leave randomly initialised) or holds without the model reading it is a ValueError naming it.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    backbone = config["backbone"]
    adapter = backbone.get("type") == "peft"
    weights = check_weight_files(checkpoint_dir, adapter)
    kwargs = dict(use_safetensors=True, trust_remote_code=trust_remote_code, token=token)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if adapter:
        from peft import PeftModel, get_peft_model_state_dict

        if not (checkpoint_dir / ADAPTER_CONFIG_NAME).is_file():
            raise ValueError(f"{str(checkpoint_dir)!r} lacks the adapter's {ADAPTER_CONFIG_NAME}")
        base = _load_base_model(backbone["base_model"], backbone.get("base_revision"), kwargs)
        # peft reads adapter_model.safetensors when it exists (checked above, with no pickle file beside it).
        model = PeftModel.from_pretrained(base, str(checkpoint_dir), is_trainable=False)
        expected, saved = set(get_peft_model_state_dict(model)), _safetensors_keys(weights[0])
        _check_loaded_keys(repr(str(weights[0])), expected - saved, saved - expected)
    else:
        if not (checkpoint_dir / BACKBONE_CONFIG_NAME).is_file():
            raise ValueError(f"{str(checkpoint_dir)!r} lacks the backbone's {BACKBONE_CONFIG_NAME}")
        model, info = AutoModelForImageTextToText.from_pretrained(
            str(checkpoint_dir), revision=revision, output_loading_info=True, **kwargs
        )
        _check_loaded_keys(repr(str(checkpoint_dir)), info.get("missing_keys"), info.get("unexpected_keys"),
                           info.get("mismatched_keys"), info.get("error_msgs"))
    processor = AutoProcessor.from_pretrained(str(checkpoint_dir), trust_remote_code=trust_remote_code)
    return model, processor


def _load_base_model(name: str, revision: str | None, kwargs: dict):
    """The base of a PEFT adapter (a local directory or a hub id), from safetensors only, with every tensor."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    local = Path(name)
    if local.is_dir():
        weights = _backbone_weight_files(local)  # what transformers reads; other files there are not ours to judge
        if weights is None:
            raise ValueError(f"the base model directory {name!r} has no model*.safetensors weights ({WEIGHTS_NAME}, "
                             f"or {WEIGHTS_INDEX_NAME} and its shards)")
        for file, tensors in weights.items():
            absent = tensors - _safetensors_keys(file)
            if absent:
                raise ValueError(f"{str(file)!r} lacks tensors its index assigns to it: {_listed(absent)}")
    base_config = AutoConfig.from_pretrained(name, revision=revision, token=kwargs.get("token"),
                                             trust_remote_code=kwargs.get("trust_remote_code", False))
    explicit = getattr(base_config, "transformers_weights", None)
    if explicit is not None and not str(explicit).endswith((".safetensors", ".safetensors.index.json")):
        raise ValueError(f"the base model {name!r} names weights {explicit!r} in its config.json "
                         "(`transformers_weights`), not a safetensors file: refused")
    base, info = AutoModelForImageTextToText.from_pretrained(
        name, config=base_config, revision=revision, output_loading_info=True, **kwargs
    )
    _check_loaded_keys(f"the base model {name!r}", info.get("missing_keys"), (), info.get("mismatched_keys"),
                       info.get("error_msgs"))
    if info.get("unexpected_keys"):
        logger.warning("the base model %r holds tensors the model does not read (ignored): %s", name,
                       _listed(info["unexpected_keys"]))
    return base


def save_backbone(model, processor, directory: Path, base_model: str | None = None) -> dict:
    """Write the backbone (or its PEFT adapter) and processor into `directory`; returns the `backbone` config."""
    processor.save_pretrained(str(directory))
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(directory), safe_serialization=True)
        base = base_model or model.peft_config["default"].base_model_name_or_path
        if not base:
            raise ValueError("a PEFT backbone needs `base_model` (a path or hub id) to be saved")
        return {"type": "peft", "base_model": base, "base_revision": model.peft_config["default"].revision}
    model.save_pretrained(str(directory), safe_serialization=True)
    return {"type": "full", "model_type": model.config.model_type}


def write_config(directory: Path, config: dict) -> None:
    (directory / CONFIG_NAME).write_text(json.dumps(dict(config, format_version=FORMAT_VERSION), indent=2) + "\n")
