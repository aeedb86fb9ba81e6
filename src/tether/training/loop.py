"""``train(cfg)`` and ``sft(cfg)``: the one training loop, set-up helpers around it.

Read ``_loop`` top to bottom: it is the whole procedure. Strategy choices (which reference,
which data shape, which precision and attention kernel) are made in ``_setup`` before the loop
starts.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from tether.config import TrainConfig, absolute_paths
from tether.data.batching import micro_batches, step_batches
from tether.data.memory import registered
from tether.data.tokenization import TokenizedPair, beyond_context
from tether.losses import LossConfig, LossOutput, loss_config
from tether.model.export import write_model_files
from tether.model.flex import choose_attention
from tether.model.loading import (
    context_window,
    load_model,
    load_tokenizer,
    resolve_device,
    save_model,
)
from tether.model.logprobs import SequenceLogProbs
from tether.model.lora import apply_lora, load_4bit, save_lora
from tether.model.packing import scorer_inputs
from tether.model.precision import Precision, resolve_precision, warn_if_stalled
from tether.model.prefix_sharing import Batch, SharedPrefixBatch, batch_logps, make_batch
from tether.model.speed import apply_levers
from tether.shapes import Shape, shape_of
from tether.shapes.pairs import token_weighting
from tether.tracking import Tracking, open_tracking
from tether.training.best import BestCheckpoint, prune_keeping
from tether.training.callbacks import Callbacks
from tether.training.checkpoint import LoopState, save_checkpoint
from tether.training.distributed import (
    Dist,
    GradSync,
    clip_grad_norm,
    close_distributed,
    full_state_dict,
    init_distributed,
    local_module,
    wrap_policy,
)
from tether.training.finish import finish_run, restore_best
from tether.training.objects import Objects, prepare, ready_model, ready_tokenizer
from tether.training.provenance import RunRecord
from tether.training.reference import (
    Reference,
    build_reference,
    copy_before_wrapping,
    reference_kind,
    synced_reference,
)
from tether.training.resume import fingerprint, lr_factor, resume, seed_everything
from tether.training.run_dir import RunDir, open_run_dir
from tether.training.run_guard import claim_run_dir, require_finite
from tether.training.sharded_checkpoint import save_sharded_checkpoint
from tether.training.signals import StopOnSignal
from tether.training.window import accumulate, add_step, finite_step, log_row, means
from tether.trl_names import warmup_from_ratio

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
    precision: Precision  # weights' dtype and the forward's autocast (model/precision.py)
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
    packing: bool  # padding-free batches (model/packing.py)
    grad_sync: GradSync  # which micro-batches reduce gradients over ranks (the step's last)
    after_step: Callable[[int], None]  # TR-DPO moves the reference (no-op otherwise)
    weigh_tokens: Callable[[Batch], Batch]  # LD-DPO's per-token weights (identity otherwise)
    best: BestCheckpoint | None  # keep_best: the checkpoint with the best eval metric
    record: RunRecord  # run.json: versions, times, host, command, end-of-run summary
    track: Tracking  # metrics.jsonl, trackers (report_to), health warnings, report.md
    callbacks: Callbacks = field(default_factory=Callbacks)  # the user's, called at 5 points


def train(
    config: TrainConfig | Mapping[str, Any], *, model: Any = None, ref_model: Any = None,
    tokenizer: Any = None, train_dataset: Any = None, eval_dataset: Any = None,
    peft_config: Any = None, callbacks: Sequence[Any] = (),
) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; return the run directory.

    ``config``: a ``TrainConfig`` or a dict of its keys (TRL's names too); objects may stand in
    for paths, as with TRL (``tether.training.objects``); ``callbacks``: see
    ``tether.training.callbacks``. A run that SIGTERM/SIGINT stopped early (after its
    checkpoint) raises ``Stopped``."""
    cfg, objects = prepare(config, model=model, ref_model=ref_model, tokenizer=tokenizer,
                           train_dataset=train_dataset, eval_dataset=eval_dataset,
                           peft_config=peft_config)
    with claim_run_dir(cfg):  # one writer; never replaces an earlier run or the input model
        with registered(objects.datasets):
            setup = _setup(cfg, objects)
        setup.callbacks = Callbacks(callbacks)
        start = setup.state.step, setup.state.tokens
        with StopOnSignal() as stop:
            finished = _loop(setup, stop)
        if finished:
            _save(setup)
            setup.callbacks.save(setup.state.step, setup.run.model_dir)
        finish_run(setup, finished, start)  # run.json's summary, the model card, push_to_hub
        setup.track.finish()  # summary to the trackers, report.md (also after a stop signal)
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
    if s.best is not None:
        restore_best(s.policy, s.best)  # keep_best: model/ is the best checkpoint's weights
    require_finite(s.policy, s.dist)  # inf/NaN weights (e.g. lr=inf) are never saved
    state = full_state_dict(s.policy, s.dist)  # FSDP gathers to rank 0's CPU; else None
    if not s.dist.main:
        return
    if s.cfg.lora:
        save_lora(s.policy, s.tokenizer, s.run.model_dir, s.cfg, state)
    else:
        save_model(s.policy, s.tokenizer, s.run.model_dir, state)  # type: ignore[arg-type]
    log.info("model saved to %s", s.run.model_dir)


