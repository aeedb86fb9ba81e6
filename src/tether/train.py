"""``train(cfg)`` and ``sft(cfg)``: the one training loop, set-up helpers around it.

Read ``_loop`` top to bottom: it is the whole procedure. Strategy choices (which reference,
which data shape) are made in ``_setup`` before the loop starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from tether.batching import micro_batches, step_batches
from tether.config import TrainConfig
from tether.data import load_completions, load_preferences, needs_chat
from tether.errors import ConfigError, DataError
from tether.losses import LOSS_SPECS, LossOutput, call_loss
from tether.modeling import load_model, load_tokenizer, resolve_device, resolve_dtype, save_model
from tether.prefix_sharing import Batch, batch_logps, make_batch
from tether.reference import FrozenCopy, Precomputed, Reference
from tether.runs import RunDir
from tether.speed import apply_levers
from tether.tokenization import TokenizedPair, tokenize_records, use_chat

__all__ = ["sft", "train"]

log = logging.getLogger("tether")


@dataclass
class Setup:
    """Everything the loop needs, decided before it starts."""

    cfg: TrainConfig
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


def train(cfg: TrainConfig) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; return the run directory."""
    setup = _setup(cfg)
    _loop(setup)
    save_model(setup.policy, setup.tokenizer, setup.run.model_dir)  # type: ignore[arg-type]
    log.info("model saved to %s", setup.run.model_dir)
    return setup.run.path


def sft(cfg: TrainConfig) -> Path:
    """Supervised fine-tuning: ``train`` with the ``sft`` loss (completion tokens only)."""
    if cfg.loss != "sft":
        cfg = dataclasses.replace(cfg, loss="sft")
    return train(cfg)


# --------------------------------------------------------------------------- the loop


def _loop(s: Setup) -> None:
    cfg, policy = s.cfg, s.policy
    rows_per_step = cfg.batch_size * cfg.grad_accum
    lengths = [r.length for r in s.train_rows]
    window: dict[str, float] = defaultdict(float)  # metric sums since the last log line
    step, epoch, t_start, tokens = 0, 0, time.perf_counter(), 0
    bar = tqdm(total=s.total_steps, desc=cfg.loss, disable=not cfg.progress)
    policy.train()
    while step < s.total_steps:
        for step_rows in step_batches(lengths, rows_per_step, epoch, cfg.seed, cfg.group_by_length):
            if step >= s.total_steps:
                break
            # One optimizer step over grad_accum micro-batches; the loss is the mean over all
            # the step's rows, so batch 8 × 1 and batch 4 × 2 give the same gradient.
            for micro in micro_batches(step_rows, cfg.grad_accum):
                rows = [s.train_rows[i] for i in micro]
                batch = make_batch(rows, micro, s.tokenizer.pad_token_id, cfg.prefix_sharing)
                batch = batch.to(s.device)
                with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
                    out, stats = _forward(s, batch, "train")
                (out.losses.sum() / len(step_rows)).backward()
                _accumulate(window, stats, len(micro))
                tokens += batch.tokens
            grad_norm = _clip(policy, cfg.max_grad_norm)
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            step += 1
            window["grad_norm"] += grad_norm
            window["steps"] += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == s.total_steps:
                row = _log_row(window, step, epoch, s.scheduler.get_last_lr()[0])
                row["tokens_per_s"] = tokens / (time.perf_counter() - t_start)
                s.run.log_metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=row.get("rewards/accuracies"))
                window.clear()
            if s.eval_rows and cfg.eval_every and step % cfg.eval_every == 0:
                s.run.log_metrics({"step": step, **evaluate_pairs(s)})
        epoch += 1
    bar.close()
    if s.eval_rows:
        final = {"step": step, **evaluate_pairs(s)}
        s.run.log_metrics(final)
        log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k != "step"))


def _forward(s: Setup, batch: Batch, split: str) -> tuple[LossOutput, dict[str, Tensor]]:
    """Policy log-probs -> reference log-probs -> loss, and the per-row statistics."""
    cfg = s.cfg
    # (2B,) sums over completion tokens, (2B,) token counts
    logps, counts = batch_logps(s.policy, batch, cfg.logprob_chunk)
    if LOSS_SPECS[cfg.loss].data == "completions":
        out = call_loss(cfg.loss, logps, counts)
        return out, {"loss": out.losses.detach(), "logps/chosen": logps.detach()}
    B = batch.pairs
    scale = counts.clamp(min=1).float() if cfg.average_logps else torch.ones_like(logps)
    pc, pr = (logps / scale)[:B], (logps / scale)[B:]  # (B,) each
    rc = rr = None
    if s.reference is not None:
        ref_c, ref_r = s.reference(batch, split)
        rc, rr = ref_c / scale[:B], ref_r / scale[B:]
    options = dataclasses.asdict(cfg)  # losses take the config keys their signatures name
    out = call_loss(
        cfg.loss, pc, pr, rc, rr, **options, chosen_lengths=counts[:B], rejected_lengths=counts[B:]
    )
    stats = {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "logps/chosen": pc.detach(),
        "logps/rejected": pr.detach(),
    }
    return out, stats


