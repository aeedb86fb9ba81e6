"""The precomputed reference: an ``(N, K)`` table of log-prob sums per split, cached on disk.

One routine for every data shape and process count: for each split, read the cache entry
(rank 0 decides and broadcasts, so a cache seen by only some nodes cannot desynchronise them)
or score the rows (on one process: the model directly, with prefix sharing when asked; under
torchrun: each rank every N-th row through its wrapped scorer, all-gathered) and write it.
A cache entry that cannot be read, fails its checksum or has the wrong shape is scored again,
not trusted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from tether.data.batching import PreferenceBatch, collate
from tether.data.tokenization import TokenizedPair
from tether.model.prefix_sharing import Batch, batch_logps, make_batch
from tether.training.distributed import Dist, local_module, reshard
from tether.training.reference.base import RefSums
from tether.training.reference.cache import (
    cache_path,
    load_table,
    save_table,
    weights_fingerprint,
)

__all__ = ["Precomputed", "score_rows", "score_table"]

log = logging.getLogger("tether")


class Precomputed:
    """Reference log-prob sums looked up by row index: ``table[split]`` is ``(N, K)``."""

    def __init__(self, table: Mapping[str, Tensor]) -> None:
        self.table = table
        self.cache_hits = 0

    @classmethod
    def build(
        cls,
        model: nn.Module,
        splits: Mapping[str, Sequence[TokenizedPair]],
        *,
        pad_id: int,
        batch_size: int,
        device: torch.device,
        chunk: int,
        cache_dir: Path | None = None,
        settings: Mapping[str, object] | None = None,
        autocast: bool = False,
        progress: bool = True,
        prefix_sharing: bool = False,
        dist_: Dist | None = None,
        scorer: nn.Module | None = None,
    ) -> Precomputed:
        """Score (or read from ``cache_dir``) every split with ``model`` as it is now.

        Under torchrun pass ``dist_`` and the policy's wrapped ``scorer``: the rows are split
        over the ranks and the weights fingerprint gathers FSDP shards one tensor at a time."""
        d = dist_ or Dist()
        weights = weights_fingerprint(model) if cache_dir is not None else ""
        table, hits = {}, 0
        for split, rows in splits.items():
            path = None
            if cache_dir is not None:
                path = cache_path(cache_dir, weights, rows, {**(settings or {}), "table": "NxK"})
            shape = (len(rows), max(len(r.completions) for r in rows))
            cached = _read(path, shape, d)
            if cached is not None:
                table[split], hits = cached, hits + 1
                continue
            desc = f"reference ({split})"
            if d.active:
                assert scorer is not None, "a distributed precompute scores through the wrapper"
                t = _score_sharded(local_module(scorer), rows, d, pad_id, batch_size, device,
                                   autocast, desc, progress and d.main, shape[1])
            else:
                t = score_table(model, rows, pad_id, batch_size, device, chunk, autocast, desc,
                                progress, prefix_sharing)
            if path is not None and d.main:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_table(path, {"sums": t})
            table[split] = t
        out = cls(table)
        out.cache_hits = hits
        return out

    def __call__(self, batch: Batch, split: str) -> RefSums:
        # a plain batch holds K blocks of B rows; a shared-prefix batch holds pairs (K = 2)
        blocks = batch.input_ids.shape[0] // batch.pairs if isinstance(batch, PreferenceBatch) \
            else 2
        rows = self.table[split][batch.index.cpu(), :blocks].to(batch.input_ids.device)  # (B, K)
        return rows[:, 0], rows[:, 1:].T.reshape(-1)


def _read(path: Path | None, shape: tuple[int, int], d: Dist) -> Tensor | None:
    """The cached table when rank 0 has a sound one (broadcast to the others), else None."""
    table = None
    if d.main and path is not None and path.exists():
        try:
            table = load_table(path)["sums"]
        except Exception as e:  # truncated, foreign or altered file: score again, say why
            log.warning("reference cache %s unreadable (%s); scoring again", path, e)
        if table is not None and tuple(table.shape) != shape:
            log.warning("reference cache %s has shape %s, expected %s; scoring again",
                        path, tuple(table.shape), shape)
            table = None
    if not d.any(table is not None):
        return None
    if d.active:
        both = (table if table is not None else torch.zeros(shape)).to(d.comm_device)
        dist.broadcast(both, src=0)
        table = both.cpu()
    log.info("reference log-probs read from cache %s", path)
    return table


@torch.inference_mode()
def score_table(
    model: nn.Module,
    rows: Sequence[TokenizedPair],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    chunk: int,
    autocast: bool = False,
    desc: str = "reference",
    progress: bool = True,
    prefix_sharing: bool = False,
) -> Tensor:
    """Log-prob sums of every completion of every row, ``(N, K)`` fp32 (0 where a row has
    fewer than K completions)."""
    was_training = model.training
    model.eval()
    table = torch.zeros(len(rows), max(len(r.completions) for r in rows))
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)  # little padding
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress,
                  leave=False):
        idx = order[s : s + batch_size]
        b = make_batch([rows[i] for i in idx], idx, pad_id, prefix_sharing).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            sums, _ = batch_logps(model, b, chunk)  # (K·B,)
        k = sums.shape[0] // len(idx)
        table[idx, :k] = sums.float().cpu().view(k, len(idx)).T
    model.train(was_training)
    return table


def score_rows(
    model: nn.Module, rows: Sequence[TokenizedPair], pad_id: int, batch_size: int,
    device: torch.device, chunk: int, autocast: bool = False, desc: str = "reference",
    progress: bool = True, prefix_sharing: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-prob sums of every pair's chosen and rejected completion, ``(N,)`` each."""
    t = score_table(model, rows, pad_id, batch_size, device, chunk, autocast, desc, progress,
                    prefix_sharing)
    return t[:, 0], t[:, 1]


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
    k: int,
) -> Tensor:
    """Each rank scores every N-th row (by length, for little padding); all-gather the rest.

    Every rank runs the same number of forwards (FSDP gathers weights in each one), so the
    shorter shards are padded with index -1, which score a real row and are thrown away.
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    per_rank = math.ceil(len(rows) / d.world_size)
    mine = order[d.rank :: d.world_size]
    idx = mine + [-1] * (per_rank - len(mine))
    values = torch.zeros(per_rank, k)
    was_training = scorer.training
    scorer.eval()
    for s in tqdm(range(0, per_rank, batch_size), desc=desc, disable=not progress, leave=False):
        part = [i if i >= 0 else order[0] for i in idx[s : s + batch_size]]
        b = collate([rows[i] for i in part], part, pad_id).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            sums, _ = scorer(b.input_ids, b.attention_mask, b.completion_mask)
        blocks = sums.shape[0] // len(part)
        values[s : s + len(part), :blocks] = sums.float().cpu().view(blocks, len(part)).T
    scorer.train(was_training)
    reshard(scorer)
    all_idx = [torch.zeros(per_rank, dtype=torch.long, device=d.comm_device)
               for _ in range(d.world_size)]
    all_values = [torch.zeros(per_rank, k, device=d.comm_device) for _ in range(d.world_size)]
    dist.all_gather(all_idx, torch.tensor(idx, dtype=torch.long, device=d.comm_device))
    dist.all_gather(all_values, values.to(d.comm_device))
    out = torch.zeros(len(rows), k)
    for i, v in zip(all_idx, all_values, strict=True):
        keep = i >= 0
        out[i[keep].cpu()] = v[keep].cpu()
    return out