def sft(config: TrainConfig | Mapping[str, Any], **objects: Any) -> Path:
    """Supervised fine-tuning: ``train`` with the ``sft`` loss (completion tokens only); the
    same objects as ``train`` (``train_dataset`` rows are ``{prompt, completion}``)."""
    if isinstance(config, Mapping):
        config = {**config, "loss": "sft"}
    elif config.loss != "sft":
        config = dataclasses.replace(config, loss="sft")
    return train(config, **objects)


# --------------------------------------------------------------------------- the loop


def _loop(s: Setup, stop: StopOnSignal) -> bool:
    """Run to ``total_steps``; False when a signal stopped it (after a checkpoint)."""
    cfg, policy, st = s.cfg, s.policy, s.state
    rows_per_step = cfg.batch_size * cfg.grad_accum * s.dist.world_size  # the global batch
    lengths = [r.length for r in s.train_rows]
    window: dict[str, float] = defaultdict(float)  # metric sums since the last log line
    t_start, tokens_at_start = time.perf_counter(), st.tokens
    eval_seconds = 0.0  # spent evaluating: not part of the training throughput
    bar = tqdm(total=s.total_steps, initial=st.step, desc=cfg.loss,
               disable=not cfg.progress or not s.dist.main)
    policy.train()
    s.callbacks.train_begin({"total_steps": s.total_steps, "output_dir": s.run.path})
    while st.step < s.total_steps:
        steps = step_batches(lengths, rows_per_step, st.epoch, cfg.seed, cfg.group_by_length)
        for step_rows in steps[st.step_in_epoch :]:
            if st.step >= s.total_steps:
                break
            # One optimizer step over grad_accum micro-batches; the loss is the mean over all
            # the step's rows, so batch 8 × 1 and batch 4 × 2 give the same gradient.
            # Ranks reduce gradients once, in the last micro-batch's backward (GradSync); a
            # step may have fewer than grad_accum micro-batches (an epoch shorter than a step).
            losses: list[Tensor] = []
            step_stats: dict[str, float] = defaultdict(float)  # the step's sums, kept if finite
            micros = list(micro_batches(s.dist.shard(step_rows), cfg.grad_accum))
            for m, micro in enumerate(micros):
                rows = [s.train_rows[i] for i in micro]
                batch = make_batch(rows, micro, s.tokenizer.pad_token_id, s.prefix_sharing,
                                   s.packing).to(s.device)
                with s.grad_sync(last=m == len(micros) - 1):
                    with s.precision.compute(s.device):
                        out, stats = _forward(s, batch, "train")
                    # × world_size: DDP/FSDP average gradients over ranks (distributed.py)
                    loss = out.losses.sum() * s.dist.world_size / len(step_rows)
                    loss.backward()
                losses.append(loss.detach())
                accumulate(step_stats, stats, len(micro))
                st.tokens += batch.tokens
            grad_norm = _clip(policy, cfg.max_grad_norm)
            finite = finite_step(s.dist.sum(torch.stack(losses).sum()), grad_norm, st,
                             cfg.max_bad_steps)
            if finite:
                s.optimizer.step()
            lr = float(s.scheduler.get_last_lr()[0])  # the rate this step used, not the next one
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            st.step += 1
            s.after_step(st.step)
            st.step_in_epoch += 1
            add_step(window, step_stats, grad_norm, finite)  # a skipped step: counted only
            bar.update(1)
            if s.dist.any(s.callbacks.step_end(st.step)):  # e.g. early stopping: the last step
                s.total_steps = st.step
            if st.step % cfg.log_every == 0 or st.step == s.total_steps:
                s.dist.sum_rows(window)  # every rank's rows
                row = log_row(window, st, lr, st.epoch + st.step_in_epoch / len(steps))
                elapsed = time.perf_counter() - t_start - eval_seconds  # training time only
                row["tokens_per_s"] = s.dist.total(st.tokens - tokens_at_start) / elapsed
                row["num_tokens"] = s.dist.total(st.tokens)
                st.metrics_lines += s.track.log(row)
                s.callbacks.log(st.step, row)
                bar.set_postfix({k: f"{row[k]:.4f}" for k in ("loss", "rewards/accuracies")
                                 if row.get(k) is not None})  # SFT: no accuracy; skipped: no loss
                window.clear()
            if s.eval_rows and _eval_due(cfg, st.step):
                t_eval = time.perf_counter()
                measured = evaluate_pairs(s)
                st.metrics_lines += s.track.log({"step": st.step, **measured})
                eval_seconds += time.perf_counter() - t_eval
                if s.best is not None:
                    s.best.observe(st.step, measured)
                s.callbacks.evaluate(st.step, measured)
            stopping = s.dist.any(stop.requested)  # all ranks stop at the same step
            if (cfg.save_every and st.step % cfg.save_every == 0) or stopping:
                _checkpoint(s)
            if stopping:
                bar.close()
                return False
        st.epoch += 1
        st.step_in_epoch = 0
    bar.close()
    if s.eval_rows and not _eval_due(cfg, st.step):  # else the last step just evaluated
        final = {"step": st.step, **evaluate_pairs(s)}
        st.metrics_lines += s.track.log(final)
        s.callbacks.evaluate(st.step, {k: v for k, v in final.items() if k != "step"})
        log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k != "step"))
    return True


