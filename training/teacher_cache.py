"""The teacher cache of RISD: for each input, M sampled reasoning chains, the score distribution read after each, and
their average q̄(k|x) = (1/M) Σ_m p_T(k|x, r_m) (Z-Reward, arXiv 2606.09076, eq. 12 as reconstructed in
docs/method.md, 'Student: RISD') — computed once, on disk, reused by every student run.

Layout: `<cache_dir>/<fingerprint>/entries.jsonl`, one JSON object per input (`key`, `record_id`, `dimension`,
`chains`, `finished`, `probs` (M × K), `mean` (K)), and `settings.json`. Under `accelerate launch` process `r > 0`
appends to its own `entries.<r>.jsonl` (a process only ever writes, and cuts a torn line off, its own file; every
process reads all of them), so no process can cut off a line another one is still writing. The fingerprint hashes
the teacher's weights and processor files, its rubric and the sampling settings, so a changed teacher or setting gets
a new cache. An input's key hashes its image pixels, prompt and dimension (the same image and prompt hit the cache
under any record id).

Inputs are processed in fixed chunks of the ordered input list, each sampled with a seed of its own; a chunk is
appended (and flushed to disk) whole, so an interrupted build resumes at the first missing chunk and ends with the
same cache as an uninterrupted one. Cached entries are never resampled (a grown dataset samples only its new
inputs). Malformed chains (reasoning never closed) are left out of q̄ when at least one chain of the input is well
formed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zreward_diffusers.checkpoint import CONFIG_NAME

from .data import ImageBank
from .sequences import Row, RowEncoder, forward_rows, sample_reasoning
from .state import AppendLog

logger = logging.getLogger(__name__)

ENTRIES_FILE = "entries.jsonl"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class CacheSettings:
    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    chunk_size: int = 32
    seed: int = 0


def teacher_fingerprint(teacher_dir: str | Path, settings: CacheSettings) -> str:
    """sha256 (16 hex digits) of the teacher's weight, config and processor files and the sampling settings."""
    digest = hashlib.sha256()
    directory = Path(teacher_dir)
    files = sorted(p for p in directory.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".json", ".jinja", ".txt", ".model")))
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{str(directory)!r} holds no safetensors weights: not a teacher checkpoint")
    for path in files:
        if path.name == CONFIG_NAME:  # its library/transformers versions do not change the teacher
            config = json.loads(path.read_text())
            payload = json.dumps({k: config.get(k) for k in ("rubric", "backbone", "family", "quantize",
                                                             "preprocessing")}, sort_keys=True).encode()
        else:
            payload = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(payload).digest())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def input_key(image: np.ndarray | torch.Tensor, prompt: str, dimension: str) -> str:
    array = np.ascontiguousarray(image.numpy() if isinstance(image, torch.Tensor) else image, dtype=np.uint8)
    digest = hashlib.sha256(str(array.shape).encode() + array.tobytes())
    digest.update(b"\0" + prompt.encode() + b"\0" + dimension.encode())
    return digest.hexdigest()


class TeacherCache:
    """Entries of one (teacher, settings) fingerprint under `cache_dir`, as seen by process `rank`."""

    def __init__(self, cache_dir: str | Path, fingerprint: str, settings: CacheSettings, rank: int = 0):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"`rank` must be a non-negative integer, got {rank!r}")
        self.rank = rank
        self.directory = Path(cache_dir) / fingerprint
        self.settings = settings
        self.directory.mkdir(parents=True, exist_ok=True)
        settings_path = self.directory / SETTINGS_FILE
        if not settings_path.exists():  # processes may get here together: each writes its own temporary file
            temporary = settings_path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(asdict(settings), indent=2))
            temporary.replace(settings_path)
        self.log = AppendLog(self.directory, ENTRIES_FILE.removesuffix(".jsonl"), rank)
        self.path = self.log.path  # the only file this process writes

    def load(self) -> dict[str, dict]:
        """Every complete entry of every process's file (`training.state.AppendLog`)."""
        return {entry["key"]: entry for entry in self.log.read()}

    def append(self, entries: list[dict]) -> None:
        self.log.append(entries)


def average_chains(probs: np.ndarray, finished: list[bool]) -> np.ndarray:
    """q̄: the mean of the well-formed chains' distributions (all chains if none is well formed)."""
    keep = np.asarray(finished, dtype=bool)
    chosen = probs[keep] if keep.any() else probs
    return chosen.mean(axis=0)


@torch.no_grad()
def build_teacher_cache(model, processor, rubric, dataset, dimensions, cache: TeacherCache, device="cpu",
                        progress: bool = True, rank: int = 0, world_size: int = 1) -> dict[str, dict]:
    """Fill `cache` for every (record, dimension) of `dataset`; returns `{key: entry}` for those inputs.

    With `world_size` > 1 each process fills the chunks `rank::world_size`; read the cache after a barrier.
    """
    if cache.rank != rank:
        raise ValueError(f"`cache` was opened for process {cache.rank}, not for `rank` {rank}: each process appends "
                         "to its own entries file")
    settings = cache.settings
    bank = ImageBank(dataset)
    encoder = RowEncoder(processor, rubric, bank.images)
    inputs = []
    for n, record in enumerate(dataset.records):
        for dimension in dimensions:
            inputs.append((input_key(bank.images[n], record.prompt, dimension), n, record, dimension))
    entries = cache.load()
    chunks = [inputs[i:i + settings.chunk_size] for i in range(0, len(inputs), settings.chunk_size)]
    todo = [(c, chunk) for c, chunk in enumerate(chunks)
            if c % world_size == rank and any(key not in entries for key, *_ in chunk)]
    model.eval()
    read_ids = encoder.read_token_ids.to(device)
    bar = tqdm(total=len(todo), desc="teacher cache", unit="chunk", disable=not progress)
    for c, chunk in todo:
        chunk = [item for item in chunk if item[0] not in entries]  # inputs already cached keep their entries
        rows = [Row(n, record.prompt, dimension) for _, n, record, dimension in chunk]
        seed = int(np.random.SeedSequence([settings.seed, c]).generate_state(1)[0])
        chains, finished = sample_reasoning(model, encoder, rows, settings.num_samples, settings.max_new_tokens,
                                            settings.temperature, settings.top_p, generator_seed=seed)
        expanded = [Row(r.image, r.prompt, r.dimension, chain) for r, cs in zip(rows, chains, strict=True)
                    for chain in cs]
        batch = {k: v.to(device) for k, v in encoder(expanded).items()}
        probs = forward_rows(model, batch, read_ids).score_log_probs.exp().double().cpu().numpy()
        probs = probs.reshape(len(rows), settings.num_samples, -1)
        new = []
        for i, (key, _, record, dimension) in enumerate(chunk):
            new.append({"key": key, "record_id": record.record_id, "dimension": dimension, "chains": chains[i],
                        "finished": finished[i], "probs": probs[i].round(8).tolist(),
                        "mean": average_chains(probs[i], finished[i]).round(8).tolist()})
        cache.append(new)
        entries.update({entry["key"]: entry for entry in new})
        bar.update(1)
    bar.close()
    return {key: entries[key] for key, *_ in inputs if key in entries}
