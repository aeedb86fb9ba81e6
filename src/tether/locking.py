"""One writer at a time: an exclusive ``flock`` on a lock file beside what is written.

Two ``tether train`` runs into one ``output_dir`` (or two ``tether label`` servers on one
``--db``) would interleave their writes and lose the first one's. The second is refused with a
one-line error instead. The lock belongs to the open file, so the kernel drops it when the
process ends, however it ends (SIGKILL included): a crashed writer never leaves a stale lock.
The file keeps the holder's pid, only to name it in the error.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tether.errors import ConfigError
from tether.io import output_error, recover_dir

__all__ = ["LOCK_NAME", "exclusive_lock", "recover_when_idle"]

LOCK_NAME = ".tether.lock"  # inside a run directory


@contextmanager
def exclusive_lock(path: Path, what: str, fix: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) inside the ``with``; if another
    process holds it, raise ``ConfigError("<what>: in use by ... (pid N); <fix>")``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:  # a read-only place, a file in the way: one line, not a traceback
        raise output_error(path, e, "create the lock file", what) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(f"{what}: in use by another tether process{pid}; {fix}") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid only makes the message friendlier; a full disk must not stop us
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def recover_when_idle(model_dir: Path) -> None:
    """For a reader (``tether eval``): finish a ``model/`` switch that a kill interrupted
    (``tether.io.recover_dir``), unless a run holds the directory's lock: it may be saving
    right now. A read-only directory is left as it is."""
    if model_dir.exists() or not model_dir.with_name(model_dir.name + ".old").is_dir():
        return
    try:
        with exclusive_lock(model_dir.parent / LOCK_NAME, str(model_dir.parent), ""):
            recover_dir(model_dir)
    except (ConfigError, OSError):
        pass
