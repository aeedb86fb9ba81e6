"""Files that are whole or absent: one atomic-write helper, and the one weight hasher.

``atomic_write`` writes to a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the directory, so a crash (or a full disk) at any point leaves either the old
file or the new one, never half of one, and no temporary file behind. Every write of state,
caches and results goes through it.

``replace_dir`` does the same for a directory (a saved model). Two directories cannot be
swapped in one rename, so it leaves a trail that ``recover_dir`` can follow after a kill:
``X.old`` exists only once ``X.tmp`` is complete, so "no ``X``, but ``X.old``" means finish
the switch, and a ``X.tmp`` without ``X.old`` is a half-built copy to throw away.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_write", "fsync_dir", "recover_dir", "replace_dir", "tensors_sha256", "write_json",
    "write_text",
]


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


def _beside(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before their directories
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        else:
            fsync_dir(path)
    fsync_dir(root)


def replace_dir(out: Path, build: Callable[[Path], None]) -> None:
    """Replace the directory ``out`` by what ``build(tmp)`` writes into a fresh ``tmp``.

    A failure while building (e.g. a full disk) removes the copy and leaves ``out`` as it was;
    a kill at any point leaves something ``recover_dir`` turns back into a whole ``out``.
    """
    recover_dir(out)
    tmp, old = _beside(out)
    try:
        build(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # From here on X.old marks X.tmp as complete (an empty X.old when there was no X yet).
    if out.exists():
        os.rename(out, old)
    else:
        old.mkdir()
    fsync_dir(out.parent)
    os.rename(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(out: Path) -> bool:
    """Finish or undo a ``replace_dir`` that was killed; remove its leftovers. Returns whether
    ``out`` had to be restored."""
    tmp, old = _beside(out)
    restored = False
    if not out.exists() and old.is_dir():
        if tmp.is_dir():
            os.rename(tmp, out)  # complete: the kill came between the two renames
            restored = True
        elif any(old.iterdir()):
            os.rename(old, out)  # the new copy is gone: the old one is better than none
            restored = True
        fsync_dir(out.parent)
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    return restored


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
