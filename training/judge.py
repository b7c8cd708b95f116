"""A RISD teacher cache from any reasoning judge: its reasoning and scores, per image and dimension, become the
cached targets q̄(k|x) = (1/M) Σ_m p_T(k|x, r_m) (Z-Reward, arXiv 2606.09076, eq. 12 as reconstructed in
docs/method.md, 'Student: RISD'), so that `training.risd` distils a third-party judge (an API model, a larger VLM run
elsewhere, a human-written set of rationales) instead of sampling a Z-Reward teacher.

The cache has the layout and entry keys of `training.teacher_cache` (`key` from `input_key(image pixels, prompt,
dimension)`, `record_id`, `dimension`, `chains`, `finished`, `probs` (M × K), `mean` (K)); every judge chain counts as
finished. Its fingerprint hashes the judge file's bytes (or, for a callable, the judge name and settings the caller
gives) and the rubric levels, so an edited judge file gets a new cache.

JSONL format, one object per (image, dimension, sample); several lines of one (record, dimension) are its M chains,
in file order::

    {"record_id": "r0", "dimension": "alignment", "reasoning": "Two red circles, as asked ...", "score": 3.5}
    {"record_id": "r0", "dimension": "alignment", "reasoning": "...", "probs": [0, 0, 0, 0, 0.2, 0.8, 0, 0, 0]}

`reasoning` is a string; `score` a number in [v_1, v_K]; `probs` K non-negative numbers summing to 1 (within 1e-4;
they are renormalised). With `probs` the chain's distribution is `probs` (a `score` beside it is only range-checked:
it may be a sample from `probs`); with a `score` alone it is the two-level linear split that keeps the mean
(`two_level_split`), so q̄ over chains has the average score as its mean.

A record with the same image pixels and prompt as an earlier one shares its cache entry (the cache's key), and so
its judgement, as in `training.teacher_cache`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data import ImageBank
from .teacher_cache import TeacherCache, average_chains, input_key

FIELDS = ("record_id", "dimension", "reasoning", "score", "probs")
SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class JudgeSettings:
    """What a judge cache was built from (written to its `settings.json`)."""

    source: str
    sha256: str
    levels: tuple[float, ...]
    settings: dict = field(default_factory=dict)


def two_level_split(score: float, levels: Sequence[float]) -> np.ndarray:
    """The distribution on `levels` with mean `score`: all mass on the two levels around it, split linearly (a score
    on a level is one-hot there).

    >>> [round(p, 6) for p in two_level_split(3.3, [1.0 + 0.5 * k for k in range(9)]).tolist()]
    [0.0, 0.0, 0.0, 0.0, 0.4, 0.6, 0.0, 0.0, 0.0]
    >>> two_level_split(5.0, [1.0, 3.0, 5.0]).tolist()
    [0.0, 0.0, 1.0]
    """
    values = np.asarray(levels, dtype=np.float64)
    if not values[0] <= score <= values[-1]:
        raise ValueError(f"score {score} lies outside [{values[0]:g}, {values[-1]:g}]")
    upper = int(np.clip(np.searchsorted(values, score, side="right"), 1, len(values) - 1))
    lower = upper - 1
    weight = (score - values[lower]) / (values[upper] - values[lower])
    probs = np.zeros(len(values))
    probs[lower], probs[upper] = 1.0 - weight, weight
    return probs


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def chain_distribution(score, probs, levels: Sequence[float], where: str) -> np.ndarray:
    """One chain's distribution `(K,)` from a judge's `score` and/or `probs` (either may be None); a ValueError
    starts with `where` and names the field."""
    if score is None and probs is None:
        raise ValueError(f"{where}: needs a field 'score' or 'probs'")
    if score is not None:
        if not _number(score):
            raise ValueError(f"{where}: field 'score' must be a finite number, got {score!r}")
        if not levels[0] <= score <= levels[-1]:
            raise ValueError(f"{where}: field 'score' {score} lies outside [{levels[0]:g}, {levels[-1]:g}]")
    if probs is None:
        return two_level_split(float(score), levels)
    if not isinstance(probs, list) or len(probs) != len(levels):
        raise ValueError(f"{where}: field 'probs' must be a list of {len(levels)} numbers (one per level), "
                         f"got {probs!r}")
    if not all(_number(p) and p >= 0 for p in probs):
        raise ValueError(f"{where}: field 'probs' must hold finite non-negative numbers, got {probs!r}")
    total = math.fsum(probs)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{where}: field 'probs' must sum to 1, sums to {total:.6g}")
    return np.asarray(probs, dtype=np.float64) / total


def _plain(value, where: str) -> tuple[float | None, list[float] | None]:
    """A callable's `score_or_probs` as `(score, None)` or `(None, probs)` of Python floats (numpy values pass)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value), None
    if isinstance(value, list | tuple | np.ndarray) and all(
            isinstance(p, numbers.Real) and not isinstance(p, bool) for p in value):
        return None, [float(p) for p in value]
    raise ValueError(f"{where}: score_or_probs must be a number (a score) or a list of numbers (probs), got {value!r}")


