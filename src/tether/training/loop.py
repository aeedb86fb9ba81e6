"""``train(cfg)`` and ``sft(cfg)``: the one training loop, set-up helpers around it.

Read ``_loop`` top to bottom: it is the whole procedure. Strategy choices (which reference,
which data shape) are made in ``_setup`` before the loop starts.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from tether.config import TrainConfig
from tether.data.batching import micro_batches, step_batches
from tether.data.tokenization import TokenizedPair
from tether.errors import CheckpointError, Stopped, TrainingError
from tether.losses import LossConfig, LossOutput, loss_config
from tether.model.loading import (
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    save_model,
)
from tether.model.lora import apply_lora, load_4bit, save_lora
from tether.model.prefix_sharing import Batch, SharedPrefixBatch, batch_logps, make_batch
from tether.model.speed import apply_levers
from tether.shapes import Shape, shape_of
from tether.training.checkpoint import LoopState, latest_checkpoint, save_checkpoint
from tether.training.distributed import (
    Dist,
    GradSync,
    clip_grad_norm,
    close_distributed,
    full_state_dict,
    init_distributed,
    wrap_policy,
)
from tether.training.reference import (
    Reference,
    build_reference,
    copy_before_wrapping,
    data_fingerprint,
    reference_kind,
)
from tether.training.run_dir import RunDir, open_run_dir
from tether.training.run_guard import claim_run_dir, require_finite
from tether.training.sharded_checkpoint import load_any_checkpoint, save_sharded_checkpoint

__all__ = ["sft", "train"]

log = logging.getLogger("tether")


@dataclass
class Setup:
    """Everything the loop needs, decided before it starts."""

    cfg: TrainConfig
    loss: LossConfig  # the objective's keys, its function bound to them
    shape: Shape  # the objective's data shape: reads the rows, turns log-probs into the loss
    run: RunDir
    device: torch.device
    autocast: bool
    tokenizer: Any
    policy: torch.nn.Module
    reference: Reference | None
    train_rows: list[TokenizedPair]
    eval_rows: list[TokenizedPair]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    fingerprint: dict[str, Any]
    state: LoopState
    dist: Dist  # rank and world size under torchrun (world 1 otherwise)
    scorer: torch.nn.Module  # SequenceLogProbs(policy), DDP-wrapped or FSDP-sharded
    prefix_sharing: bool  # pairs scored as prompt‖chosen‖rejected (see _shares_prefix)
    grad_sync: GradSync  # which micro-batches reduce gradients over ranks (the step's last)


def train(cfg: TrainConfig) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; return the run directory.
    A run that SIGTERM/SIGINT stopped early (after its checkpoint) raises ``Stopped``."""
    with claim_run_dir(cfg):  # one writer; never replaces an earlier run or the input model
        setup = _setup(cfg)
        with StopOnSignal() as stop:
            finished = _loop(setup, stop)
        if finished:
            _save(setup)
        path, d, step = setup.run.path, setup.dist, setup.state.step
        # The modules that hold the process group (DDP's reducer, FSDP's mesh) go first: a
        # gloo group freed after destroy_process_group can wait forever on a rank that left.
        del setup
        gc.collect()
        close_distributed(d)  # torchrun: once every rank is done (not after an error)
    if not finished:
        raise stop.stopped(step)
    return path


def _save(s: Setup) -> None:
    """``model/`` on rank 0: the full model, or the LoRA adapter (+ merged with merge=true)."""
    require_finite(s.policy, s.dist)  # inf/NaN weights (e.g. lr=inf) are never saved
    state = full_state_dict(s.policy, s.dist)  # FSDP gathers to rank 0's CPU; else None
    if not s.dist.main:
        return
    if s.cfg.lora:
        save_lora(s.policy, s.tokenizer, s.run.model_dir, s.cfg, state)
    else:
        save_model(s.policy, s.tokenizer, s.run.model_dir, state)  # type: ignore[arg-type]
    log.info("model saved to %s", s.run.model_dir)


def sft(cfg: TrainConfig) -> Path:
    """Supervised fine-tuning: ``train`` with the ``sft`` loss (completion tokens only)."""
    if cfg.loss != "sft":
        cfg = dataclasses.replace(cfg, loss="sft")
    return train(cfg)


# --------------------------------------------------------------------------- the loop


