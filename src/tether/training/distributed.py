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
  others build the model on the meta device and receive their shards (``_shard``).

With ``grad_accum`` > 1 the ranks reduce gradients once per step, after its last micro-batch
(``GradSync``).

Only rank 0 writes (metrics, data audit, config, cache, model, progress bars); the others log
warnings only. The reference precompute is split over the ranks and all-gathered into the one
cache; ``reference=copy`` under FSDP is a sharded frozen copy (or ``reference_model``, sharded).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from tether.data.batching import PreferenceBatch, collate
from tether.errors import ConfigError
from tether.model.logprobs import SequenceLogProbs
from tether.training.reference import (
    FrozenCopy,
    Precomputed,
    Reference,
    cache_path,
    save_table,
    weights_fingerprint,
)
from tether.training.run_dir import RunDir
from tether.data.tokenization import TokenizedPair

__all__ = [
    "Dist", "GradSync", "QuietRunDir", "ScorerReference", "clip_grad_norm", "close_distributed",
    "frozen_copy", "frozen_scorer", "full_state_dict", "init_distributed", "local_module",
    "open_run_dir", "precompute_reference", "wrap_policy",
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
        self, window: dict[str, float], skip: Sequence[str] = ("grad_norm", "steps")
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
        only rank 0 holds the whole model, and sends each rank its shards (``_shard``)."""
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


class QuietRunDir(RunDir):
    """The run directory as ranks other than 0 see it: readable, never written."""

    @property
    def metrics_path(self) -> Path:
        # A path that never exists, so the loop's "fresh run: remove old metrics" and the
        # resume's truncation leave rank 0's file alone.
        return self.path / f".metrics-rank-{os.environ.get('RANK', '?')}.absent"

    def log_metrics(self, row: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, lines: int) -> None:
        pass

    def write_json(self, name: str, obj: Any) -> None:
        pass


def open_run_dir(output_dir: str, cfg: Any, d: Dist) -> RunDir:
    """Rank 0 creates the run directory (and writes config.yaml); the others only read it."""
    if d.main:
        return RunDir.create(output_dir, cfg)
    return QuietRunDir(Path(output_dir).expanduser())


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


def _shard(scorer: SequenceLogProbs, d: Dist, device: torch.device, autocast: bool) -> None:
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
        _shard(scorer, d, device, autocast)
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


def _reshard(module: nn.Module) -> None:
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


# --------------------------------------------------------------------------- references


class ScorerReference:
    """A frozen reference scored by its own ``SequenceLogProbs`` module (sharded under FSDP)."""

    def __init__(self, scorer: nn.Module, autocast: bool = False) -> None:
        self.scorer = scorer
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, batch: PreferenceBatch, split: str) -> tuple[Tensor, Tensor]:
        dev = batch.input_ids.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            sums, _ = self.scorer(batch.input_ids, batch.attention_mask, batch.completion_mask)
        return sums[: batch.pairs].clone(), sums[batch.pairs :].clone()


def frozen_scorer(model: nn.Module, d: Dist, device: torch.device, chunk: int) -> nn.Module:
    """``SequenceLogProbs`` of a frozen model: whole on every rank, or FSDP-sharded (1/N of
    the model per rank; its forward gathers one layer at a time, like the policy's)."""
    scorer = SequenceLogProbs(model.eval().requires_grad_(False), chunk)
    if d.mode == "fsdp":
        _shard(scorer, d, device, autocast=False)  # frozen: no gradients to reduce
    return scorer


def frozen_copy(
    policy: nn.Module, d: Dist, device: torch.device, chunk: int, autocast: bool
) -> Reference:
    """A frozen copy of the policy as it starts (call before ``wrap_policy``: FSDP shards in
    place). Under FSDP the copy is sharded too, so it costs 1/N of a model per rank."""
    if d.mode != "fsdp":
        return FrozenCopy(policy, chunk, autocast)
    import copy

    return ScorerReference(frozen_scorer(copy.deepcopy(policy), d, device, chunk), autocast)


def precompute_reference(
    policy: nn.Module,
    scorer: nn.Module,
    d: Dist,
    splits: Mapping[str, Sequence[TokenizedPair]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    chunk: int,
    cache_dir: Path,
    settings: Mapping[str, object],
    autocast: bool = False,
    progress: bool = True,
) -> Precomputed:
    """``Precomputed.build``, with the rows split over the ranks and the results all-gathered.

    Rank 0 decides whether the cache holds a split (the others follow, so a cache seen by only
    some nodes cannot desynchronise them), reads or writes it, and broadcasts a hit.
    """
    if not d.active:
        return Precomputed.build(
            policy, splits, pad_id=pad_id, batch_size=batch_size, device=device, chunk=chunk,
            cache_dir=cache_dir, settings=settings, autocast=autocast, progress=progress,
        )
    weights = weights_fingerprint(policy)  # gathers FSDP shards one tensor at a time
    table, hits = {}, 0
    for split, rows in splits.items():
        path = cache_path(cache_dir, weights, rows, settings)
        if d.any(d.main and path.exists()):
            both = torch.zeros(2, len(rows), dtype=torch.float32)
            if d.main:
                t = load_file(path)
                both = torch.stack([t["chosen"], t["rejected"]])
            both = both.to(d.comm_device)
            dist.broadcast(both, src=0)
            table[split] = (both[0].cpu(), both[1].cpu())
            hits += 1
            log.info("reference log-probs for %s read from cache %s", split, path)
            continue
        c, r = _score_sharded(local_module(scorer), rows, d, pad_id, batch_size, device,
                              autocast, f"reference ({split})", progress and d.main)
        if d.main:
            cache_dir.mkdir(parents=True, exist_ok=True)
            save_table(path, {"chosen": c, "rejected": r})
        table[split] = (c, r)
    out = Precomputed(table)
    out.cache_hits = hits
    return out


@torch.no_grad()
def _score_sharded(
    scorer: nn.Module,
    rows: Sequence[TokenizedPair],
    d: Dist,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    autocast: bool,
    desc: str,
    progress: bool,
) -> tuple[Tensor, Tensor]:
    """Each rank scores every N-th row (by length, for little padding); all-gather the rest.

    Every rank runs the same number of forwards (FSDP gathers weights in each one), so the
    shorter shards are padded with index -1, which score a real row and are thrown away.
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    per_rank = math.ceil(len(rows) / d.world_size)
    mine = order[d.rank :: d.world_size]
    idx = mine + [-1] * (per_rank - len(mine))
    values = torch.zeros(2, per_rank)  # chosen, rejected
    was_training = scorer.training
    scorer.eval()
    for s in tqdm(range(0, per_rank, batch_size), desc=desc, disable=not progress, leave=False):
        part = [i if i >= 0 else order[0] for i in idx[s : s + batch_size]]
        b = collate([rows[i] for i in part], part, pad_id).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            sums, _ = scorer(b.input_ids, b.attention_mask, b.completion_mask)
        values[0, s : s + len(part)] = sums[: b.pairs].float().cpu()
        values[1, s : s + len(part)] = sums[b.pairs :].float().cpu()
    scorer.train(was_training)
    _reshard(scorer)
    all_idx = [torch.zeros(per_rank, dtype=torch.long, device=d.comm_device)
               for _ in range(d.world_size)]
    all_values = [torch.zeros(2, per_rank, device=d.comm_device) for _ in range(d.world_size)]
    dist.all_gather(all_idx, torch.tensor(idx, dtype=torch.long, device=d.comm_device))
    dist.all_gather(all_values, values.to(d.comm_device))
    out = torch.zeros(2, len(rows))
    for i, v in zip(all_idx, all_values, strict=True):
        keep = i >= 0
        out[:, i[keep].cpu()] = v[:, keep].cpu()
    return out[0], out[1]
