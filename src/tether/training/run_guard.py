"""What keeps a run directory trustworthy: one writer, no run silently replaced, the input
model never overwritten, and no non-finite model saved.

``claim_run_dir(cfg)`` is held around the whole of ``train``. It refuses an ``output_dir``
whose ``model/`` (or other run file) is an input of this run (``model``, ``tokenizer``,
``reference_model``, ``lora_adapter``): the starting weights would be lost and ``tether eval``
would compare the model with itself. On the process that writes the directory (rank 0 under
torchrun) it then

- takes the directory's lock (``tether.locking``), so a second run into it is refused;
- finishes a ``model/`` switch that a kill interrupted (``tether.io.recover_dir``) and removes
  the temporary files killed writes left;
- refuses a directory that holds an earlier run's results unless this run resumes one of its
  checkpoints (``resume=true``/``auto``) or ``overwrite=true``, which removes them first.

``require_finite(model, dist)`` is the last check before ``model/`` is written: a run whose
weights became inf/NaN (e.g. ``lr=inf``) fails instead of saving them.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.distributed.tensor import DTensor

from tether.errors import ConfigError, TrainingError
from tether.io import make_dir, recover_dir
from tether.locking import LOCK_NAME, exclusive_lock
from tether.training.checkpoint import latest_checkpoint

if TYPE_CHECKING:
    from tether.config import TrainConfig
    from tether.training.distributed import Dist

__all__ = ["RUN_FILES", "claim_run_dir", "require_finite"]

log = logging.getLogger("tether")

# What a run writes into its directory; overwrite=true removes exactly these (a demo or a
# user keeps other things there: data, caches, other runs).
RUN_FILES = ("config.yaml", "metrics.jsonl", "data_audit.json", "model", "checkpoints", "eval")
# Those that show an earlier run produced something. A run that failed in its set-up leaves
# only config.yaml and data_audit.json, and may be retried as it is.
_RESULTS = ("metrics.jsonl", "model", "checkpoints", "eval")
_INPUTS = ("model", "tokenizer", "reference_model", "lora_adapter")


@contextmanager
def claim_run_dir(cfg: TrainConfig) -> Iterator[None]:
    """Inside: this process may write ``cfg.output_dir`` (see the module docstring)."""
    out = Path(cfg.output_dir).expanduser()
    _refuse_in_place(cfg, out)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone writes the directory
        yield
        return
    make_dir(out, "output_dir")  # a file in the way or a read-only place: one line, now
    with exclusive_lock(out / LOCK_NAME, f"output_dir {cfg.output_dir}",
                        "wait for the other run to end, or choose another output_dir"):
        _clean_leftovers(out)
        _refuse_replacing(cfg, out)
        yield


def _refuse_in_place(cfg: TrainConfig, out: Path) -> None:
    written = [(out / name).resolve() for name in (*RUN_FILES, "model.tmp", "model.old")]
    for key in _INPUTS:
        value = getattr(cfg, key)
        path = Path(value).expanduser() if value else None
        if path is None or not path.exists():
            continue  # unset, or a hub id
        path = path.resolve()
        hit = next((w for w in written if path == w or w in path.parents), None)
        if hit is not None:
            what = hit.name + ("/" if hit.is_dir() else "")
            raise ConfigError(
                f"{key}: {value} is inside output_dir {cfg.output_dir}, whose {what} this "
                "run replaces: the starting weights would be lost and tether eval would compare "
                "the model with itself; choose another output_dir (overwrite=true does not "
                "change this)"
            )


def _clean_leftovers(out: Path) -> None:
    """Under the lock nobody else writes here: what a killed write left is stale."""
    if recover_dir(out / "model"):
        log.warning("%s: restored model/ from a save that was killed half-way", out)
    for stale in out.glob("checkpoints/.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.glob(".*.tmp[0-9]*"):  # tether.io.atomic_write's temporary files
        stale.unlink(missing_ok=True)


def _has(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def _refuse_replacing(cfg: TrainConfig, out: Path) -> None:
    found = [name for name in _RESULTS if _has(out / name)]
    resumable = latest_checkpoint(out) is not None
    # resume=true without a checkpoint is the loop's one-line CheckpointError.
    if not found or cfg.resume is True or (cfg.resume == "auto" and resumable):
        return
    if cfg.overwrite:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        log.info("overwrite=true: removed the earlier run's %s from %s", ", ".join(found), out)
        return
    hint = "resume=true continues it, " if resumable else ""
    raise ConfigError(
        f"output_dir: {cfg.output_dir} already holds a run ({', '.join(found)}); {hint}"
        "overwrite=true replaces it, or choose another output_dir"
    )


def require_finite(model: torch.nn.Module, dist: Dist) -> None:
    """Raise a TrainingError, on every rank, when a weight of ``model`` is inf or NaN."""
    bad = [name for name, p in model.named_parameters()
           if not bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all())]
    if dist.any(bad):
        where = f" ({len(bad)} tensors, e.g. {bad[0]})" if bad else ""
        raise TrainingError(
            f"training ended with non-finite weights{where}, so model/ was not written; lower "
            "lr (or beta), check the data, or set max_bad_steps lower to stop sooner"
        )