def _eval_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.eval_every) and step % cfg.eval_every == 0


def _forward(s: Setup, batch: Batch, split: str) -> tuple[LossOutput, dict[str, Tensor]]:
    """Policy log-probs -> reference log-probs -> the data shape's loss and statistics."""
    batch = s.weigh_tokens(batch)
    if isinstance(batch, SharedPrefixBatch):  # one process only: no wrapper to go through
        logps, counts = batch_logps(s.policy, batch, s.cfg.logprob_chunk)
        wpo = []
    else:
        # WPO runs also get the policy's Σ log p − log Σ p² per completion (SequenceLogProbs.wpo)
        logps, counts, *wpo = s.scorer(**scorer_inputs(batch))
    # (K·B,) sums over completion tokens and token counts, block j = every row's j-th completion
    # A shared-prefix batch only meets references that read log-probs by row (_shares_prefix).
    ref = s.reference(batch, split) if s.reference is not None else None  # type: ignore[arg-type]
    rows = s.train_rows if split == "train" else s.eval_rows
    return s.shape.step(s.loss, [rows[i] for i in batch.index.tolist()], logps, counts, ref,
                        *wpo)


@torch.no_grad()
def evaluate_pairs(s: Setup) -> dict[str, float]:
    """Loss, reward accuracy and margins on the eval rows (policy in eval mode)."""
    s.policy.eval()
    window: dict[str, float] = defaultdict(float)
    idx = list(range(len(s.eval_rows)))
    for start in range(0, len(idx), s.cfg.eval_batch_size):
        chunk = idx[start : start + s.cfg.eval_batch_size]
        rows = [s.eval_rows[i] for i in chunk]
        batch = make_batch(rows, chunk, s.tokenizer.pad_token_id, s.prefix_sharing, s.packing)
        with s.precision.compute(s.device):
            _, stats = _forward(s, batch.to(s.device), "eval")
        accumulate(window, stats, len(chunk))
    s.policy.train()
    return {f"eval/{k}": v for k, v in means(window).items()}


def _checkpoint(s: Setup) -> None:
    keep = 0 if s.best is not None else s.cfg.checkpoints_kept  # keep_best prunes below
    if s.dist.active:
        path = save_sharded_checkpoint(s.run.path, s.policy, s.optimizer, s.scheduler, s.state,
                                       s.fingerprint, keep)
    else:  # the step directory is also a model: config, generation config, tokenizer
        path = save_checkpoint(s.run.path, s.policy, s.optimizer, s.scheduler, s.state,
                               s.fingerprint, keep,
                               export=lambda d: write_model_files(s.policy, s.tokenizer, d))
    if s.best is not None:
        s.best.checkpointed(s.state.step)
        prune_keeping(s.run.path, s.cfg.checkpoints_kept, s.best.step)
    log.info("checkpoint %s", path)
    s.callbacks.save(s.state.step, Path(path))
    s.track.checkpoint()  # report.md redrawn


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    return clip_grad_norm(model, max_norm)  # works on FSDP's sharded gradients too


# --------------------------------------------------------------------------- set-up


