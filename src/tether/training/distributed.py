"""Data-parallel training under ``torchrun``: DDP replicas or FSDP2 shards.

``torchrun --nproc_per_node N -m tether train ...`` starts N processes; each reads the rank
from the environment torchrun sets and joins one process group (NCCL on GPUs, gloo on CPUs).
Every optimizer step takes ``batch_size × grad_accum × world_size`` rows (the global batch);
rank r takes every N-th of them, so the length-grouped rows spread evenly. DDP and FSDP
*average* gradients over ranks, so each rank's loss is its rows' sum × N / global rows: the
averaged gradient is then the gradient of the mean over the global batch, the same as one
process taking all the rows.

- ``ddp``: a full replica per rank; the forward goes through ``DistributedDataParallel``
  around ``SequenceLogProbs``, so the backward all-reduces the gradients.
- ``fsdp``: FSDP2 (``fully_shard``) on every decoder layer and on the ``SequenceLogProbs`` root
  (which owns embeddings, final norm and LM head): parameters, gradients and optimizer state
  are split N ways and gathered layer by layer. With ``autocast`` the gathered weights are
  bf16 and the gradients reduced in fp32. Only rank 0 reads the pretrained weights; the
  others build the model on the meta device and receive their shards (``shard_module``).

With ``grad_accum`` > 1 the ranks reduce gradients once per step, after its last micro-batch
(``GradSync``).

Only rank 0 writes (metrics, data audit, config, cache, model, progress bars); the others log
warnings only. The reference precompute is split over the ranks and all-gathered into the one
cache; ``reference=copy`` under FSDP is a sharded frozen copy (or ``reference_model``, sharded).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from tether.errors import ConfigError
from tether.model.logprobs import SequenceLogProbs

__all__ = [
    "Dist", "GradSync", "clip_grad_norm", "close_distributed", "full_state_dict",
    "init_distributed", "local_module", "reshard", "shard_module", "wrap_policy",
]

log = logging.getLogger("tether")

Mode = Literal["none", "ddp", "fsdp"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands: the mode, its rank and the number of ranks."""

    mode: Mode = "none"
    rank: int = 0
    world_size: int = 1
    comm_device: torch.device = torch.device("cpu")  # where collectives' tensors live

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group exists and the policy is wrapped (DDP or FSDP)."""
        return self.mode != "none"

    def shard(self, rows: Sequence[int]) -> list[int]:
        """This rank's rows of one optimizer step."""
        return list(rows[self.rank :: self.world_size])

    def sum(self, t: Tensor) -> Tensor:
        """The sum over ranks of a tensor every rank holds (itself on one process)."""
        if not self.active:
            return t
        out = t.detach().to(self.comm_device, torch.float64).clone()
        dist.all_reduce(out)
        return out.to(t.device)

    def total(self, x: float) -> float:
        return float(self.sum(torch.tensor(float(x))))

    def any(self, flag: object) -> bool:
        """True on every rank when it is true on one (a signal reached only some ranks)."""
        return self.total(float(bool(flag))) > 0 if self.active else bool(flag)

    def sum_rows(
        self, window: dict[str, float], skip: Sequence[str] = ("grad_norm", "steps", "skipped")
    ) -> None:
        """Add up, in place, the per-row metric sums of all ranks; ``skip`` are per-step values
        that every rank already holds (the gradient norm is taken after the all-reduce)."""
        if not self.active:
            return
        keys = sorted(k for k in window if k not in skip)
        summed = self.sum(torch.tensor([window[k] for k in keys], dtype=torch.float64))
        window.update(zip(keys, summed.tolist(), strict=True))

    def load_device(self, device: torch.device) -> torch.device:
        """Where to load the model: FSDP loads on the CPU and ``fully_shard`` moves each
        layer's shard to the GPU as it shards it, so no GPU ever holds the whole model."""
        return torch.device("cpu") if self.mode == "fsdp" else device

    @property
    def empty_model(self) -> bool:
        """FSDP ranks other than 0 build the model on the meta device and read no weights:
        only rank 0 holds the whole model, and sends each rank its shards (``shard_module``)."""
        return self.mode == "fsdp" and not self.main

    def refuse_fsdp(self, what: str, instead: str) -> None:
        if self.mode == "fsdp":
            raise ConfigError(
                f"distributed: {what} is not sharded under fsdp yet; use {instead} or "
                "distributed=ddp"
            )

    def check_rows(self, rows: int, per_rank: int) -> None:
        """Every rank must get a full share of every step: FSDP gathers weights in each
        forward, so ranks that ran different numbers of forwards would wait on each other."""
        need = per_rank * self.world_size
        if self.active and rows < need:
            raise ConfigError(
                f"batch_size: {rows} training rows are fewer than one global step of "
                f"batch_size × grad_accum × world_size = {need}; lower batch_size or grad_accum"
            )


