"""From a batch's log-probs to the configured objective's loss and per-row statistics.

The loop computes the policy's per-sequence log-prob sums for a collated batch (block j holds
every row's j-th completion) and asks the reference for its sums; ``objective_step`` then
lays them out for the objective's data shape (pairs, unpaired KTO rows, ranked rows), calls
it through ``tether.losses`` and returns per-row statistics (NaN where undefined).

``RankedPrecomputed`` is the precomputed reference for ranked rows, which have K completions
where the pair cache stores two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm import tqdm

from tether.data.batching import PreferenceBatch, collate
from tether.model.logprobs import sequence_logps
from tether.losses import (
    LossConfig,
    LossOutput,
    loss_stats,
    pairwise_loss,
    ranked_loss,
    unpaired_loss,
)
from tether.training.reference import cache_path, save_table, weights_fingerprint
from tether.data.tokenization import TokenizedPair

__all__ = ["RankedPrecomputed", "objective_step"]

log = logging.getLogger("tether")

Stats = dict[str, Tensor]
RefSums = tuple[Tensor, Tensor] | None  # (first block (B,), the other blocks ((K-1)·B,))


def objective_step(
    cfg: LossConfig,
    rows: Sequence[TokenizedPair],
    logps: Tensor,
    counts: Tensor,
    reference: RefSums,
) -> tuple[LossOutput, Stats]:
    """The objective on one batch: ``logps``/``counts`` ``(K·B,)`` sums and token counts."""
    return _STEPS[cfg.spec.data](cfg, rows, logps, counts, reference)


def _pairs(
    cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor, ref: RefSums
) -> tuple[LossOutput, Stats]:
    B = len(rows)
    rc, rr = ref if ref is not None else (None, None)
    out = pairwise_loss(
        cfg, logps[:B], logps[B:], rc, rr, chosen_lengths=counts[:B], rejected_lengths=counts[B:]
    )
    weights = [getattr(r, "weight", 1.0) for r in rows]  # pairs expanded from rankings
    if any(w != 1.0 for w in weights):
        out = replace(out, losses=out.losses * torch.tensor(weights, device=logps.device))
    stats = loss_stats(out, cfg.spec)
    stats.update(_logps("chosen", logps[:B], counts[:B]))
    stats.update(_logps("rejected", logps[B:], counts[B:]))
    return out, stats


def _unpaired(
    cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor, ref: RefSums
) -> tuple[LossOutput, Stats]:
    B = len(rows)
    assert ref is not None, "kto needs reference log-probs"
    labels = torch.tensor([getattr(r, "label", True) for r in rows], device=logps.device)
    # block 0: each row's labelled completion; block 1: its mismatched completion (for z0)
    out = unpaired_loss(
        cfg, logps[:B], ref[0], logps[B:], ref[1], labels, lengths=counts[:B],
        kl_lengths=counts[B:],
    )
    stats = loss_stats(out, cfg.spec, labels)
    nan = torch.full_like(logps[:B], float("nan"))
    stats["logps/chosen"] = torch.where(labels, logps[:B].detach(), nan)
    stats["logps/rejected"] = torch.where(labels, nan, logps[:B].detach())
    stats["lengths/completion"] = counts[:B].float()
    return out, stats


def _ranked(
    cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor, ref: RefSums
) -> tuple[LossOutput, Stats]:
    B = len(rows)
    K = logps.shape[0] // B
    sizes = [len(r.completions) for r in rows]
    n = torch.tensor(sizes, device=logps.device)
    mask = torch.arange(K, device=logps.device)[None, :] < n[:, None]  # (B, K) real responses
    scores = torch.tensor(
        [[*getattr(r, "scores", ()), *[0.0] * (K - k)] for r, k in zip(rows, sizes, strict=True)],
        device=logps.device,
    )  # (B, K), best first
    reference = torch.cat(ref).view(K, B).T if ref is not None else None  # (B, K)
    out = ranked_loss(
        cfg, logps.view(K, B).T, reference, response_lengths=counts.view(K, B).T,
        response_scores=scores, response_mask=mask,
    )
    stats = loss_stats(out, cfg.spec)
    last = n - 1
    by_row = logps.view(K, B).T  # (B, K)
    stats["logps/chosen"] = by_row[:, 0].detach()
    stats["logps/rejected"] = by_row.gather(1, last[:, None])[:, 0].detach()
    return out, stats


def _logps(name: str, logps: Tensor, counts: Tensor) -> Stats:
    return {f"logps/{name}": logps.detach(), f"lengths/{name}": counts.float()}


_STEPS: dict[str, Callable[..., tuple[LossOutput, Stats]]] = {
    "pairs": _pairs,
    "unpaired": _unpaired,
    "ranked": _ranked,
}


class RankedPrecomputed:
    """Reference log-prob sums of every response of ranked rows, ``(N, K)`` per split.

    Computed once before training from the policy at its start and cached on disk like the
    pairs' table (``tether.training.reference.cache_path``: weights, token ids, settings), so a second
    run over the same rows reads it. Calls return the same layout as ``FrozenCopy`` on a ranked
    batch.
    """

    def __init__(self, table: Mapping[str, Tensor]) -> None:
        self.table = table
        self.cache_hits = 0

    @classmethod
    @torch.inference_mode()
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
    ) -> RankedPrecomputed:
        was_training = model.training
        model.eval()
        table, hits = {}, 0
        weights = weights_fingerprint(model) if cache_dir is not None else ""
        for split, rows in splits.items():
            path = None
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                path = cache_path(cache_dir, weights, rows, {**(settings or {}), "kind": "ranked"})
                if path.exists():
                    table[split] = load_file(path)["sums"]
                    hits += 1
                    log.info("reference log-probs for %s read from cache %s", split, path)
                    continue
            t = torch.zeros(len(rows), max(len(r.completions) for r in rows))
            order = sorted(range(len(rows)), key=lambda i: rows[i].length)
            for s in tqdm(range(0, len(order), batch_size), desc=f"reference ({split})",
                          disable=not progress, leave=False):
                idx = order[s : s + batch_size]
                b = collate([rows[i] for i in idx], idx, pad_id).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    sums, _ = sequence_logps(
                        model, b.input_ids, b.attention_mask, b.completion_mask, chunk
                    )
                k = sums.shape[0] // len(idx)
                t[idx, :k] = sums.float().cpu().view(k, len(idx)).T
            table[split] = t
            if path is not None:
                save_table(path, {"sums": t})
        model.train(was_training)
        out = cls(table)
        out.cache_hits = hits
        return out

    def __call__(self, batch: PreferenceBatch, split: str) -> tuple[Tensor, Tensor]:
        B = batch.pairs
        K = batch.input_ids.shape[0] // B
        rows = self.table[split][batch.index.cpu(), :K].to(batch.input_ids.device)  # (B, K)
        return rows[:, 0], rows[:, 1:].T.reshape(-1)
