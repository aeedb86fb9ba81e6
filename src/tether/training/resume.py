"""Where a run starts: fresh or from a checkpoint whose settings match (the fingerprint), its
seeds, and its learning-rate schedule (a resumed run follows the same one)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from typing import Any

import numpy as np
import torch

from tether.config import TrainConfig
from tether.data.tokenization import TokenizedPair
from tether.errors import CheckpointError
from tether.training.checkpoint import LoopState, resume_from
from tether.training.finish import adopt_metrics
from tether.training.reference import data_fingerprint
from tether.training.run_dir import RunDir
from tether.training.sharded_checkpoint import load_any_checkpoint

__all__ = ["RESUMABLE_KEYS", "fingerprint", "lr_factor", "resume", "seed_everything"]

log = logging.getLogger("tether")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RESUMABLE_KEYS = {"resume", "save_every", "keep_checkpoints", "save_total_limit", "keep_best",
                   "push_to_hub", "progress", "log_every",
                   "eval_every", "eval_batch_size", "output_dir", "cache_dir", "max_bad_steps",
                   "eval_data", "max_steps", "epochs", "overwrite",
                   # scale: the global batch (rows per step) must match, not how it is split
                   # over ranks and micro-batches, so a run may resume at another world size
                   "batch_size", "grad_accum", "distributed", "merge",
                   "report_to", "run_name", "project", "report"}


def fingerprint(cfg: TrainConfig, rows: list[TokenizedPair], global_batch: int) -> dict[str, Any]:
    fp = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_KEYS}
    fp["global_batch"] = global_batch
    fp["train_rows_sha256"] = data_fingerprint(rows)
    return json.loads(json.dumps(fp))  # as it reads back from JSON


def resume(
    cfg: TrainConfig, run: RunDir, policy: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, fingerprint: dict[str, Any],
) -> LoopState:
    """Continue from the newest complete checkpoint (or the one ``resume`` names) when asked;
    else start fresh."""
    path = resume_from(cfg.resume, run.path)
    if path is None:
        if cfg.resume is True:
            raise CheckpointError(
                f"{run.path}/checkpoints: no complete checkpoint to resume; use resume=auto "
                "to start fresh when there is none"
            )
        if run.metrics_path.exists():
            run.metrics_path.unlink()  # a fresh run in an old directory starts a new log
        return LoopState()
    state = load_any_checkpoint(path, policy, optimizer, scheduler, fingerprint)
    adopt_metrics(run, path)  # a checkpoint of another run directory brings its metrics
    run.truncate_metrics(state.metrics_lines)  # steps after the checkpoint are logged again
    log.info("resumed from %s (step %d)", path, state.step)
    return state


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1 - progress)
