"""Content hashes that key the evaluation caches: model weights and JSON-able settings.

Hashing a large checkpoint takes a while, so a local directory's hash is remembered next to the
caches, keyed by each file's name, size and modification time: an unchanged directory is
hashed once, a rewritten one again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tether.io import tensors_sha256, write_json

__all__ = ["digest", "weights_hash"]

_CHUNK = 1 << 20


def digest(*parts: Any) -> str:
    """sha256 of the JSON encoding of ``parts`` (sorted keys): a stable cache key."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _dir_files(path: Path) -> list[Path]:
    # Everything that decides the model's outputs: weights, config, generation config,
    # tokenizer. Hidden files and docs are left out.
    return sorted(
        p for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in (".md", ".txt")
    )


def _hash_dir(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def weights_hash(
    source: str | Path, model: torch.nn.Module | None = None, memo_dir: Path | None = None
) -> str:
    """sha256 of a local model directory's files, or of ``model``'s tensors for a hub id."""
    path = Path(source).expanduser()
    if not path.is_dir():
        if model is None:
            raise ValueError(f"{source} is not a directory and no model was given")  # internal
        return tensors_sha256(model.state_dict())
    files = _dir_files(path)
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo_path = memo_dir / "weights-hashes.json" if memo_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}  # a damaged memo only costs a re-hash
    key = str(path.resolve())
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["hash"])
    value = _hash_dir(files)
    if memo_path is not None:
        memo[key] = {"stamp": stamp, "hash": value}
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo_path, memo, indent=None)
    return value
