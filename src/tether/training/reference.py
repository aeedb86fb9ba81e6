"""Reference strategies: where log π_ref(y|x) comes from.

- ``precomputed``: one inference pass of the frozen reference (the policy before training)
  over the training and eval rows; cached on disk as safetensors keyed by the weights, the
  token ids and the settings, so a second run with the same inputs reads the cache. No second
  model is in memory while training.
- ``copy``: a frozen in-memory copy in the policy's dtype, scored batch by batch.
- ``none``: reference-free objectives (SimPO, ORPO, RRHF, SFT).
- ``lora``: the policy with its PEFT adapters disabled (``tether.lora.LoraReference``, same
  ``__call__``); under torchrun ``tether.training.distributed`` shards the precompute and the copy.

Every strategy returns per-sequence *sums* and the loop applies per-token averaging, so the
cache does not depend on ``length_normalize``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from tether.data.batching import PreferenceBatch
from tether.model.prefix_sharing import Batch, batch_logps, make_batch
from tether.data.tokenization import TokenizedPair

__all__ = [
    "FrozenCopy", "Precomputed", "Reference", "cache_path", "data_fingerprint", "save_table",
    "weights_fingerprint",
]

log = logging.getLogger("tether")


class Reference(Protocol):
    def __call__(self, batch: PreferenceBatch, split: str) -> tuple[Tensor, Tensor]:
        """Reference log-prob sums of the batch's chosen and rejected rows, ``(B,)`` each."""
        ...


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes).

    An FSDP-sharded tensor is gathered one at a time (a collective: every rank calls this), so
    the fingerprint, and the cache key, is the same at any number of ranks."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.full_tensor() if isinstance(t, DTensor) else t
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_path(
    cache_dir: Path, weights: str, rows: Sequence[TokenizedPair], settings: Mapping[str, object]
) -> Path:
    """Where one split's reference log-probs are cached: keyed by weights, rows and settings."""
    key = hashlib.sha256(
        json.dumps([weights, data_fingerprint(rows), dict(settings)], default=str).encode()
    ).hexdigest()[:32]
    return cache_dir / f"ref-{key}.safetensors"


def save_table(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Write a cache entry atomically: a killed run never leaves a half-written one."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def data_fingerprint(rows: Sequence[TokenizedPair]) -> str:
    """SHA-256 over every field of every row but its source (labels, weights, all responses)."""
    h = hashlib.sha256()
    for r in rows:
        fields = {k: v for k, v in dataclasses.asdict(r).items() if k != "source"}
        h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()


@torch.inference_mode()
def score_rows(
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
) -> tuple[Tensor, Tensor]:
    """Log-prob sums of every row's chosen and rejected completion, ``(N,)`` each, fp32."""
    was_training = model.training
    model.eval()
    chosen = torch.zeros(len(rows))
    rejected = torch.zeros(len(rows))
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)  # little padding
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        idx = order[s : s + batch_size]
        b = make_batch([rows[i] for i in idx], idx, pad_id, prefix_sharing).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            sums, _ = batch_logps(model, b, chunk)
        chosen[idx] = sums[: b.pairs].float().cpu()
        rejected[idx] = sums[b.pairs :].float().cpu()
    model.train(was_training)
    return chosen, rejected


class Precomputed:
    """Reference log-probs looked up by row index; computed once and cached on disk."""

    def __init__(self, table: Mapping[str, tuple[Tensor, Tensor]]) -> None:
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
        cache_dir: Path,
        settings: Mapping[str, object],
        autocast: bool = False,
        progress: bool = True,
        prefix_sharing: bool = False,
    ) -> Precomputed:
        weights = weights_fingerprint(model)
        table, hits = {}, 0
        cache_dir.mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            path = cache_path(cache_dir, weights, rows, settings)
            if path.exists():
                t = load_file(path)
                table[split] = (t["chosen"], t["rejected"])
                hits += 1
                log.info("reference log-probs for %s read from cache %s", split, path)
                continue
            c, r = score_rows(
                model, rows, pad_id, batch_size, device, chunk, autocast, f"reference ({split})",
                progress, prefix_sharing,
            )
            save_table(path, {"chosen": c, "rejected": r})
            table[split] = (c, r)
        out = cls(table)
        out.cache_hits = hits
        return out

    def __call__(self, batch: Batch, split: str) -> tuple[Tensor, Tensor]:
        c, r = self.table[split]
        idx = batch.index.cpu()
        return c[idx].to(batch.input_ids.device), r[idx].to(batch.input_ids.device)


class FrozenCopy:
    """A frozen copy of the policy at its start, in the policy's own dtype and device."""

    def __init__(self, policy: nn.Module, chunk: int, autocast: bool = False) -> None:
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self.chunk = chunk
        self.autocast = autocast

    @torch.inference_mode()
    def __call__(self, batch: Batch, split: str) -> tuple[Tensor, Tensor]:
        dev = batch.input_ids.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            sums, _ = batch_logps(self.model, batch, self.chunk)
        return sums[: batch.pairs].clone(), sums[batch.pairs :].clone()
