"""Files that are whole or absent (one atomic-write helper), output directories, hashers,
hub ids.

``atomic_write`` writes to a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the directory, so a crash (or a full disk) at any point leaves either the old
file or the new one, never half of one, and no temporary file behind. Every write of state,
caches and results goes through it, and a write the system refuses (read-only location, full
disk) becomes a one-line ``OutputError`` naming the file. ``make_dir`` creates an output
directory and checks it can be written before any work is done.

``replace_dir`` does the same for a directory (a saved model). Two directories cannot be
swapped in one rename, so it leaves a trail that ``recover_dir`` can follow after a kill:
``X.old`` exists only once ``X.tmp`` is complete, so "no ``X``, but ``X.old``" means finish
the switch, and a ``X.tmp`` without ``X.old`` is a half-built copy to throw away.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import OutputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CACHE", "atomic_write", "cache_root", "check_writable", "file_sha256", "fsync_dir",
    "is_hub_id", "make_dir", "output_error", "recover_dir", "replace_dir", "tensors_sha256",
    "write_json", "write_text",
]
# A Hub repo id: "name" or "org/name" of letters, digits, "-", "_" and "." (dots are common:
# Qwen/Qwen2.5-0.5B-Instruct), without ".." or "--" (the Hub's own rule).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]+$")


DEFAULT_CACHE = "~/.cache/tether"  # the cache_dir keys' default; $TETHER_CACHE moves it


def cache_root(cache_dir: str) -> Path:
    """The cache directory a ``cache_dir`` key names: its default means ``$TETHER_CACHE``
    when that is set."""
    if cache_dir == DEFAULT_CACHE and os.environ.get("TETHER_CACHE"):
        return Path(os.environ["TETHER_CACHE"]).expanduser()
    return Path(cache_dir).expanduser()


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can name a model or dataset repository on the Hub."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name

# What to do about a refused write, by errno.
_FIXES = {
    errno.ENOSPC: "free disk space and run again",
    errno.EDQUOT: "free disk space (quota) and run again",
    errno.EROFS: "choose a location on a writable file system",
    errno.EACCES: "choose a location you may write to, or change its permissions",
    errno.EPERM: "choose a location you may write to, or change its permissions",
    errno.EEXIST: "a file is in the way; remove it or choose another path",
    errno.ENOTDIR: "a file is in the way of a directory; remove it or choose another path",
}


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


def output_error(
    path: str | Path, error: OSError, doing: str = "write", key: str | None = None
) -> OutputError:
    """A one-line ``OutputError``: the config key (if any), the path, the system's reason and
    what to do about it."""
    reason = error.strerror or str(error) or type(error).__name__
    fix = _FIXES.get(error.errno or 0, "check the path and its permissions")
    where = f"{key} {path}" if key else str(path)
    out = OutputError(f"{where}: cannot {doing} ({reason}); {fix}")
    out.errno, out.strerror, out.filename = error.errno, reason, str(path)
    return out


def _as_os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: itself, or the one a writer reports only in its message
    (safetensors raises ``SafetensorError('... I/O error: No space left ... (os error 28)')``)."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"os error (\d+)", str(error))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def atomic_write(path: str | Path, data: bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` by ``data`` (bytes, or a function that writes a given path) atomically.

    A write the system refuses raises ``OutputError`` (an ``OSError``) naming ``path``.

    Test hook: with the environment variable ``TETHER_FAULT_ENOSPC`` set to a substring of
    ``path``, the write fails as on a full disk (after the temporary file is created), so
    tests can fill the disk at one chosen file. Read here only; unset in normal use.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fault = os.environ.get("TETHER_FAULT_ENOSPC")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
        if fault and fault in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (TETHER_FAULT_ENOSPC)")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # a read-only place refuses the unlink too
            tmp.unlink(missing_ok=True)
        refused = None if isinstance(e, OutputError) else _as_os_error(e)
        if refused is not None:
            raise output_error(path, refused) from None
        raise
    fsync_dir(path.parent)


def make_dir(path: str | Path, key: str) -> Path:
    """Create the output directory ``path`` (config key ``key``) and check that it can be
    written, so a read-only or full location fails now, not after hours of work."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key}: {path} is a file, not a directory; choose another {key} "
                          "or remove the file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e, "create it", key) from None
    return check_writable(path, key)


def check_writable(path: Path, key: str) -> Path:
    """``path`` (an existing directory, config key ``key``) takes a new file, or OutputError."""
    probe = path / f".tether-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise output_error(path, e, "write there", key) from None
    return path


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