def init_distributed(mode: str, device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when launched by it; returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched:
        if mode in ("ddp", "fsdp"):
            raise ConfigError(
                f"distributed: '{mode}' needs a torchrun launch, e.g. torchrun --nproc_per_node "
                "2 -m tether train ...; or set distributed=auto"
            )
        return Dist(), device
    if mode == "none" and world > 1:
        raise ConfigError(
            f"distributed: 'none' but torchrun started {world} processes; use distributed=auto, "
            "ddp or fsdp, or launch one process"
        )
    chosen: Mode = "ddp" if mode == "auto" else mode  # type: ignore[assignment]
    if mode == "auto" and world == 1:
        chosen = "none"
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if rank != 0:
        log.setLevel(logging.WARNING)  # one voice: rank 0 reports
    if chosen == "none":
        return Dist(), device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    log.info("distributed: %s over %d ranks (%s)", chosen, world, dist.get_backend())
    return Dist(chosen, rank, world, device), device


def close_distributed(d: Dist) -> None:
    """Leave the process group once every rank is done. Only after a run that went well: a
    rank that failed leaves without it, and torchrun stops the others, because destroying a
    group while other ranks still wait in a collective can hang."""
    if d.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------- wrapping


def _mixed_precision(autocast: bool) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if autocast:  # bf16 compute on gathered weights, fp32 master shards and gradient reduction
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _fully_shard(scorer: SequenceLogProbs, d: Dist, autocast: bool) -> None:
    """FSDP2: one unit per decoder layer (its weights are gathered just for its forward and
    backward), the root unit holds what is left: embeddings, final norm, LM head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.comm_device.type, (d.world_size,))
    mp = _mixed_precision(autocast)
    inner: Any = scorer.model
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    layer_types = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in scorer.modules() if type(m).__name__ in layer_types]
    if not layers:
        log.warning("fsdp: %s names no decoder-layer class; sharding the whole model as one "
                    "unit (no memory saving while it runs)", type(base).__name__)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(scorer, mesh=mesh, mp_policy=mp)


def shard_module(scorer: SequenceLogProbs, d: Dist, device: torch.device, autocast: bool) -> None:
    """FSDP2-shard ``scorer`` onto ``device``, every rank's shards filled from rank 0's weights.

    Rank 0 loaded the checkpoint; the others built the model on the meta device
    (``Dist.empty_model``), so after sharding they allocate only their shards
    (``to_empty``), which rank 0's full state dict fills by broadcast. Buffers are sent
    too: the non-persistent ones (rotary ``inv_freq``) are in no state dict. Tied weights
    (one parameter under two names) stay one sharded parameter.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = scorer.state_dict() if d.main else {}  # rank 0, before sharding: the whole model
    _fully_shard(scorer, d, autocast)
    if d.main:
        scorer.to(device)
    else:
        scorer.to_empty(device=device)  # uninitialised shards and buffers, filled below
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(scorer, full, options=options)
    for buffer in scorer.buffers():
        dist.broadcast(buffer, src=0)


def wrap_policy(
    policy: nn.Module, d: Dist, device: torch.device, chunk: int, autocast: bool
) -> nn.Module:
    """The module the loop calls for the policy's log-probs: ``SequenceLogProbs(policy)``,
    wrapped in DDP or sharded with FSDP2 when distributed. Its forward gives (sums, counts)."""
    scorer = SequenceLogProbs(policy, chunk)
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # No buffer broadcast in each forward: the buffers (rotary tables) are equal
        # everywhere, and each would be one more collective every rank must join.
        return DistributedDataParallel(
            scorer, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
        )
    if d.mode == "fsdp":
        shard_module(scorer, d, device, autocast)
    return scorer


@dataclass(frozen=True)
class GradSync:
    """Which micro-batches of an optimizer step reduce gradients over ranks.

    Gradient accumulation needs the ranks' gradients summed once per step, not once per
    micro-batch: the loss is linear in each micro-batch's rows, so summing locally first and
    reducing once gives the same gradient. Use ``with grad_sync(last=...)`` around each
    micro-batch's forward *and* backward (DDP decides in the forward whether the backward
    all-reduces).

    - DDP: ``no_sync()`` on all but the last micro-batch; the one all-reduce sums them all.
    - FSDP2: ``set_requires_gradient_sync(False)`` keeps each unit's *unsharded* gradient until
      the last micro-batch, a full-size gradient per rank. That is only worth it when the
      trainable parameters are few (LoRA adapters); a full fine-tune reduce-scatters every
      micro-batch and keeps its gradients sharded, as torchtitan does (pytorch/torchtitan#292).
    """

    scorer: nn.Module
    defer_fsdp: bool = False  # FSDP: hold gradients unsharded until the step's last micro-batch

    @contextlib.contextmanager
    def __call__(self, last: bool) -> Iterator[None]:
        from torch.distributed.fsdp import FSDPModule

        if isinstance(self.scorer, nn.parallel.DistributedDataParallel) and not last:
            with self.scorer.no_sync():
                yield
            return
        if isinstance(self.scorer, FSDPModule) and self.defer_fsdp:
            self.scorer.set_requires_gradient_sync(last)  # recurses into the layer units
        yield


def reshard(module: nn.Module) -> None:
    """Put FSDP's root back to its shards after a pass without backward: the root keeps its
    gathered weights after a forward (for the backward), and an optimizer built then would
    hold the gathered copies instead of the shards."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        module.reshard()


def local_module(scorer: nn.Module) -> nn.Module:
    """The scorer without its DDP wrapper: for passes that have no backward."""
    return scorer.module if isinstance(scorer, nn.parallel.DistributedDataParallel) else scorer


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """The global L2 norm of the gradients, clipped to ``max_norm`` when > 0. Works on FSDP's
    sharded (DTensor) gradients: the norm is reduced over ranks."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm > 0 else \
        torch.nn.utils.get_total_norm([p.grad for p in params])  # type: ignore[misc]
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def full_state_dict(policy: nn.Module, d: Dist) -> dict[str, Any] | None:
    """FSDP: the consolidated weights on rank 0's CPU (every rank must call this); None when
    the policy is whole on every rank."""
    if d.mode != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(policy, options=options)
    # A tied parameter (GPT-2's LM head is its embedding) comes under each of its names; keep
    # the first, as save_pretrained of a whole model does, so both runs save the same files.
    first: dict[int, str] = {}
    for name, p in policy.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            state.pop(name, None)
    return state