def _loop(s: Setup, stop: StopOnSignal) -> bool:
    """Run to ``total_steps``; False when a signal stopped it (after a checkpoint)."""
    cfg, policy, st = s.cfg, s.policy, s.state
    rows_per_step = cfg.batch_size * cfg.grad_accum * s.dist.world_size  # the global batch
    lengths = [r.length for r in s.train_rows]
    window: dict[str, float] = defaultdict(float)  # metric sums since the last log line
    t_start, tokens_at_start = time.perf_counter(), st.tokens
    bar = tqdm(total=s.total_steps, initial=st.step, desc=cfg.loss,
               disable=not cfg.progress or not s.dist.main)
    policy.train()
    while st.step < s.total_steps:
        steps = step_batches(lengths, rows_per_step, st.epoch, cfg.seed, cfg.group_by_length)
        for step_rows in steps[st.step_in_epoch :]:
            if st.step >= s.total_steps:
                break
            # One optimizer step over grad_accum micro-batches; the loss is the mean over all
            # the step's rows, so batch 8 × 1 and batch 4 × 2 give the same gradient.
            # Ranks reduce gradients once, in the last micro-batch's backward (GradSync); a
            # step may have fewer than grad_accum micro-batches (an epoch shorter than a step).
            losses = []
            micros = list(micro_batches(s.dist.shard(step_rows), cfg.grad_accum))
            for m, micro in enumerate(micros):
                rows = [s.train_rows[i] for i in micro]
                batch = make_batch(rows, micro, s.tokenizer.pad_token_id, s.prefix_sharing)
                batch = batch.to(s.device)
                with s.grad_sync(last=m == len(micros) - 1):
                    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
                        out, stats = _forward(s, batch, "train")
                    # × world_size: DDP/FSDP average gradients over ranks (distributed.py)
                    loss = out.losses.sum() * s.dist.world_size / len(step_rows)
                    loss.backward()
                losses.append(loss.detach())
                _accumulate(window, stats, len(micro))
                st.tokens += batch.tokens
            grad_norm = _clip(policy, cfg.max_grad_norm)
            if _finite(s.dist.sum(torch.stack(losses).sum()), grad_norm, st, cfg.max_bad_steps):
                s.optimizer.step()
            lr = float(s.scheduler.get_last_lr()[0])  # the rate this step used, not the next one
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            st.step += 1
            st.step_in_epoch += 1
            window["grad_norm"] += grad_norm
            window["steps"] += 1
            bar.update(1)
            if st.step % cfg.log_every == 0 or st.step == s.total_steps:
                s.dist.sum_rows(window)  # every rank's rows
                row = _log_row(window, st, lr)
                elapsed = time.perf_counter() - t_start
                row["tokens_per_s"] = s.dist.total(st.tokens - tokens_at_start) / elapsed
                s.run.log_metrics(row)
                st.metrics_lines += 1
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=row.get("rewards/accuracies"))
                window.clear()
            if s.eval_rows and cfg.eval_every and st.step % cfg.eval_every == 0:
                s.run.log_metrics({"step": st.step, **evaluate_pairs(s)})
                st.metrics_lines += 1
            stopping = s.dist.any(stop.requested)  # all ranks stop at the same step
            if (cfg.save_every and st.step % cfg.save_every == 0) or stopping:
                _checkpoint(s)
            if stopping:
                bar.close()
                return False
        st.epoch += 1
        st.step_in_epoch = 0
    bar.close()
    if s.eval_rows:
        final = {"step": st.step, **evaluate_pairs(s)}
        s.run.log_metrics(final)
        log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k != "step"))
    return True


def _forward(s: Setup, batch: Batch, split: str) -> tuple[LossOutput, dict[str, Tensor]]:
    """Policy log-probs -> reference log-probs -> the data shape's loss and statistics."""
    if isinstance(batch, SharedPrefixBatch):  # one process only: no wrapper to go through
        logps, counts = batch_logps(s.policy, batch, s.cfg.logprob_chunk)
    else:
        logps, counts = s.scorer(batch.input_ids, batch.attention_mask, batch.completion_mask)
    # (K·B,) sums over completion tokens and token counts, block j = every row's j-th completion
    # A shared-prefix batch only meets references that read log-probs by row (_shares_prefix).
    ref = s.reference(batch, split) if s.reference is not None else None  # type: ignore[arg-type]
    rows = s.train_rows if split == "train" else s.eval_rows
    return s.shape.step(s.loss, [rows[i] for i in batch.index.tolist()], logps, counts, ref)


