"""Training configs: dataclasses with a help string per field, loaded from YAML and overridden from the command line.

Every `training/<name>.py` entry point declares one dataclass and calls `parse_args(ThatConfig)`:

    python -m training.<name> --config training/configs/<name>.yaml --lr 1e-4 --models.teacher.vision_config.depth 6

`--key value` (or `--key=value`) overrides the YAML value; a dotted key reaches into a nested dataclass field or
into a dict field, whose other entries are kept; a flag given without a value means `true`. Unknown keys, in the
file or on the command line, raise a `ValueError` that names them. `--help` prints the config class's docstring and
its fields under the headings of its `help_groups` (`field_groups`).

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Example:
...     lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
...     sizes: dict = field(default_factory=lambda: {"width": 64, "depth": 2}, metadata={"help": "model size"})
>>> load_config(Example, overrides={"lr": "3e-4", "sizes.depth": 4})
Example(lr=0.0003, sizes={'width': 64, 'depth': 4})
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import typing

import yaml


def load_config(cls, path=None, overrides: dict | None = None):
    """Build dataclass `cls` from the YAML file `path` (optional), then apply `overrides` (dotted keys).

    A YAML value replaces the field's default; an override replaces a scalar and is merged into a dict field. Text
    is converted to an int, float or bool field's type (PyYAML reads `3e-4` as a string).
    """
    data = {}
    if path is not None:
        with open(path) as file:
            data = yaml.safe_load(file) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of field names to values")
    tree = {}
    for dotted_key, value in (overrides or {}).items():
        *parents, leaf = dotted_key.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return _build(cls, data, tree, source=str(path), prefix="")


def _build(cls, data: dict, overrides: dict, source: str, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for keys, origin in ((data, f"config file {source}"), (overrides, "overrides")):
        unknown = sorted(prefix + key for key in set(keys) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys {unknown} in the {origin}; {cls.__name__} has {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in [name for name in fields if name in data or name in overrides]:
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            nested = data.get(name) or {}, overrides.get(name) or {}
            for value in nested:
                if not isinstance(value, dict):
                    raise ValueError(f"`{prefix}{name}` must be a mapping of {kind.__name__}'s fields "
                                     f"{sorted(f.name for f in dataclasses.fields(kind))}, got {value!r}")
            kwargs[name] = _build(kind, *nested, source, f"{prefix}{name}.")
        elif kind is dict or typing.get_origin(kind) is dict:
            value = data[name] if name in data else fields[name].default_factory()
            kwargs[name] = merge_mappings(value, overrides.get(name, {}))
        else:
            value = overrides[name] if name in overrides else data[name]
            kwargs[name] = _convert(kind, value, prefix + name)
    return cls(**kwargs)


def _convert(kind, value, name: str):
    if isinstance(value, str) and value.lower() == "none" and type(None) in typing.get_args(kind):
        return None  # `--log_with none` means off, as the help says
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"`{name}` must be true or false, got {value!r}")
        return value.lower() == "true"
    if kind in (int, float) and isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"`{name}` must be {kind.__name__}, got {value!r}") from None
    return value


def merge_mappings(base: dict, update: dict) -> dict:
    """`base` updated recursively with `update`: nested dicts are merged, other values replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_mappings(merged[key], value)
        merged[key] = value
    return merged


def check_at_least(config, minimum: int, *names: str, prefix: str = "") -> None:
    """Raise a `ValueError` naming the first of `names` whose value on `config` is below `minimum` (None passes).

    `prefix` is where `config` sits in its entry point's config (`"vision."` for a nested field `vision`), so that
    the message names the key as it is written in the YAML file or on the command line."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"`{prefix}{name}` must be an integer >= {minimum}, got {value!r}")


def check_choice(config, name: str, choices, prefix: str = "") -> None:
    """Raise a `ValueError` naming `name` (after `prefix`, as `check_at_least`) unless its value on `config` is one of
    `choices`."""
    if getattr(config, name) not in choices:
        raise ValueError(f"`{prefix}{name}` must be one of {tuple(choices)}, got {getattr(config, name)!r}")


def check_non_negative(config, *names: str, prefix: str = "") -> None:
    """Raise a `ValueError` naming (after `prefix`, as `check_at_least`) the first of `names` whose value on `config`
    is not a finite number >= 0 (a bool is not a number here)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{prefix}{name}` must be a finite number >= 0, got {value!r}")


def scalar_fields(config, prefix: str = "") -> dict:
    """The config's int, float, str and bool values by name, for a tracker's hyperparameters: a nested dataclass
    field's own are included under dotted names (`vision.steps`); dicts, lists and None are left out."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            values.update(scalar_fields(value, f"{prefix}{f.name}."))
        elif isinstance(value, int | float | str):
            values[prefix + f.name] = value
    return values


def none_if_off(value):
    """`log_with` and the like: "none", "null" or "" (from YAML or the command line) mean off."""
    return None if isinstance(value, str) and value.lower() in ("", "none", "null") else value


def field_groups(cls) -> dict[str, list[str]]:
    """The config's fields by concern, for `--help`: each class in the MRO may declare `help_groups`, a mapping of
    heading to field names (a subclass adds fields to a parent's heading or new headings); fields no class lists go
    under "Other". Naming a field the class does not have is an error."""
    groups: dict[str, list[str]] = {}
    for klass in reversed(cls.__mro__):
        for heading, names in vars(klass).get("help_groups", {}).items():
            groups.setdefault(heading, []).extend(names)
    names = [f.name for f in dataclasses.fields(cls)]
    listed = [name for members in groups.values() for name in members]
    unknown = sorted(set(listed) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}.help_groups names fields it does not have: {unknown}")
    rest = [name for name in names if name not in listed]
    if rest:
        groups["Other"] = rest
    return groups


def _fields_help(cls, prefix: str = "") -> list[str]:
    lines = []
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for heading, names in field_groups(cls).items():
        if not prefix:
            lines.append(f"\n{heading}:")
        for name in names:
            f = by_name[name]
            if dataclasses.is_dataclass(hints[f.name]):
                lines += _fields_help(hints[f.name], prefix + f.name + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  --{prefix}{f.name}: {f.metadata.get('help', '')} (default: {default!r})")
    return lines


def parse_args(cls, argv: list[str] | None = None):
    """Parse `--config FILE.yaml` and `--key value` overrides into dataclass `cls` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=inspect.cleandoc(cls.__doc__ or ""),
        epilog="config fields, in the YAML file or as --key value:\n" + "\n".join(_fields_help(cls)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of config fields; command-line overrides apply on top")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    while rest:
        argument = rest.pop(0)
        if not argument.startswith("--") or argument == "--":
            parser.error(f"expected --key value, got {argument!r}")
        key, has_value, value = argument[2:].partition("=")
        if not has_value:
            value = "true" if not rest or rest[0].startswith("--") else rest.pop(0)
        overrides[key] = yaml.safe_load(value)
    return load_config(cls, args.config, overrides)
