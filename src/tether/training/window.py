"""The logging window: per-row statistics summed between log lines, and the numeric guard.

Each micro-batch adds its per-row statistics (``accumulate``); each optimizer step adds its
sums (``add_step``), unless it was skipped as non-finite (``finite_step``); a log line is the
means over the rows and steps since the last one (``log_row``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from tether.errors import TrainingError
from tether.training.checkpoint import LoopState

__all__ = ["accumulate", "add_step", "finite_step", "log_row", "means"]

log = logging.getLogger("tether")


def accumulate(window: dict[str, float], stats: dict[str, Tensor], rows: int) -> None:
    """Sum each per-row statistic over the rows where it is defined (not NaN), and count them
    (KTO's chosen rewards exist only on desirable rows)."""
    for k, v in stats.items():
        v = v.detach().float().reshape(-1)
        defined = ~torch.isnan(v)
        window[k] += float(v[defined].sum())
        window[f"{k}#rows"] += int(defined.sum())
    window["rows"] += rows


def means(window: dict[str, float]) -> dict[str, float]:
    """Each accumulated statistic over the rows it was defined on."""
    return {k: v / max(1, window[f"{k}#rows"]) for k, v in window.items()
            if not k.endswith("#rows") and f"{k}#rows" in window}


def add_step(window: dict[str, float], step: dict[str, float], grad_norm: float,
              finite: bool) -> None:
    """Add one optimizer step's sums to the logging window. A skipped (non-finite) step adds
    only its count: its numbers are not averaged in, so it is never logged as a loss."""
    window["steps"] += 1
    if not finite:
        window["skipped"] += 1
        return
    for k, v in step.items():
        window[k] += v
    window["grad_norm"] += grad_norm


def log_row(window: dict[str, float], st: LoopState, lr: float, epoch: float) -> dict[str, Any]:
    """One metrics line: the means over the window's finite steps; a window of skipped steps
    only has no loss, no statistics and ``"skipped": true``. ``learning_rate``, ``epoch`` (a
    float) and ``num_tokens`` are the names TRL users read."""
    row: dict[str, Any] = {"step": st.step, "epoch": epoch, "lr": lr, "learning_rate": lr}
    row.update(means(window))
    kept = window["steps"] - window["skipped"]
    if kept:
        row["grad_norm"] = window["grad_norm"] / kept
    else:
        row["skipped"] = True
    row["skipped_steps"] = st.skipped_steps
    return row


def finite_step(loss: Tensor, grad_norm: float, st: LoopState, max_bad: int) -> bool:
    """Numeric guard: a non-finite loss or gradient skips the step; too many in a row abort."""
    if math.isfinite(float(loss)) and math.isfinite(grad_norm):
        st.bad_steps = 0
        return True
    st.bad_steps += 1
    st.skipped_steps += 1
    log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                st.step + 1, st.bad_steps)
    if st.bad_steps >= max_bad:
        raise TrainingError(
            f"step {st.step + 1}: loss or gradient non-finite for {st.bad_steps} steps in a row "
            "(max_bad_steps); lower lr, check the data, or use precision=fp32"
        )
    return False