def _entry(key: str, record_id: str, dimension: str, chains: list[str], probs: list[np.ndarray]) -> dict:
    matrix = np.stack(probs)
    finished = [True] * len(chains)
    return {"key": key, "record_id": record_id, "dimension": dimension, "chains": chains, "finished": finished,
            "probs": matrix.round(8).tolist(), "mean": average_chains(matrix, finished).round(8).tolist()}


def _store(entries: list[dict], cache_dir, fingerprint: str, settings: JudgeSettings, rank: int,
           write: bool) -> TeacherCache:
    cache = TeacherCache(cache_dir, fingerprint, settings, rank=rank)
    if write:
        cached = cache.load()
        new, seen = [], set(cached)
        for entry in entries:
            if entry["key"] not in seen:
                new.append(entry)
                seen.add(entry["key"])
        if new:
            cache.append(new)
    return cache


def _check_dimensions(rubric, dimensions) -> tuple[str, ...]:
    dimensions = tuple(dimensions)
    if not dimensions:
        raise ValueError("`dimensions` must name at least one rubric dimension")
    for dimension in dimensions:
        rubric.dimension_index(dimension)
    return dimensions


def judge_jsonl_entries(path: str | Path, dataset, rubric, dimensions, bank: ImageBank | None = None) -> list[dict]:
    """The cache entries of a judge JSONL for every (record, dimension) of `dataset` × `dimensions`, in that order;
    a ValueError names the file, the line and the field of the first bad line (or the record and dimension no line
    covers)."""
    path = Path(path)
    dimensions = _check_dimensions(rubric, dimensions)
    levels = rubric.levels
    known = {record.record_id for record in dataset.records}
    chains: dict[tuple[str, str], tuple[list[str], list[np.ndarray]]] = {}
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(line, dict):
                raise ValueError(f"{where}: expected a JSON object with fields {list(FIELDS)}, got "
                                 f"{type(line).__name__}")
            unknown = sorted(set(line) - set(FIELDS))
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {unknown}; a judge line has {list(FIELDS)}")
            for name in ("record_id", "dimension", "reasoning"):
                if not isinstance(line.get(name), str):
                    raise ValueError(f"{where}: field {name!r} must be a string, got {line.get(name)!r}")
            if line["record_id"] not in known:
                raise ValueError(f"{where}: field 'record_id': unknown record {line['record_id']!r} (not in the "
                                 "dataset)")
            if line["dimension"] not in rubric.dimension_names:
                raise ValueError(f"{where}: field 'dimension': unknown dimension {line['dimension']!r}; the rubric "
                                 f"has {list(rubric.dimension_names)}")
            probs = chain_distribution(line.get("score"), line.get("probs"), levels, where)
            texts, distributions = chains.setdefault((line["record_id"], line["dimension"]), ([], []))
            texts.append(line["reasoning"])
            distributions.append(probs)
    bank = ImageBank(dataset) if bank is None else bank
    entries = []
    for n, record in enumerate(dataset.records):
        for dimension in dimensions:
            if (record.record_id, dimension) not in chains:
                raise ValueError(f"{path}: no judge line for record_id {record.record_id!r}, dimension "
                                 f"{dimension!r}")
            texts, distributions = chains[record.record_id, dimension]
            entries.append(_entry(input_key(bank.images[n], record.prompt, dimension), record.record_id, dimension,
                                  texts, distributions))
    return entries


