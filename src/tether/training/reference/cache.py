"""Cache keys and files of precomputed reference log-probs: weights, rows and settings.

Each file carries the SHA-256 of its tensors in its safetensors metadata; ``load_table``
refuses a file without it or whose tensors no longer match it (a truncated or edited file,
another program's), so the caller scores the rows again instead of training against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from tether.data.tokenization import TokenizedPair
from tether.io import atomic_write, tensors_sha256

__all__ = ["cache_path", "data_fingerprint", "load_table", "save_table", "weights_fingerprint"]


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (a collective under FSDP: every rank calls it)."""
    return tensors_sha256(model.state_dict())


def data_fingerprint(rows: Sequence[TokenizedPair]) -> str:
    """SHA-256 over every field of every row but its source (labels, weights, all responses)."""
    h = hashlib.sha256()
    for r in rows:
        fields = {k: v for k, v in dataclasses.asdict(r).items() if k != "source"}
        h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()


def cache_path(
    cache_dir: Path, weights: str, rows: Sequence[TokenizedPair], settings: Mapping[str, object]
) -> Path:
    """Where one split's reference log-probs are cached: keyed by weights, rows and settings."""
    key = hashlib.sha256(
        json.dumps([weights, data_fingerprint(rows), dict(settings)], default=str).encode()
    ).hexdigest()[:32]
    return cache_dir / f"ref-{key}.safetensors"


def save_table(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Write a cache entry atomically (a killed run never leaves a half-written one), with the
    checksum of its tensors."""
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"sha256": tensors_sha256(contiguous)}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=meta))


def load_table(path: Path) -> dict[str, Tensor]:
    """A cache entry's tensors; ValueError (saying why) when the file is not one ``save_table``
    wrote or its tensors changed since (any error reading it propagates too)."""
    with safe_open(str(path), framework="pt") as f:
        want = (f.metadata() or {}).get("sha256")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    if want is None:
        raise ValueError("no checksum: not written by this version of tether")
    if tensors_sha256(tensors) != want:
        raise ValueError("checksum mismatch: the values changed since they were written")
    return tensors