@torch.no_grad()
def evaluate_pairs(s: Setup) -> dict[str, float]:
    """Loss, reward accuracy and margins on the eval rows (policy in eval mode)."""
    s.policy.eval()
    window: dict[str, float] = defaultdict(float)
    idx = list(range(len(s.eval_rows)))
    for start in range(0, len(idx), s.cfg.eval_batch_size):
        chunk = idx[start : start + s.cfg.eval_batch_size]
        rows = [s.eval_rows[i] for i in chunk]
        batch = make_batch(rows, chunk, s.tokenizer.pad_token_id, s.cfg.prefix_sharing)
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
            _, stats = _forward(s, batch.to(s.device), "eval")
        _accumulate(window, stats, len(chunk))
    s.policy.train()
    n = window.pop("rows")
    return {f"eval/{k}": v / n for k, v in window.items()}


def _accumulate(window: dict[str, float], stats: dict[str, Tensor], rows: int) -> None:
    for k, v in stats.items():
        window[k] += float(v.float().sum())
    window["rows"] += rows


def _log_row(window: dict[str, float], step: int, epoch: int, lr: float) -> dict[str, Any]:
    rows, steps = window.pop("rows"), window.pop("steps")
    row: dict[str, Any] = {"step": step, "epoch": epoch, "lr": lr}
    row.update({k: v / (steps if k == "grad_norm" else rows) for k, v in window.items()})
    return row


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().float().norm() for p in params])))


# --------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup(cfg: TrainConfig) -> Setup:
    seed_everything(cfg.seed)
    spec = LOSS_SPECS[cfg.loss]
    reference_kind = cfg.reference
    if reference_kind == "auto":
        reference_kind = "precomputed" if spec.needs_reference else "none"
    if spec.needs_reference and reference_kind == "none":
        raise ConfigError(f"reference: loss '{cfg.loss}' needs a reference; use precomputed or copy")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    autocast = _autocast(cfg.autocast, device, dtype)
    run = RunDir.create(cfg.output_dir, cfg)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    train_rows, eval_rows = _load_rows(cfg, tokenizer, run)
    policy = load_model(
        cfg.model, dtype=dtype, device=device, trust_remote_code=cfg.trust_remote_code
    )
    reference: Reference | None = None
    if spec.needs_reference and reference_kind == "precomputed":
        splits = {"train": train_rows, **({"eval": eval_rows} if eval_rows else {})}
        settings = {"dtype": str(dtype), "autocast": autocast, "device": device.type,
                    "prefix_sharing": cfg.prefix_sharing}
        reference = Precomputed.build(
            policy, splits, pad_id=tokenizer.pad_token_id, batch_size=cfg.eval_batch_size,
            device=device, chunk=cfg.logprob_chunk,
            cache_dir=Path(cfg.cache_dir).expanduser() / "reference", settings=settings,
            autocast=autocast, progress=cfg.progress, prefix_sharing=cfg.prefix_sharing,
        )
    elif spec.needs_reference and reference_kind == "copy":
        reference = FrozenCopy(policy, cfg.logprob_chunk, autocast)
    elif reference_kind == "lora":
        raise ConfigError("reference: 'lora' needs lora=true (LoRA support is not in this build)")
    apply_levers(cfg, policy)  # after the reference pass, which needs neither
    steps_per_epoch = max(1, len(train_rows) // (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]), weight_decay=cfg.weight_decay,
        fused=cfg.fused_adamw,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, cfg.warmup_steps, total, cfg.scheduler)
    )
    return Setup(cfg, run, device, autocast, tokenizer, policy, reference, train_rows, eval_rows,
                 optimizer, scheduler, total)


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
    cfg: TrainConfig, tokenizer: Any, run: RunDir
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Read, validate and tokenize train (and eval) rows; print and save what was dropped."""
    kwargs = {"field_map": cfg.field_map, "prompt_template": cfg.prompt_template,
              "split": cfg.split}
    audit: dict[str, Any] = {}
    out = []
    for name, path in (("train", cfg.data), ("eval", cfg.eval_data)):
        if path is None:
            out.append([])
            continue
        if LOSS_SPECS[cfg.loss].data == "completions":
            records = load_completions(path, **kwargs)  # type: ignore[arg-type]
        else:
            records, report = load_preferences(path, data_format=cfg.data_format, **kwargs)  # type: ignore[arg-type]
            log.info("%s", report.summary())
            audit[f"{name}_data"] = dataclasses.asdict(report)
        chat = use_chat(tokenizer, cfg.chat_template, needs_chat(records))
        rows, trunc = tokenize_records(
            tokenizer, records, chat=chat, max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
        )
        log.info("%s %s", name, trunc.summary())
        audit[f"{name}_truncation"] = trunc.as_dict()
        audit[f"{name}_chat_template"] = chat
        if not rows:
            raise DataError(
                f"{path}: no rows left after truncation ({trunc.dropped} dropped: prompts "
                f"longer than max_length={cfg.max_length}); raise max_length or set "
                "max_prompt_length"
            )
        out.append(rows)
    run.write_json("data_audit.json", audit)
    return out[0], out[1]
