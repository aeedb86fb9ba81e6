"""Limits on one row of data, so a hostile file fails with a line number, not a crash.

A row (a JSONL line, or a row of any other source) holds at most ``max_row_bytes()`` bytes of
text and nests at most ``MAX_DEPTH`` lists/objects deep, and its strings are real Unicode
(JSON's ``"\\ud800"`` escape decodes to a lone surrogate that no tokenizer or UTF-8 writer
accepts). Before these checks a 50 MB JSONL line took 16 GB on its way through the tokenizer
and JSON nested 100k deep ended in a RecursionError (issue 14).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tether.errors import DataError

__all__ = [
    "MAX_DEPTH",
    "MAX_ROW_BYTES",
    "MAX_ROW_BYTES_ENV",
    "check_row",
    "max_row_bytes",
    "parse_json",
    "too_big",
]

# Far above real data and far below what exhausts memory: 4 MiB is ~1M tokens of text (a
# 128k-token conversation is ~0.5 MB) and costs about 1 GB in the tokenizer.
MAX_ROW_BYTES = 4 * 2**20
MAX_ROW_BYTES_ENV = "TETHER_MAX_ROW_BYTES"  # raises (or lowers) MAX_ROW_BYTES
MAX_DEPTH = 64  # lists/objects inside one another; a conversation row needs 3


def max_row_bytes() -> int:
    """``MAX_ROW_BYTES``, or the value of the ``TETHER_MAX_ROW_BYTES`` environment variable."""
    value = os.environ.get(MAX_ROW_BYTES_ENV, "").strip()
    if not value:
        return MAX_ROW_BYTES
    try:
        if int(value) >= 1:
            return int(value)
    except ValueError:
        pass
    raise DataError(f"{MAX_ROW_BYTES_ENV}={value!r}: expected a whole number of bytes >= 1")


def too_big(where: str, size: int, limit: int, what: str) -> DataError:
    return DataError(
        f"{where}: {what} is {size:,} bytes, over the limit of {limit:,} per row; shorten the "
        f"row, or raise the limit with the environment variable {MAX_ROW_BYTES_ENV}=<bytes>"
    )


def check_row(obj: Any, where: str, limit: int | None) -> None:
    """Refuse a parsed row nested past ``MAX_DEPTH``, holding a lone surrogate (JSON lets
    ``"\\ud800"`` through; no tokenizer or UTF-8 writer accepts it) or, with ``limit``, more
    than ``limit`` bytes of text. Iterative: a deep row must not overflow our stack either."""
    size = 0
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        value, name, depth = stack.pop()
        if depth > MAX_DEPTH:
            top = name.split("[")[0].split(".")[0]
            raise DataError(f"{where}: field '{top}' is nested deeper than {MAX_DEPTH} levels; "
                            "rows hold texts, message lists and flat fields")
        if isinstance(value, str):
            if value.isascii():
                size += len(value)
                continue
            try:
                size += len(value.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise DataError(
                    f"{where}: field '{name}' holds a lone surrogate ({value[e.start]!a}), "
                    "which is not a character; fix the \\u escape or remove the row"
                ) from None
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, name, depth + 1))
                stack.append((v, f"{name}.{k}" if name else str(k), depth + 1))
        elif isinstance(value, list):
            stack.extend((v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value))
    if limit is not None and size > limit:
        raise too_big(where, size, limit, "its text")


def parse_json(text: str, where: str) -> Any:
    """``json.loads``; what it raises besides JSONDecodeError (which names the line and column
    for the caller) becomes a DataError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:  # json's C parser stops at Python's recursion limit (~1000 levels)
        raise DataError(f"{where}: nested deeper than {MAX_DEPTH} levels; rows hold texts, "
                        "message lists and flat fields") from None
    except ValueError as e:  # e.g. an integer of over 4300 digits
        raise DataError(f"{where}: cannot read this JSON ({e})") from None
