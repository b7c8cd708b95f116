"""The teacher's cold start at scale: rubric rationales for a labelled dataset, written by a local instruct VLM that
is told the human score, kept only when they lead the annotator itself to that score (Z-Reward, arXiv 2606.09076:
the cold-start rationales that `training.sft` trains the reasoning teacher on before GDSO; docs/method.md, §4.1
'Cold start').

    python -m training.annotate --annotator Qwen/Qwen2.5-VL-7B-Instruct --data runs/data --output_dir runs/annotated
    accelerate launch -m training.annotate --config my_annotate.yaml

For each (record, dimension) with a label the annotator sees the image, the rubric's question and the human score
(`instruction`) and writes an explanation (batched generation: transformers, or vLLM with `backend: vllm`). The
consistency filter then reads the annotator's own score distribution after that rationale the way the teacher will
be read — the rubric's prompt *without* the label, the rubric's reasoning template around the rationale, the score
token read after the answer prefix (`training.sequences.RowEncoder`, always transformers) — and keeps the rationale
only when |E[score] − label| ≤ `tolerance`. A rejected (or empty, or, with `require_finished`, cut-off) rationale is
written again with a new seed, up to `attempts` tries; the failures are recorded.

Inputs are processed in fixed chunks of `batch_size` (record, dimension) pairs, chunk c sampled with seeds drawn
from (seed, c, attempt), so the result does not depend on interruptions or on the number of processes. Each chunk's
results are appended as one line to `<output_dir>/annotations.jsonl` (process r > 0 under `accelerate launch`:
`annotations.<r>.jsonl`; process r takes the chunks r::world_size), flushed and fsynced; a torn last line is cut, a
rerun skips the chunks done and ends with the same bytes as an uninterrupted run. At the end the main process writes

    <output_dir>/dataset/       the input records with `rationales` set to the kept rationales of the annotated
                                dimensions (a rejected pair has none; other dimensions keep theirs), a `RewardDataset`
                                with its images copied in, written atomically
    <output_dir>/summary.json   kept / rejected per dimension and the mean |E[score] − label|

`settings.json` records what the annotations depend on; a rerun with other settings in the same `output_dir` is
refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import string
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from zreward_diffusers.checkpoint import CONFIG_NAME
from zreward_diffusers.data import RewardDataset, load_dataset

from .config import check_at_least, check_choice, parse_args
from .sequences import Row, RowEncoder, forward_rows
from .state import AppendLog, write_text_atomic
from .trainer import load_base

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "summary.json"
DATASET_DIR = "dataset"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INSTRUCTION_FIELDS = ("prompt", "dimension", "question", "label", "low", "high")
DEFAULT_INSTRUCTION = (
    'Prompt: "{prompt}"\nDimension: {dimension}. {question}\n'
    "Human raters gave this image {label:g} on this dimension, on a scale from {low:g} to {high:g}. Explain, looking "
    "at the image, what justifies that score: describe what you see that raises or lowers it. Do not state the score."
)


@dataclass
class AnnotateConfig:
    """Write rubric rationales for a labelled dataset with a local instruct VLM, conditioned on the labels and kept
    when the annotator's own read of its rationale lands within `tolerance` of the label.

    `python -m training.annotate --annotator <VLM> --data <RewardDataset dir> --output_dir runs/annotated`
    """

    help_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("annotator", "trust_remote_code", "dtype", "backend", "vllm_args"),
        "Data": ("data", "dimensions", "output_dir"),
        "Generation": ("instruction", "batch_size", "max_new_tokens", "temperature", "seed"),
        "Consistency filter": ("tolerance", "attempts", "require_finished"),
    }

    annotator: str | None = field(default=None, metadata={
        "help": "the annotator: a local directory or hub id of a plain instruct VLM, or a Z-Reward checkpoint"})
    data: str | None = field(default=None, metadata={
        "help": "the labelled dataset: a RewardDataset directory or a JSONL/CSV/parquet file "
                "(zreward_diffusers.data.load_dataset)"})
    output_dir: str = field(default="runs/annotated", metadata={
        "help": "annotations*.jsonl (resumable), settings.json, dataset/ (the annotated RewardDataset), summary.json"})
    dimensions: list | None = field(default=None, metadata={
        "help": "rubric dimensions to annotate (default: those the dataset has labels on)"})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={
        "help": "the annotator's user message after the image; fields {prompt}, {dimension}, {question}, {label}, "
                "{low}, {high} ({label} required)"})
    batch_size: int = field(default=16, metadata={"help": "(record, dimension) pairs per chunk and generation call"})
    max_new_tokens: int = field(default=256, metadata={"help": "rationale length limit in tokens"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (0: greedy, one attempt)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the sampling (chunk c, attempt a: a seed drawn from (seed, c, a))"})
    tolerance: float = field(default=0.5, metadata={
        "help": "keep a rationale when |E[score] − label| ≤ tolerance, E read after it without the label"})
    attempts: int = field(default=3, metadata={"help": "tries per (record, dimension), each with a new seed"})
    require_finished: bool = field(default=True, metadata={
        "help": "reject a rationale cut off at max_new_tokens (the annotator never ended its answer)"})
    dtype: str = field(default="float32", metadata={"help": "annotator weights: float32, bfloat16 or float16"})
    backend: str = field(default="transformers", metadata={
        "help": "generation backend: transformers or vllm (the consistency read always uses transformers)"})
    vllm_args: dict = field(default_factory=dict, metadata={
        "help": "extra vllm.LLM arguments, e.g. {gpu_memory_utilization: 0.5, max_model_len: 4096}"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code of the annotator"})

    def __post_init__(self):
        for name in ("annotator", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"`{name}` is required, got {getattr(self, name)!r}")
        check_at_least(self, 1, "batch_size", "max_new_tokens", "attempts")
        check_choice(self, "backend", ("transformers", "vllm"))
        check_choice(self, "dtype", tuple(DTYPES))
        for name in ("tolerance", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if self.temperature == 0 and self.attempts > 1:
            raise ValueError(f"`attempts` > 1 needs `temperature` > 0 (greedy decoding writes the same rationale "
                             f"again), got attempts={self.attempts}, temperature=0")
        if self.dimensions is not None and (not isinstance(self.dimensions, list) or not self.dimensions):
            raise ValueError(f"`dimensions` must be a non-empty list of rubric dimensions, got {self.dimensions!r}")
        if not isinstance(self.vllm_args, dict):
            raise ValueError(f"`vllm_args` must be a mapping of vllm.LLM arguments, got {self.vllm_args!r}")
        check_instruction(self.instruction)
        if self.backend == "vllm":
            import_vllm()
            if (Path(self.annotator) / CONFIG_NAME).is_file():
                raise ValueError(f"`backend` vllm needs a plain Hugging Face model as `annotator`; {self.annotator!r} "
                                 "is a Z-Reward checkpoint (use backend transformers)")


def check_instruction(instruction) -> None:
    """A ValueError naming `instruction` unless it is a format string with only the known fields and `{label}`."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(instruction) if name is not None}
        instruction.format(prompt="", dimension="", question="", label=1.0, low=1.0, high=5.0)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
        raise ValueError(f"`instruction` must be a format string with the fields {list(INSTRUCTION_FIELDS)}, got "
                         f"{instruction!r} ({error!r})") from None
    if "label" not in names:
        raise ValueError(f"`instruction` must contain {{label}} (the annotator is told the human score), got "
                         f"{instruction!r}")


