"""Reading raw rows from any supported source, each named by where it came from.

Sources: ``.jsonl``, ``.json`` (a list), ``.parquet``, ``.csv``, a ``datasets`` dataset saved
on disk, or a hub dataset id. JSON and JSONL are parsed here line by line so a bad row is
reported with its exact line (Arrow's schema inference, which ``datasets`` uses, fails on the
first mistyped row with a message that names neither line nor field); CSV is read here too, every
cell as text. Parquet, saved datasets and hub ids go through ``datasets``. Every row is bounded
in size and nesting (``tether.data.row_limits``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.data.memory import DATASETS
from tether.data.row_limits import check_row, max_row_bytes, parse_json, too_big
from tether.errors import DataError
from tether.io import is_hub_id

__all__ = ["Row", "read_rows"]


@dataclass(frozen=True)
class Row:
    """One raw row and where it came from (``file:line`` or ``dataset[row]``)."""

    data: dict[str, Any]
    source: str


def read_rows(path: str, split: str = "train") -> list[Row]:
    """Read raw rows from a file, a saved dataset directory, or a hub dataset id."""
    if path in DATASETS:  # handed to tether.train in memory (tether.data.memory)
        return _dataset_rows(DATASETS[path], path)
    p = Path(os.path.expanduser(path))
    suffix = p.suffix.lower()
    if p.is_file():
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(p)
        if suffix == ".json":
            return _read_json(p)
        if suffix == ".csv":
            return _read_csv(p)
        if suffix == ".parquet":
            return _read_with_datasets(p, "parquet")
        raise DataError(
            f"{p}: unsupported file type '{suffix}'; expected .jsonl, .json, .parquet or .csv"
        )
    if p.is_dir():
        return _read_saved_dataset(p, split)
    if path.startswith((".", "/", "~")) or not is_hub_id(path):
        raise DataError(f"{path}: file not found; pass a data file, a saved dataset or a hub id")
    return _read_hub(path, split)


def _decode(p: Path) -> str:
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Windows editors write one): not data
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{p}:{line}: invalid UTF-8 (byte {raw[e.start]:#04x}); re-encode the file as UTF-8"
        ) from None


def _read_jsonl(p: Path) -> list[Row]:
    rows, limit = [], max_row_bytes()
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters that
    # splitlines() also breaks at, and line numbers must match the file's.
    for n, line in enumerate(_decode(p).split("\n"), start=1):
        if not line.strip():
            continue
        # Checked before parsing: the parse (and tokenizing what it holds) is what costs.
        if len(line) > limit // 4 and len(line.encode("utf-8")) > limit:
            raise too_big(f"{p}:{n}", len(line.encode("utf-8")), limit, "the line")
        try:
            obj = parse_json(line, f"{p}:{n}")
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}:{n}: expected a JSON object per line, got {type(obj).__name__}")
        check_row(obj, f"{p}:{n}", None)
        rows.append(Row(obj, f"{p}:{n}"))
    return rows


def _read_json(p: Path) -> list[Row]:
    text = _decode(p)
    try:
        obj = parse_json(text, str(p))
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(obj, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{p}: expected a JSON list of rows (or an object with one list)")
        obj = lists[0]
    if not isinstance(obj, list):
        raise DataError(f"{p}: expected a JSON list of rows, got {type(obj).__name__}")
    rows, limit = [], max_row_bytes()
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{p}[{i}]: expected an object, got {type(item).__name__}")
        check_row(item, f"{p}[{i}]", limit)
        rows.append(Row(item, f"{p}[{i}]"))
    return rows


def _dataset_rows(ds: Any, where: str) -> list[Row]:
    # rows named by 0-based row index in brackets, as JSON lists are: "file:0" would read as a
    # line number
    rows, limit = [], max_row_bytes()
    for i, r in enumerate(ds):
        row = Row(dict(r), f"{where}[{i}]")
        check_row(row.data, row.source, limit)
        rows.append(row)
    return rows


def _read_csv(p: Path) -> list[Row]:
    """Every cell as text, as written: "4." stays "4." and a label column may mix true and 1
    (a type-inferring reader turns "4." into 4.0 and refuses the mix). An empty cell is null.
    Rows are named by the line they start on (a quoted cell may span lines)."""
    import csv
    import io

    reader = csv.reader(io.StringIO(_decode(p).removeprefix("\ufeff"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    rows, start, limit = [], reader.line_num + 1, max_row_bytes()
    for cells in reader:
        if cells and any(c.strip() for c in cells):
            if len(cells) != len(header):
                raise DataError(f"{p}:{start}: {len(cells)} cells, the header has "
                                f"{len(header)}; quote cells that contain commas")
            row = Row({k: (v if v != "" else None) for k, v in zip(header, cells, strict=True)},
                      f"{p}:{start}")
            check_row(row.data, row.source, limit)
            rows.append(row)
        start = reader.line_num + 1
    return rows


def _read_with_datasets(p: Path, kind: str) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise DataError(f"{p}: cannot read as {kind} ({type(e).__name__}: {e})") from None
    return _dataset_rows(ds, str(p))


def _read_saved_dataset(p: Path, split: str) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise DataError(f"{p}: not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{p}: no split '{split}'; available: {', '.join(ds)} (set split=)")
        ds = ds[split]
    return _dataset_rows(ds, f"{p}[{split}]")


def _read_hub(name: str, split: str) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(
            f"{name}: not a local path, and loading it as a hub dataset failed "
            f"({type(e).__name__}); check the path, or the id and your network"
        ) from None
    return _dataset_rows(ds, f"{name}[{split}]")


# --------------------------------------------------------------------------- mapping fields
