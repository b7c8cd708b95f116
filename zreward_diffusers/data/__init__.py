"""The data layer: records and pairs, validation, readers, public-format mappers and collators.

- `records`: `Record` (one image for one prompt, with labels, histograms, rationales, meta) and `Pair`.
- `dataset`: `RewardDataset` (validated records and pairs on a rubric scale) and our on-disk format.
- `validation`: row-by-row checks; `DataValidationError`, or skipping with `skip_bad_rows=True`.
- `readers`: JSONL / CSV / parquet files and `datasets.Dataset`s through a `column_map`; `load_dataset`.
- `formats`: ImageRewardDB-, Pick-a-Pic-, HPDv2-, HPDv3-, RichHF-18K-, EvalMuse-40K-, Rapidata- and GenAI-Bench-style
  sources (their scale mappings: docs/datasets.md).
- `collate`: GDSO prompt groups, pairs from labels, `DataLoader` collate functions.
"""

from .collate import PromptGroups, collate_pairs, collate_records, label_pairs, prompt_groups
from .dataset import DEFAULT_DIMENSIONS, DEFAULT_LEVELS, RewardDataset
from .formats import (
    IMAGEREWARD_RATING_LABELS,
    RAPIDATA_SCORE_LABELS,
    RICHHF_SCORE_LABELS,
    from_evalmuse,
    from_genai_bench,
    from_hpdv2,
    from_hpdv3,
    from_imagereward_db,
    from_pickapic,
    from_rapidata,
    from_richhf18k,
)
from .readers import from_hf_dataset, load_dataset, read_records
from .records import Pair, Record
from .validation import BadRow, DataValidationError

__all__ = [
    "BadRow",
    "DEFAULT_DIMENSIONS",
    "DEFAULT_LEVELS",
    "DataValidationError",
    "IMAGEREWARD_RATING_LABELS",
    "Pair",
    "PromptGroups",
    "RAPIDATA_SCORE_LABELS",
    "RICHHF_SCORE_LABELS",
    "Record",
    "RewardDataset",
    "collate_pairs",
    "collate_records",
    "from_evalmuse",
    "from_genai_bench",
    "from_hf_dataset",
    "from_hpdv2",
    "from_hpdv3",
    "from_imagereward_db",
    "from_pickapic",
    "from_rapidata",
    "from_richhf18k",
    "label_pairs",
    "load_dataset",
    "prompt_groups",
    "read_records",
]