@torch.no_grad()
def evaluate_pairs(s: Setup) -> dict[str, float]:
    """Loss, reward accuracy and margins on the eval rows (policy in eval mode)."""
    s.policy.eval()
    window: dict[str, float] = defaultdict(float)
    idx = list(range(len(s.eval_rows)))
    for start in range(0, len(idx), s.cfg.eval_batch_size):
        chunk = idx[start : start + s.cfg.eval_batch_size]
        rows = [s.eval_rows[i] for i in chunk]
        batch = make_batch(rows, chunk, s.tokenizer.pad_token_id, s.prefix_sharing)
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
            _, stats = _forward(s, batch.to(s.device), "eval")
        _accumulate(window, stats, len(chunk))
    s.policy.train()
    return {f"eval/{k}": v for k, v in _means(window).items()}


def _accumulate(window: dict[str, float], stats: dict[str, Tensor], rows: int) -> None:
    """Sum each per-row statistic over the rows where it is defined (not NaN), and count them
    (KTO's chosen rewards exist only on desirable rows)."""
    for k, v in stats.items():
        v = v.detach().float().reshape(-1)
        defined = ~torch.isnan(v)
        window[k] += float(v[defined].sum())
        window[f"{k}#rows"] += int(defined.sum())
    window["rows"] += rows


def _means(window: dict[str, float]) -> dict[str, float]:
    """Each accumulated statistic over the rows it was defined on."""
    return {k: v / max(1, window[f"{k}#rows"]) for k, v in window.items()
            if not k.endswith("#rows") and f"{k}#rows" in window}


def _log_row(window: dict[str, float], st: LoopState, lr: float) -> dict[str, Any]:
    row: dict[str, Any] = {"step": st.step, "epoch": st.epoch, "lr": lr}
    row.update(_means(window))
    row["grad_norm"] = window["grad_norm"] / window["steps"]
    row["skipped_steps"] = st.skipped_steps
    return row


def _finite(loss: Tensor, grad_norm: float, st: LoopState, max_bad: int) -> bool:
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
            "(max_bad_steps); lower lr, check the data, or use dtype=float32"
        )
    return False


def _checkpoint(s: Setup) -> None:
    save = save_sharded_checkpoint if s.dist.active else save_checkpoint
    path = save(s.run.path, s.policy, s.optimizer, s.scheduler, s.state, s.fingerprint,
                s.cfg.keep_checkpoints)
    log.info("checkpoint %s", path)


