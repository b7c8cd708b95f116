"""Z-Reward checkpoints: a directory with our JSON config, the backbone (full, or a PEFT adapter over a named base)
and the processor files. safetensors only; pickle files are refused; `trust_remote_code` is off unless asked.

Layout (file names live here and nowhere else):

    zreward_config.json        rubric, family, preprocessing constants, reward shaping, versions
    config.json + model.safetensors (or model-*.safetensors + index)        full backbone, transformers format
    adapter_config.json + adapter_model.safetensors                          or a PEFT adapter over `base_model`
    tokenizer / processor files (tokenizer.json, preprocessor_config.json, chat_template.jinja, ...)

Saves are atomic: everything is written to a temporary sibling directory which then replaces `out_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CONFIG_NAME = "zreward_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
BACKBONE_CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# What a hub download fetches: never pickle files.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "README.md"]


@contextmanager
def atomic_directory(out_dir: str | os.PathLike):
    """Yield a temporary directory beside `out_dir`; on success it replaces `out_dir` (old contents removed)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, revision: str | None = None, token=None) -> Path:
    """A local checkpoint directory, or a hub repo id downloaded (safetensors and config files only)."""
    path = Path(path_or_hub_id)
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


def _refuse_pickles(checkpoint_dir: Path, missing: str) -> None:
    """Raise a clear error when `missing` is absent and pickle files stand in its place (they are never read)."""
    pickles = sorted(p.name for p in checkpoint_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{str(checkpoint_dir)!r} has pickle files {pickles} and no {missing}: pickle checkpoints are refused "
            "(unpickling can run arbitrary code); save the weights as safetensors"
        )


def read_config(checkpoint_dir: Path) -> dict:
    """Read and check `zreward_config.json`; refuse pickle-only directories with a clear error."""
    config_path = checkpoint_dir / CONFIG_NAME
    if not config_path.is_file():
        _refuse_pickles(checkpoint_dir, missing=CONFIG_NAME)
        raise ValueError(f"{str(checkpoint_dir)!r} is not a Z-Reward checkpoint: {CONFIG_NAME} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {error}") from error
    for key in ("format_version", "family", "backbone", "rubric"):
        if key not in config:
            raise ValueError(f"{str(config_path)!r} lacks the field {key!r}")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{str(config_path)!r} has format_version {config['format_version']}, newer than this library "
            f"reads ({FORMAT_VERSION}); upgrade zreward-diffusers"
        )
    return config


def check_weight_files(checkpoint_dir: Path, adapter: bool) -> None:
    """The weights must exist as readable safetensors; pickle weights are refused, never unpickled."""
    from safetensors import safe_open

    stem = "adapter_model" if adapter else "model"
    weights = sorted(checkpoint_dir.glob(f"{stem}*.safetensors"))
    if not weights:
        _refuse_pickles(checkpoint_dir, missing=f"{stem}*.safetensors")
        raise ValueError(f"{str(checkpoint_dir)!r} has no {stem}*.safetensors weights")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error types for a bad header
            raise ValueError(f"{str(file)!r} is not a readable safetensors file: {error}") from error


def load_backbone(
    checkpoint_dir: Path,
    config: dict,
    torch_dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token=None,
):
    """Load `(model, processor)` from a checkpoint directory: full backbone or PEFT adapter over its base."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    backbone = config["backbone"]
    adapter = backbone.get("type") == "peft"
    check_weight_files(checkpoint_dir, adapter)
    kwargs = dict(use_safetensors=True, trust_remote_code=trust_remote_code, token=token)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if adapter:
        from peft import PeftModel

        base = AutoModelForImageTextToText.from_pretrained(
            backbone["base_model"], revision=backbone.get("base_revision"), **kwargs
        )
        model = PeftModel.from_pretrained(base, str(checkpoint_dir), is_trainable=False)
    else:
        if not (checkpoint_dir / BACKBONE_CONFIG_NAME).is_file():
            raise ValueError(f"{str(checkpoint_dir)!r} lacks the backbone's {BACKBONE_CONFIG_NAME}")
        model = AutoModelForImageTextToText.from_pretrained(str(checkpoint_dir), revision=revision, **kwargs)
    processor = AutoProcessor.from_pretrained(str(checkpoint_dir), trust_remote_code=trust_remote_code)
    return model, processor


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
