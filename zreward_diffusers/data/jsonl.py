"""JSON Lines: one JSON object per line, UTF-8; blank lines are allowed and skipped.

>>> import io
>>> list(parse_jsonl(io.StringIO('{"a": 1}\\n\\nnot json\\n')))  # doctest: +ELLIPSIS
[(1, {'a': 1}, None), (3, None, 'invalid JSON: ...')]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["parse_jsonl", "write_jsonl"]


def parse_jsonl(lines: TextIO) -> Iterator[tuple[int, object, str | None]]:
    """Yield `(line_number, value, error)` per non-blank line: `value` parsed, or `error` saying why not (1-based)."""
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line), None
        except json.JSONDecodeError as error:
            yield line_number, None, f"invalid JSON: {error}"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write `rows` as JSON Lines (non-ASCII kept as is); a TypeError names a value JSON cannot hold."""
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