def _setup(cfg: TrainConfig, objects: Objects | None = None) -> Setup:
    cfg = absolute_paths(cfg)  # config.yaml and adapter configs work from any folder
    seed_everything(cfg.seed)
    loss, shape, kind = loss_config(cfg), shape_of(cfg.loss), reference_kind(cfg)
    dist, device = init_distributed(cfg.distributed, resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, cfg.dtype, cfg.autocast, device, cfg.lora)
    dtype, autocast = precision.dtype, precision.autocast
    run = open_run_dir(cfg.output_dir, cfg, dist)  # rank 0 writes, the others read
    objects = objects or Objects()
    tokenizer = ready_tokenizer(objects.tokenizer) if objects.tokenizer else load_tokenizer(
        cfg.tokenizer or cfg.model, cfg.trust_remote_code,
        field="tokenizer" if cfg.tokenizer else "model",
        revision=None if cfg.tokenizer else cfg.revision)
    train_rows, eval_rows = _load_rows(cfg, shape, tokenizer, run)
    dist.check_rows(len(train_rows), cfg.batch_size * cfg.grad_accum)
    if objects.model is not None:  # tether.train(model=...)
        policy = ready_model(objects.model, dtype, device)
    elif cfg.load_in_4bit:
        policy = load_4bit(cfg, device, dtype)
    else:
        policy = load_model(cfg.model, dtype=dtype, device=dist.load_device(device),
                            trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                            empty=dist.empty_model)  # FSDP: only rank 0 reads the weights
    sharing = _shares_prefix(cfg, shape, kind, dist)
    choose_attention(cfg.attn_implementation, policy, device, sharing or cfg.packing)
    policy = apply_lora(policy, cfg)  # PEFT adapters on a frozen base (lora=true)
    warn_if_stalled(precision, policy, cfg.lr)  # pure bf16 at DPO learning rates
    reference = copy_before_wrapping(cfg, kind, policy, dist, device, autocast)
    scorer = wrap_policy(policy, dist, device, cfg.logprob_chunk, autocast)  # DDP / FSDP2
    if reference is None:
        ref_model = ready_model(objects.ref_model, dtype, device) if objects.ref_model else None
        splits = {"train": train_rows, **({"eval": eval_rows} if eval_rows else {})}
        reference = build_reference(cfg, kind, policy, scorer, dist, splits,
                                    pad_id=tokenizer.pad_token_id, device=device, dtype=dtype,
                                    autocast=autocast, reference_model=ref_model)
    policy_scorer = local_module(scorer)
    assert isinstance(policy_scorer, SequenceLogProbs)
    policy_scorer.wpo = cfg.use_weighting  # WPO: the head also gives log Σ p² per token
    reference, after_step = synced_reference(reference, policy, cfg.ref_model_sync_steps,
                                             cfg.ref_model_mixup_alpha)
    apply_levers(cfg, policy)  # after the reference pass, which needs neither
    rows_per_step = cfg.batch_size * cfg.grad_accum * dist.world_size
    steps_per_epoch = max(1, len(train_rows) // rows_per_step)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps or warmup_from_ratio(cfg.warmup_ratio, total)  # TRL's ratio
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]), weight_decay=cfg.weight_decay,
        fused=cfg.fused_adamw and dist.world_size == 1,  # no fused kernel for sharded DTensors
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, cfg.scheduler)
    )
    fp = fingerprint(cfg, train_rows, rows_per_step)
    state = resume(cfg, run, policy, optimizer, scheduler, fp)
    track = open_tracking(cfg, run, dist, train_rows)  # after _resume trimmed metrics.jsonl
    return Setup(cfg, loss, shape, run, device, precision, tokenizer, policy, reference,
                 train_rows, eval_rows, optimizer, scheduler, total, fp, state, dist,
                 scorer, sharing, cfg.packing, GradSync(scorer, defer_fsdp=cfg.lora), after_step,
                 token_weighting(loss),
                 BestCheckpoint.for_run(cfg.keep_best, run.path, dist.active, state.step),
                 RunRecord.start(run.path, write=dist.main), track)


def _shares_prefix(cfg: TrainConfig, shape: Shape, reference_kind: str, dist: Dist) -> bool:
    """Prefix sharing where it is exact and tested: one process (under DDP/FSDP the forward
    must go through the wrapper), pairs (not KTO or whole rankings), and a reference that
    reads log-probs by row (precomputed) or needs none. Elsewhere: plain batches."""
    ok = dist.world_size == 1 and shape.prefix_sharing and reference_kind in ("precomputed",
                                                                               "none") \
        and not cfg.use_weighting  # WPO's log Σ p² comes from the plain scorer only
    if cfg.prefix_sharing and not ok:
        log.info("prefix_sharing: off for this run (distributed, non-pair data, or a "
                 "reference=%s that scores batches itself, or WPO)", reference_kind)
    return cfg.prefix_sharing and ok


# Keys that may change between a run and its resumption; every other key must match.
# max_steps/epochs may grow to extend a run (the learning-rate schedule then follows the new
# length, so only an unchanged length reproduces the uninterrupted run bit for bit).
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
        context = context_window(cfg.model, cfg.trust_remote_code)
        audit[f"{split}_rows_beyond_context"] = beyond_context(split, loaded.rows, context)
        out[i] = loaded.rows
    run.write_json("data_audit.json", audit)
    return out[0], out[1]