def judge_file_fingerprint(path: str | Path, levels: Sequence[float]) -> tuple[str, str]:
    """`(fingerprint, sha256 of the file)`: the fingerprint hashes the file's bytes and the levels."""
    file_hash = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    digest = hashlib.sha256(b"judge-jsonl\0" + file_hash.encode() + json.dumps(list(levels)).encode())
    return "judge-" + digest.hexdigest()[:16], file_hash


def cache_from_judge_jsonl(path: str | Path, dataset, rubric, dimensions, cache_dir: str | Path, rank: int = 0,
                           write: bool = True, bank: ImageBank | None = None) -> TeacherCache:
    """The teacher cache of a judge's JSONL (module docstring) for `dataset` × `dimensions`, under
    `<cache_dir>/judge-<fingerprint>`; entries already there are kept. With `write=False` the file is only checked
    (the other processes under `accelerate launch`, while the main one writes)."""
    entries = judge_jsonl_entries(path, dataset, rubric, dimensions, bank)
    fingerprint, file_hash = judge_file_fingerprint(path, rubric.levels)
    settings = JudgeSettings(str(path), file_hash, tuple(rubric.levels))
    return _store(entries, cache_dir, fingerprint, settings, rank, write)


Judge = Callable[[Image.Image, str, str], list]


def cache_from_judge(fn: Judge, dataset, rubric, dimensions, cache_dir: str | Path, judge_name: str,
                     settings: dict | None = None, rank: int = 0, chunk_size: int = 32) -> TeacherCache:
    """The teacher cache of a judge callable `fn(image, prompt, dimension) -> [(reasoning, score_or_probs), ...]`
    (a number is a score, a list of K numbers a distribution) for `dataset` × `dimensions`.

    Its fingerprint hashes `judge_name`, `settings` (JSON-serialisable) and the levels: name a changed judge or
    setting differently. Inputs already cached are not judged again; new entries are appended every `chunk_size`
    inputs, so an interrupted build resumes. A ValueError names the record, dimension and chain of a bad output.
    """
    if not isinstance(judge_name, str) or not judge_name:
        raise ValueError(f"`judge_name` must be a non-empty string, got {judge_name!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}")
    dimensions = _check_dimensions(rubric, dimensions)
    settings = dict(settings or {})
    payload = json.dumps({"judge": judge_name, "settings": settings, "levels": list(rubric.levels)}, sort_keys=True)
    digest = hashlib.sha256(b"judge-callable\0" + payload.encode()).hexdigest()
    cache = TeacherCache(cache_dir, "judge-" + digest[:16], JudgeSettings(judge_name, digest, tuple(rubric.levels),
                                                                           settings), rank=rank)
    cached = cache.load()
    bank = ImageBank(dataset)
    pending = []
    for n, record in enumerate(dataset.records):
        for dimension in dimensions:
            key = input_key(bank.images[n], record.prompt, dimension)
            if key in cached:
                continue
            where = f"judge output for record_id {record.record_id!r}, dimension {dimension!r}"
            outputs = fn(bank.pil(n), record.prompt, dimension)
            if not isinstance(outputs, list | tuple) or not outputs:
                raise ValueError(f"{where}: expected a non-empty list of (reasoning, score_or_probs), got "
                                 f"{outputs!r}")
            texts, distributions = [], []
            for m, output in enumerate(outputs):
                chain_where = f"{where}, chain {m}"
                if not isinstance(output, list | tuple) or len(output) != 2 or not isinstance(output[0], str):
                    raise ValueError(f"{chain_where}: expected (reasoning: str, score_or_probs), got {output!r}")
                reasoning, value = output
                score, probs = _plain(value, chain_where)
                distributions.append(chain_distribution(score, probs, rubric.levels, chain_where))
                texts.append(reasoning)
            entry = _entry(key, record.record_id, dimension, texts, distributions)
            cached[key] = entry
            pending.append(entry)
            if len(pending) >= chunk_size:
                cache.append(pending)
                pending = []
    if pending:
        cache.append(pending)
    return cache
