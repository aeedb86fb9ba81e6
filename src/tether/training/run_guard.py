"""One writer per run directory: ``claim_run_dir(cfg)`` is held around the whole of ``train``.

On the process that writes the directory (rank 0 under torchrun) it takes the directory's lock
(``tether.locking``), so a second run into the same ``output_dir`` is refused in one line
instead of interleaving its metrics with the first run's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tether.locking import LOCK_NAME, exclusive_lock

if TYPE_CHECKING:
    from tether.config import TrainConfig

__all__ = ["claim_run_dir"]


@contextmanager
def claim_run_dir(cfg: TrainConfig) -> Iterator[None]:
    """Inside: this process may write ``cfg.output_dir`` (see the module docstring)."""
    out = Path(cfg.output_dir).expanduser()
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone writes the directory
        yield
        return
    with exclusive_lock(out / LOCK_NAME, f"output_dir {cfg.output_dir}",
                        "wait for the other run to end, or choose another output_dir"):
        yield
