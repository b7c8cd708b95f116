"""Optional dependencies: imported where they are used, with the extra that installs them named in the error."""

from __future__ import annotations

import importlib
from types import ModuleType

# module → the `pip install "zreward-diffusers[<extra>]"` extra that provides it
EXTRAS = {"open_clip": "clip", "matplotlib": "training", "datasets": "training", "yaml": "training",
          "tensorboard": "training"}


def import_optional(name: str) -> ModuleType:
    """`importlib.import_module(name)`, or an `ImportError` that says which extra installs it.

    >>> import_optional("json").__name__
    'json'
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name.split(".")[0]:
            raise  # the module exists but one of its own imports failed
        extra = EXTRAS.get(name.split(".")[0])
        hint = f'pip install "zreward-diffusers[{extra}]"' if extra else f"pip install {name.split('.')[0]}"
        raise ImportError(f"{name} is needed here but is not installed: {hint}") from error