class StopOnSignal:
    """SIGTERM/SIGINT ask the loop to finish its step, checkpoint and return; a second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def stopped(self, step: int) -> Stopped:
        """The error a stopped run ends with: exit code 128 + the signal (143 SIGTERM)."""
        signum = signal.Signals[self.requested] if self.requested else signal.SIGTERM
        return Stopped(
            f"stopped by {self.requested or 'another rank'} at step {step}; checkpoint written. "
            "Resume with the same command plus resume=true", signum,
        )

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    return clip_grad_norm(model, max_norm)  # works on FSDP's sharded gradients too


# --------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup(cfg: TrainConfig) -> Setup:
    seed_everything(cfg.seed)
    loss, shape, kind = loss_config(cfg), shape_of(cfg.loss), reference_kind(cfg)
    dist, device = init_distributed(cfg.distributed, resolve_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    autocast = _autocast(cfg.autocast, device, dtype)
    run = open_run_dir(cfg.output_dir, cfg, dist)  # rank 0 writes, the others read
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code,
                               field="tokenizer" if cfg.tokenizer else "model")
    train_rows, eval_rows = _load_rows(cfg, shape, tokenizer, run)
    dist.check_rows(len(train_rows), cfg.batch_size * cfg.grad_accum)
    if cfg.load_in_4bit:
        policy = load_4bit(cfg, device, dtype)
    else:
        policy = load_model(cfg.model, dtype=dtype, device=dist.load_device(device),
                            trust_remote_code=cfg.trust_remote_code,
                            empty=dist.empty_model)  # FSDP: only rank 0 reads the weights
    policy = apply_lora(policy, cfg)  # PEFT adapters on a frozen base (lora=true)
    reference = copy_before_wrapping(cfg, kind, policy, dist, device, autocast)
    scorer = wrap_policy(policy, dist, device, cfg.logprob_chunk, autocast)  # DDP / FSDP2
    if reference is None:
        splits = {"train": train_rows, **({"eval": eval_rows} if eval_rows else {})}
        reference = build_reference(cfg, kind, policy, scorer, dist, splits,
                                    pad_id=tokenizer.pad_token_id, device=device, dtype=dtype,
                                    autocast=autocast)
    apply_levers(cfg, policy)  # after the reference pass, which needs neither
    rows_per_step = cfg.batch_size * cfg.grad_accum * dist.world_size
    steps_per_epoch = max(1, len(train_rows) // rows_per_step)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]), weight_decay=cfg.weight_decay,
        fused=cfg.fused_adamw and dist.world_size == 1,  # no fused kernel for sharded DTensors
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, cfg.warmup_steps, total, cfg.scheduler)
    )
    fingerprint = _fingerprint(cfg, train_rows, rows_per_step)
    state = _resume(cfg, run, policy, optimizer, scheduler, fingerprint)
    return Setup(cfg, loss, shape, run, device, autocast, tokenizer, policy, reference,
                 train_rows, eval_rows, optimizer, scheduler, total, fingerprint, state, dist,
                 scorer, _shares_prefix(cfg, shape, kind, dist),
                 GradSync(scorer, defer_fsdp=cfg.lora))


def _shares_prefix(cfg: TrainConfig, shape: Shape, reference_kind: str, dist: Dist) -> bool:
    """Prefix sharing where it is exact and tested: one process (under DDP/FSDP the forward
    must go through the wrapper), pairs (not KTO or whole rankings), and a reference that
    reads log-probs by row (precomputed) or needs none. Elsewhere: plain batches."""
    ok = dist.world_size == 1 and shape.prefix_sharing and reference_kind in ("precomputed",
                                                                               "none")
    if cfg.prefix_sharing and not ok:
        log.info("prefix_sharing: off for this run (distributed, non-pair data, or a "
                 "reference=%s that scores batches itself)", reference_kind)
    return cfg.prefix_sharing and ok


# Keys that may change between a run and its resumption; every other key must match.
# max_steps/epochs may grow to extend a run (the learning-rate schedule then follows the new
# length, so only an unchanged length reproduces the uninterrupted run bit for bit).
_RESUMABLE_KEYS = {"resume", "save_every", "keep_checkpoints", "progress", "log_every",
                   "eval_every", "eval_batch_size", "output_dir", "cache_dir", "max_bad_steps",
                   "eval_data", "max_steps", "epochs", "overwrite",
                   # scale: the global batch (rows per step) must match, not how it is split
                   # over ranks and micro-batches, so a run may resume at another world size
                   "batch_size", "grad_accum", "distributed", "merge"}


def _fingerprint(cfg: TrainConfig, rows: list[TokenizedPair], global_batch: int) -> dict[str, Any]:
    fp = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE_KEYS}
    fp["global_batch"] = global_batch
    fp["train_rows_sha256"] = data_fingerprint(rows)
    return json.loads(json.dumps(fp))  # as it reads back from JSON


def _resume(
    cfg: TrainConfig, run: RunDir, policy: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, fingerprint: dict[str, Any],
) -> LoopState:
    """Continue from the newest complete checkpoint when asked; else start fresh."""
    path = latest_checkpoint(run.path) if cfg.resume else None
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
    run.truncate_metrics(state.metrics_lines)  # steps after the checkpoint are logged again
    log.info("resumed from %s (step %d)", path, state.step)
    return state


def _lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1 - progress)


def _autocast(mode: str, device: torch.device, dtype: torch.dtype) -> bool:
    if mode == "off" or dtype != torch.float32:
        return False
    if mode == "on":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")() == "AVX512")


def _load_rows(
    cfg: TrainConfig, shape: Shape, tokenizer: Any, run: RunDir
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Read, validate and tokenize train (and eval) rows; print and save what was dropped."""
    audit: dict[str, Any] = {}
    out: list[list[TokenizedPair]] = [[], []]
    for i, (split, path) in enumerate((("train", cfg.data), ("eval", cfg.eval_data))):
        if path is None:
            continue
        loaded = shape.load(cfg, path, tokenizer)
        if loaded.report is not None:
            log.info("%s", loaded.report.summary() + "".join(f"; {n}" for n in
                                                              loaded.report.notes))
        log.info("%s %s", split, loaded.truncation.summary())
        audit.update(loaded.audit(split))
        out[i] = loaded.rows
    run.write_json("data_audit.json", audit)
    return out[0], out[1]
