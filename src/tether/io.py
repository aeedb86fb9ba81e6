"""Files that are whole or absent: one atomic-write helper, and the one weight hasher.

``atomic_write`` writes to a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the directory, so a crash (or a full disk) at any point leaves either the old
file or the new one, never half of one, and no temporary file behind. Every write of state,
caches and results goes through it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write", "file_sha256", "fsync_dir", "tensors_sha256", "write_json",
           "write_text"]


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` by ``data`` (bytes, or a function that writes a given path) atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor of a state dict (names, dtypes, shapes, bytes), in name order.

    An FSDP-sharded tensor (DTensor) is gathered one at a time (a collective: every rank calls
    this), so the hash is the same at any number of ranks."""
    import torch
    from torch.distributed.tensor import DTensor

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.full_tensor() if isinstance(t, DTensor) else t
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
