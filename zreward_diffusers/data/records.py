"""The rows of a reward dataset: a scored image (`Record`) and a human preference between two images (`Pair`).

A `Record` is one image generated for one prompt, with what is known about it: per-dimension labels on the
rubric's level scale (e.g. 3.5 on 1.0-5.0), per-dimension annotator histograms over the K levels, per-dimension
rationales (the teacher's cold start) and free-form `meta` (the synthetic world stores the true attributes and
the oracle scores there). Records of the same prompt share a `group_id`; GDSO and the pairwise terms compare
images within a group only (docs/method.md, 'GDSO').

A `Pair` says which of two records of one group people preferred, overall (`dimension=None`) or on one
dimension.

>>> record = Record("r0", "two red circles", "images/r0.png", "p0", labels={"alignment": 3.5})
>>> record.to_dict()["labels"]
{'alignment': 3.5}
>>> Record.from_dict(record.to_dict()) == record
True
>>> Pair("p0", "r0", "r1", preference=1).to_dict()
{'group_id': 'p0', 'record_a': 'r0', 'record_b': 'r1', 'preference': 1, 'dimension': None}
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from PIL import Image

__all__ = ["Pair", "Record", "resolve_image_path"]


@dataclass
class Record:
    """One image for one prompt, with its labels.

    Args:
        record_id: unique, non-empty identifier within the dataset.
        prompt: the text prompt the image was generated for.
        image: a path (relative to the dataset root, or absolute) or an in-memory `PIL.Image.Image`.
        group_id: the prompt group (images of the same prompt share it).
        labels: rubric dimension -> score on the level scale, within `[v_1, v_K]` (not necessarily on a level).
        histograms: rubric dimension -> annotator counts per level (length K, non-negative, positive sum).
        rationales: rubric dimension -> reasoning text written before the score (teacher cold start).
        meta: free-form, JSON-serialisable information (e.g. the true attributes of a synthetic image).
    """

    record_id: str
    prompt: str
    image: str | Image.Image
    group_id: str
    labels: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, list[float]] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def label(self, dimension: str | None) -> float | None:
        """The label of `dimension`; for `None` (overall), the mean of all the record's labels; `None` if absent.

        >>> Record("r", "p", "r.png", "g", labels={"alignment": 2.0, "realism": 4.0}).label(None)
        3.0
        """
        if dimension is not None:
            value = self.labels.get(dimension)
            return None if value is None else float(value)
        if not self.labels:
            return None
        return sum(float(value) for value in self.labels.values()) / len(self.labels)

    def to_dict(self) -> dict:
        """A JSON-ready dict; the image must be a path (in-memory images are written by `RewardDataset.save`)."""
        if not isinstance(self.image, str):
            raise TypeError(f"record {self.record_id!r}: only a path image can be serialised, got an in-memory image")
        return _shallow_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """The inverse of `to_dict`; a ValueError names missing or unknown keys."""
        return cls(**_checked_keys(cls, data))


@dataclass
class Pair:
    """A human preference between two records of the same group.

    Args:
        group_id: the group both records belong to.
        record_a / record_b: the record ids compared.
        preference: +1 when `record_a` is preferred, -1 when `record_b` is preferred, 0 for a tie.
        dimension: the rubric dimension judged, or `None` for an overall preference.
    """

    group_id: str
    record_a: str
    record_b: str
    preference: int
    dimension: str | None = None

    def to_dict(self) -> dict:
        return _shallow_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Pair:
        """The inverse of `to_dict`; a ValueError names missing or unknown keys."""
        return cls(**_checked_keys(cls, data))


def _shallow_dict(instance) -> dict:
    """The fields as a dict without `dataclasses.asdict`'s deep copy (the values are JSON-ready already);
    writing 20,000 synthetic records spent most of its time deep-copying their `meta`."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def _checked_keys(cls: type, data: dict) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with the fields of a {cls.__name__}, got {type(data).__name__}")
    all_names = {f.name for f in fields(cls)}
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    unknown = sorted(set(data) - all_names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected some of {sorted(all_names)}")
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"missing {cls.__name__} fields {missing}")
    return data


def resolve_image_path(image: str, root: str | Path | None) -> Path:
    """Where a path image lives: `image` itself when absolute (or when there is no root), else `root / image`.

    >>> resolve_image_path("images/a.png", "/data/set").as_posix()
    '/data/set/images/a.png'
    >>> resolve_image_path("/elsewhere/a.png", "/data/set").as_posix()
    '/elsewhere/a.png'
    """
    path = Path(image)
    return path if root is None or path.is_absolute() else Path(root) / path
