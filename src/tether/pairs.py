"""``tether pairs``: assemble (prompt, chosen, rejected) rows in tether's standard JSONL.

Modes:
- ``convert``: any format the data loader reads -> standard JSONL (validated, identical pairs
  dropped and counted, duplicates removed), each row carrying its provenance;
- ``sample``: k answers per prompt from a model (seeded), ranked by a judge, written as pairs;
- ``rewrite``: an OpenAI-compatible model rewrites an answer into a better and a worse one.

Output rows: ``{"prompt", "chosen", "rejected", "source", ...provenance}``; the writer is
atomic (temporary file, then rename) and never leaves a half-written output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tether.data import load_preferences
from tether.errors import DataError
from tether.fields import opt

__all__ = ["PairsConfig", "convert", "dedupe", "write_jsonl"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class PairsConfig:
    """What ``tether pairs`` reads."""

    mode: Literal["convert", "sample", "rewrite"] = opt("convert", "how pairs are made")
    data: str = opt("", "input: any data format, or prompts for sample/rewrite")
    output: str = opt("pairs.jsonl", "where the standard JSONL goes")
    data_format: Literal["auto", "standard", "conversational", "implicit"] = opt(
        "auto", "how input rows are read (convert)"
    )
    field_map: dict[str, str] = opt({}, "rename input fields, e.g. field_map.chosen=output")
    prompt_template: str | None = opt(None, "build prompts from fields, e.g. alpaca")
    split: str = opt("train", "split of a saved/hub dataset")

    def problems(self) -> list[str]:
        out = []
        if not self.data:
            out.append("data: required")
        if not self.output.endswith(".jsonl"):
            out.append(f"output: expected a .jsonl path, got {self.output!r}")
        return out


def _key(row: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True).encode()
    ).hexdigest()


def dedupe(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first of rows with the same (prompt, chosen, rejected); count the others."""
    seen: set[str] = set()
    out, dropped = [], 0
    for r in rows:
        k = _key(r)
        if k in seen:
            dropped += 1
            continue
        seen.add(k)
        out.append(r)
    return out, dropped


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def convert(cfg: PairsConfig) -> dict[str, int]:
    """Import any supported format into standard JSONL with provenance."""
    records, report = load_preferences(
        cfg.data, data_format=cfg.data_format, field_map=cfg.field_map,
        prompt_template=cfg.prompt_template, split=cfg.split,
    )
    rows = [
        {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected,
         "source": r.source, "provenance": "convert"}
        for r in records
    ]
    rows, duplicates = dedupe(rows)
    if not rows:
        raise DataError(f"{cfg.data}: no pairs to write")
    n = write_jsonl(Path(cfg.output), rows)
    stats = {"read": report.rows, "identical_dropped": report.identical_dropped,
             "duplicates_dropped": duplicates, "written": n}
    log.info("pairs: %s -> %s: %s", cfg.data, cfg.output, stats)
    return stats


def run(cfg: PairsConfig) -> dict[str, int]:
    """Dispatch on ``cfg.mode``."""
    return MODES[cfg.mode](cfg)


MODES = {"convert": convert}