def import_vllm():
    """The `vllm` module, or a ValueError naming `backend`."""
    try:
        import vllm
    except ImportError as error:
        raise ValueError(f"`backend` vllm needs the vllm package, which is not importable here ({error}); install "
                         "it or use backend transformers") from None
    return vllm


def chunk_seed(seed: int, chunk: int, attempt: int) -> int:
    """The sampling seed of one attempt on one chunk: a function of (seed, chunk, attempt) only."""
    return int(np.random.SeedSequence([seed, chunk, attempt]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ generation
class TransformersBackend:
    """Batched sampling with `model.generate` on left-padded processor inputs."""

    def __init__(self, model, processor, max_new_tokens: int, temperature: float):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        tokenizer = processor.tokenizer
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def generate(self, images: list[Image.Image], texts: list[str], seed: int) -> list[tuple[str, bool]]:
        """`(text, finished)` per (image, chat-templated text); `finished`: the answer ended before the limit."""
        device = next(self.model.parameters()).device
        inputs = self.processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        sampling = dict(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0) if self.temperature > 0 \
            else dict(do_sample=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id,
                                            **sampling)
        results = []
        for row in generated[:, inputs["input_ids"].shape[1]:].tolist():
            end = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
            text = self.processor.tokenizer.decode(row if end is None else row[:end], skip_special_tokens=True)
            results.append((text, end is not None))
        return results


class VLLMBackend:
    """Batched sampling with vLLM's `LLM.generate` (`multi_modal_data` images), one seed per request."""

    def __init__(self, annotator: str, max_new_tokens: int, temperature: float, seed: int, dtype: str,
                 trust_remote_code: bool, llm_args: dict):
        self.vllm = import_vllm()
        self.llm = self.vllm.LLM(model=annotator, trust_remote_code=trust_remote_code, seed=seed, dtype=dtype,
                                 **llm_args)
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def generate(self, images: list[Image.Image], texts: list[str], seed: int) -> list[tuple[str, bool]]:
        requests = [{"prompt": text, "multi_modal_data": {"image": image}}
                    for image, text in zip(images, texts, strict=True)]
        seeds = np.random.SeedSequence(seed).generate_state(len(requests))
        params = [self.vllm.SamplingParams(temperature=self.temperature, top_p=1.0, max_tokens=self.max_new_tokens,
                                           seed=int(s)) for s in seeds]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [(output.outputs[0].text, output.outputs[0].finish_reason == "stop") for output in outputs]


# ------------------------------------------------------------------------------------------------ reading
@torch.no_grad()
def read_expected_scores(model, encoder: RowEncoder, rows: list[Row], levels: torch.Tensor) -> list[float]:
    """E[score] = Σ_k p(k | image, rubric prompt, reasoning) v_k per row, the teacher's read of each rationale."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in encoder(rows).items()}
    probs = forward_rows(model, batch, encoder.read_token_ids.to(device)).score_log_probs.double().exp().cpu()
    return (probs * levels.double()).sum(-1).tolist()


def clean_rationale(text: str, rubric) -> str:
    """The rationale text: cut at the rubric's reasoning end marker (it would close the reasoning early), stripped."""
    suffix = rubric.reasoning_suffix.strip()
    stop = suffix.splitlines()[0] if suffix else None
    if stop and stop in text:
        text = text.split(stop)[0]
    return text.strip()


def decide(rationale: str, finished: bool, expected: float | None, label: float, tolerance: float,
           require_finished: bool) -> str:
    """`kept`, or why not: `empty`, `unfinished` or `inconsistent` (|E − label| > tolerance)."""
    if not rationale:
        return "empty"
    if require_finished and not finished:
        return "unfinished"
    return "kept" if abs(expected - label) <= tolerance else "inconsistent"


# ------------------------------------------------------------------------------------------------ the run
class ResultsLog:
    """The chunks done, one JSON line each, in `annotations.jsonl` (process r > 0: `annotations.<r>.jsonl`), through
    `training.state.AppendLog` as the teacher cache keeps its entries."""

    def __init__(self, directory: Path, rank: int):
        self.log = AppendLog(directory, "annotations", rank)
        self.path = self.log.path

    def load(self) -> dict[int, list[dict]]:
        return {value["chunk"]: value["results"] for value in self.log.read()}

    def append(self, chunk: int, results: list[dict]) -> None:
        self.log.append([{"chunk": chunk, "results": results}])


def dataset_fingerprint(dataset: RewardDataset) -> str:
    """sha256 of the records (ids, prompts, image paths, labels, ...) and the scale."""
    digest = hashlib.sha256(json.dumps([list(dataset.dimensions), list(dataset.levels)]).encode())
    for record in dataset.records:
        digest.update(json.dumps(record.to_dict(), sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def run_settings(config: AnnotateConfig, dataset: RewardDataset, dimensions) -> dict:
    """What the annotations depend on (not the output folder, nor the number of processes)."""
    settings = {key: value for key, value in asdict(config).items() if key not in ("output_dir", "vllm_args")}
    settings.update(dimensions=list(dimensions), data_sha256=dataset_fingerprint(dataset))
    return settings


def check_settings(directory: Path, settings: dict, is_main: bool) -> None:
    """Write `settings.json` in a new output folder; refuse one annotated with other settings."""
    path = directory / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
        if changed:
            raise ValueError(f"`output_dir` {str(directory)!r} holds annotations made with other settings "
                             f"(differing: {changed}); use another output_dir or delete it")
    elif is_main:
        write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def annotation_text(processor, rubric, instruction: str, prompt: str, dimension: str, label: float) -> str:
    """The annotator's chat text: the image, then `instruction` filled with the rubric's question and the label."""
    question = rubric.dimensions[rubric.dimension_index(dimension)].question
    text = instruction.format(prompt=prompt, dimension=dimension.replace("_", " "), question=question, label=label,
                              low=rubric.levels[0], high=rubric.levels[-1])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def chunk_images(dataset: RewardDataset, records) -> torch.Tensor:
    arrays = [np.asarray(dataset.load_image(record), dtype=np.uint8) for record in records]
    sizes = sorted({array.shape[:2] for array in arrays})
    if len(sizes) != 1:
        raise ValueError(f"the images of one chunk must share one size (resize the dataset first, as for training); "
                         f"found {sizes[:5]} among records {[r.record_id for r in records[:5]]}")
    return torch.from_numpy(np.stack(arrays))


def annotate_chunk(index: int, chunk: list[tuple], dataset, model, processor, rubric, backend,
                   config: AnnotateConfig) -> list[dict]:
    """Results of one chunk of `(record, dimension, label)`: every attempt's rationale, read and verdict."""
    records = list({id(record): record for record, _, _ in chunk}.values())
    position = {id(record): i for i, record in enumerate(records)}
    images = chunk_images(dataset, records)
    encoder = RowEncoder(processor, rubric, images)
    levels = rubric.levels_tensor()
    attempts: list[list[dict]] = [[] for _ in chunk]
    pending = list(range(len(chunk)))
    for attempt in range(config.attempts):
        if not pending:
            break
        texts = [annotation_text(processor, rubric, config.instruction, chunk[i][0].prompt, chunk[i][1], chunk[i][2])
                 for i in pending]
        pil = [Image.fromarray(images[position[id(chunk[i][0])]].numpy()) for i in pending]
        generated = backend.generate(pil, texts, chunk_seed(config.seed, index, attempt))
        rationales = [(clean_rationale(text, rubric), finished) for text, finished in generated]
        readable = [j for j, (text, finished) in enumerate(rationales)
                    if text and (finished or not config.require_finished)]
        rows = [Row(position[id(chunk[pending[j]][0])], chunk[pending[j]][0].prompt, chunk[pending[j]][1],
                    rationales[j][0]) for j in readable]
        expected = dict(zip(readable, read_expected_scores(model, encoder, rows, levels), strict=True)) if rows \
            else {}
        still = []
        for j, i in enumerate(pending):
            text, finished = rationales[j]
            value = round(expected[j], 8) if j in expected else None
            verdict = decide(text, finished, value, chunk[i][2], config.tolerance, config.require_finished)
            attempts[i].append({"rationale": text, "finished": finished, "expected": value, "verdict": verdict})
            if verdict != "kept":
                still.append(i)
        pending = still
    return [{"record_id": record.record_id, "dimension": dimension, "label": label,
             "kept": tries[-1]["verdict"] == "kept", "attempts": tries}
            for (record, dimension, label), tries in zip(chunk, attempts, strict=True)]


def summarise(results: list[dict], dimensions, config: AnnotateConfig) -> dict:
    """Kept and rejected counts per dimension, and the mean |E − label| of the final attempts that were read (all,
    and the kept ones)."""
    per_dimension = {}
    for dimension in dimensions:
        mine = [r for r in results if r["dimension"] == dimension]
        final = [r for r in mine if r["attempts"][-1]["expected"] is not None]
        kept = [r for r in final if r["kept"]]

        def mean_error(items):
            errors = [abs(r["attempts"][-1]["expected"] - r["label"]) for r in items]
            return round(sum(errors) / len(errors), 8) if errors else None

        reasons = {}
        for r in mine:
            if not r["kept"]:
                reasons[r["attempts"][-1]["verdict"]] = reasons.get(r["attempts"][-1]["verdict"], 0) + 1
        per_dimension[dimension] = {
            "kept": sum(r["kept"] for r in mine), "rejected": sum(not r["kept"] for r in mine),
            "rejected_by_reason": dict(sorted(reasons.items())), "mean_abs_error": mean_error(final),
            "mean_abs_error_kept": mean_error(kept),
            "mean_attempts": round(sum(len(r["attempts"]) for r in mine) / len(mine), 8) if mine else None,
        }
    return {"annotator": config.annotator, "data": config.data, "tolerance": config.tolerance,
            "kept": sum(d["kept"] for d in per_dimension.values()),
            "rejected": sum(d["rejected"] for d in per_dimension.values()), "per_dimension": per_dimension}


def annotated_dataset(dataset: RewardDataset, results: list[dict], dimensions, annotator: str) -> RewardDataset:
    """The input records with the kept rationales on the annotated dimensions (none where rejected)."""
    by_pair = {(r["record_id"], r["dimension"]): r for r in results}
    records = []
    for record in dataset.records:
        rationales = {d: text for d, text in record.rationales.items() if d not in dimensions}
        for dimension in dimensions:
            result = by_pair.get((record.record_id, dimension))
            if result is not None and result["kept"]:
                rationales[dimension] = result["attempts"][-1]["rationale"]
        records.append(replace(record, rationales=dict(sorted(rationales.items()))))
    description = f"{dataset.description}; rationales by {annotator} (training.annotate)".lstrip("; ")
    return RewardDataset(records, dataset.pairs, dataset.root, dataset.dimensions, dataset.levels, [], description)


def annotate(config: AnnotateConfig, progress: bool = True) -> dict:
    """Annotate (resuming), then write the annotated dataset and the summary; returns the summary."""
    state = Accelerator()  # under `accelerate launch`: this process's rank, device and the barrier
    rank, world_size = state.process_index, state.num_processes
    dataset = load_dataset(config.data)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = None
    if config.backend == "vllm":  # first: vLLM claims its share of the accelerator's memory
        backend = VLLMBackend(config.annotator, config.max_new_tokens, config.temperature, config.seed,
                              config.dtype, config.trust_remote_code, config.vllm_args)
    model, processor, rubric = load_base(config.annotator, config.trust_remote_code)
    if tuple(rubric.levels) != tuple(dataset.levels):
        raise ValueError(f"the dataset's levels {list(dataset.levels)} differ from the annotator rubric's "
                         f"{list(rubric.levels)}: labels must be on the rubric's scale")
    labelled = [d for d in dataset.dimensions if any(d in record.labels for record in dataset.records)]
    dimensions = tuple(config.dimensions or labelled)
    for dimension in dimensions:
        rubric.dimension_index(dimension)
    if not dimensions:
        raise ValueError(f"the dataset {config.data!r} has no labels to annotate")
    model.to(state.device, DTYPES[config.dtype]).eval()
    if backend is None:
        backend = TransformersBackend(model, processor, config.max_new_tokens, config.temperature)
    check_settings(out, run_settings(config, dataset, dimensions), state.is_main_process)
    items = [(record, dimension, record.label(dimension)) for record in dataset.records for dimension in dimensions
             if record.label(dimension) is not None]
    chunks = [items[i:i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    log = ResultsLog(out, rank)
    done = log.load()
    todo = [c for c in range(len(chunks)) if c % world_size == rank and c not in done]
    for c in tqdm(todo, desc="annotate", unit="chunk", disable=not (progress and state.is_local_main_process)):
        log.append(c, annotate_chunk(c, chunks[c], dataset, model, processor, rubric, backend, config))
    state.wait_for_everyone()
    done = log.load()
    missing = [c for c in range(len(chunks)) if c not in done]
    if missing:
        raise RuntimeError(f"chunks {missing[:10]} have no results after every process finished")
    results = [result for c in range(len(chunks)) for result in done[c]]
    summary = summarise(results, dimensions, config)
    if state.is_main_process:
        annotated_dataset(dataset, results, dimensions, config.annotator).save(out / DATASET_DIR, overwrite=True,
                                                                              copy_images=True)
        write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    state.wait_for_everyone()
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = parse_args(AnnotateConfig, argv)
    summary = annotate(config)
    logger.info("annotate: kept %d, rejected %d rationales; dataset in %s", summary["kept"], summary["rejected"],
                Path(config.output_dir) / DATASET_DIR)
    return summary


if __name__ == "__main__":
    main()
