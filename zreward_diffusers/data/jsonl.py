"""JSON Lines: one JSON object per line, UTF-8; blank lines are allowed and skipped.

A line that cannot be read — not UTF-8, not JSON, a number of more than 4300 digits, or nested deeper than
`MAX_JSON_DEPTH` — is reported with its line number; the lines after it are still read.

>>> import io
>>> list(parse_jsonl(io.StringIO('{"a": 1}\\n\\nnot json\\n')))  # doctest: +ELLIPSIS
[(1, {'a': 1}, None), (3, None, 'invalid JSON: ...')]
>>> lines = [b'{"a": 1}\\n', b'\\xff\\n', b'[[[[1]]]]\\n']  # bytes: a file opened in binary mode
>>> for number, value, error in parse_jsonl(lines, max_depth=3):
...     print(number, value if error is None else error[:30])
1 {'a': 1}
2 not UTF-8 text: 'utf-8' codec
3 JSON nested deeper than 3 leve
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["MAX_JSON_DEPTH", "json_depth", "parse_json", "parse_jsonl", "read_json_object", "write_jsonl"]

# Deeper values are refused: nothing in a reward dataset nests this deep, and such values make recursive code
# (json.dumps, repr, comparisons) fail far from where they were read.
MAX_JSON_DEPTH = 64


def json_depth(value, limit: int | None = None) -> int:
    """Nesting depth of lists and dicts (a scalar is 0, `[1]` is 1), computed without recursion; stops counting
    once past `limit`."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            depth = max(depth, level)
            if limit is not None and depth > limit:
                return depth
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return depth


def parse_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> tuple[object, str | None]:
    """`(value, None)`, or `(None, why not)` for text that is not JSON, holds an integer of more than 4300 digits
    or nests deeper than `max_depth`; never raises for bad input."""
    try:
        value = json.loads(text)
    except RecursionError:
        return None, f"JSON nested deeper than {max_depth} levels"
    except ValueError as error:  # JSONDecodeError, and the integer digit limit
        return None, f"invalid JSON: {str(error)[:200]}"
    if json_depth(value, max_depth) > max_depth:
        return None, f"JSON nested deeper than {max_depth} levels"
    return value, None


def read_json_object(path: str | Path) -> dict:
    """The JSON object in the file `path` (a config or an index); a `ValueError` naming the file when it is not UTF-8,
    not JSON, nested too deep (`parse_json`) or not an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: not UTF-8 text ({error})") from None
    value, error = parse_json(text)
    if error is not None:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}")
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value


def parse_jsonl(
    lines: Iterable[str | bytes], max_depth: int = MAX_JSON_DEPTH
) -> Iterator[tuple[int, object, str | None]]:
    """Yield `(line_number, value, error)` per non-blank line: `value` parsed, or `error` saying why not (1-based).

    `lines` are text, or bytes decoded here line by line (a file opened in binary mode), so that one line that is
    not UTF-8 is reported instead of stopping the read.
    """
    for line_number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield line_number, None, f"not UTF-8 text: {error}"
                continue
        if line_number == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark
        if not line.strip():
            continue
        value, error = parse_json(line, max_depth)
        yield line_number, value, error


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write `rows` as JSON Lines (non-ASCII kept as is); a TypeError names a value JSON cannot hold."""
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
