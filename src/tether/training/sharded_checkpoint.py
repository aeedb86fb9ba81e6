"""Checkpoints of a torchrun run: ``torch.distributed.checkpoint`` (DCP), sharded and reshardable.

Beside ``tether.training.checkpoint`` (one process, safetensors), with the same directory contract:
``checkpoints/step-N/`` is complete if it exists. Every rank writes its own shard of the
weights and optimizer state (``__R_0.distcp``) into ``.tmp-step-N``; DCP's coordinator adds
``.metadata``; rank 0 adds ``state.json`` and ``rng.safetensors`` (loop position, scheduler,
RNG, fingerprint), fsyncs, and renames the directory into place.

Tensors are saved under their model names (fully qualified names, not DDP's ``module.`` or
FSDP's layout), so a checkpoint loads at any number of ranks, in DDP or FSDP, or in one plain
process: DCP reshards on load. Frozen parameters (a LoRA run's base) are not saved: they come
from ``model`` again. DCP's files hold tensors and a metadata index, and ``torch.load`` never
reads them: the loader takes nothing but tensors and JSON. A single-process checkpoint
(safetensors) resumes under FSDP too: each rank keeps its shard of the whole tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from tether.errors import CheckpointError
from tether.training.checkpoint import (
    LoopState,
    _set_rng_state,
    checkpoint_failed,
    checkpoint_paths,
    load_checkpoint,
    optimizer_state_by_name,
    prepare_checkpoint,
    prune_checkpoints,
    publish_checkpoint,
    read_state,
    verify_files,
    write_state,
)

__all__ = ["is_sharded", "load_any_checkpoint", "load_sharded_checkpoint",
           "save_sharded_checkpoint"]

# A LoRA run's frozen base is read from `model` again; only what trains is saved.
_OPTIONS = StateDictOptions(ignore_frozen_params=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def is_sharded(path: Path) -> bool:
    return (path / ".metadata").is_file()


def save_sharded_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: Any,
    fingerprint: dict[str, Any],
    keep: int,
) -> Path:
    """Every rank calls this; writes ``checkpoints/step-N`` atomically and prunes old ones."""
    final, tmp = checkpoint_paths(run_dir, state.step)
    if _rank() == 0:
        prepare_checkpoint(tmp)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    try:
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
        if _rank() == 0:
            world = dist.get_world_size() if dist.is_initialized() else 1
            write_state(tmp, {"format": "dcp", "world_size": world, "loop": state.__dict__,
                              "scheduler": scheduler.state_dict(), "fingerprint": fingerprint})
            publish_checkpoint(tmp, final)
    except (OSError, dcp.api.CheckpointException) as e:
        raise checkpoint_failed(final, tmp if _rank() == 0 else None, e) from None
    _barrier()  # the directory is complete before any rank goes on
    if _rank() == 0:
        prune_checkpoints(run_dir, keep)
    return final


def load_sharded_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
) -> LoopState:
    """Restore a DCP checkpoint at this run's number of ranks (every rank calls this)."""
    meta = _read_state(path, fingerprint)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    try:
        # DCP loads in place, into the tensors of the state dicts given (resharding them)
        dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path),
                 no_dist=not dist.is_initialized())  # a plain process may resume too
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                       options=_OPTIONS)
        return _restore_loop(path, meta, scheduler)
    except (dcp.api.CheckpointException, OSError, RuntimeError, KeyError, ValueError) as e:
        raise _invalid(path, e) from None


def load_any_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
) -> LoopState:
    """Resume from either format: sharded (any number of ranks) or single-process."""
    if is_sharded(path):
        return load_sharded_checkpoint(path, model, optimizer, scheduler, fingerprint)
    if any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters()):
        return _load_single_into_shards(path, model, optimizer, scheduler, fingerprint)
    return load_checkpoint(path, model, optimizer, scheduler, fingerprint)


def _load_single_into_shards(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
) -> LoopState:
    """A single-process checkpoint resumed under FSDP: every rank reads its whole tensors, and
    ``set_state_dict(full_state_dict=True)`` keeps this rank's shard of each (weights and the
    optimizer state, renamed from the parameters' order to their names)."""
    meta = _read_state(path, fingerprint)
    names = [n for n, p in model.named_parameters() if p.requires_grad]  # the optimizer's order
    try:
        weights: dict[str, Any] = load_file(str(path / "model.safetensors"))
        optim = optimizer_state_by_name(load_file(str(path / "optimizer.safetensors")),
                                        meta["optimizer"], names)
        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                       options=StateDictOptions(full_state_dict=True))
        return _restore_loop(path, meta, scheduler)
    except (OSError, RuntimeError, KeyError, ValueError, IndexError) as e:
        raise _invalid(path, e) from None


def _read_state(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``read_state`` with the files' checksums verified once, by rank 0 (every rank hashing
    every shard would read the checkpoint N times); all ranks refuse together, with rank 0's
    message, so none waits for the others in a collective."""
    error, meta = "", {}
    try:
        meta = read_state(path, fingerprint, verify=False)
        if _rank() == 0:
            verify_files(path, meta)
    except CheckpointError as e:
        error = str(e)
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)  # a str: rank 0's verdict
        error = error or box[0]
    if error:
        raise CheckpointError(error)
    return meta


def _restore_loop(path: Path, meta: dict[str, Any], scheduler: Any) -> LoopState:
    """What follows the tensors: RNG states, the scheduler, and where the loop stood."""
    _set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
    scheduler.load_state_dict(meta["scheduler"])
    return LoopState(**meta["loop"])  # checked by read_state


def _invalid(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid tether checkpoint for this model "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
