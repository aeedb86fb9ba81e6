"""Preference pairs ``(prompt, chosen, rejected)``: what DPO and its pairwise family train on.

A file of ranked rows is expanded into pairs (``rank_pairs``, ``rank_weight_by_gap``); such
pairs carry a weight that scales their loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from tether.data.batching import PreferenceBatch
from tether.data.records import load_preferences, needs_chat
from tether.data.tokenization import TokenizedPair, tokenize_records, use_chat
from tether.losses import LossConfig, LossOutput, loss_config, loss_stats, pairwise_loss
from tether.losses.weighting import ld_token_weights, wpo_weights
from tether.model.prefix_sharing import Batch
from tether.shapes.base import Loaded, RefSums, Stats, logps_stats, register_shape
from tether.shapes.ranked import looks_ranked, read_rankings, tokenize_expanded, tokenizer_args

__all__ = ["PairsShape", "token_weighting"]


class PairsShape:
    name = "pairs"
    prefix_sharing = True

    def load(self, cfg: Any, path: str, tokenizer: Any) -> Loaded:
        if looks_ranked(path, cfg.field_map, cfg.split):
            records, report = read_rankings(cfg, path)
            loss = loss_config(cfg)
            tok = tokenizer_args(cfg, tokenizer, records[0].prompt)
            rows, audit = tokenize_expanded(records, loss, tok)
            report.notes.append(f"expanded into {len(rows)} pairs (rank_pairs={loss.rank_pairs},"
                                f" rank_weight_by_gap={loss.rank_weight_by_gap})")
            return Loaded(rows, audit, bool(tok["chat"]), report).check(path, cfg.max_length)
        pairs, report = load_preferences(path, data_format=cfg.data_format,
                                         field_map=cfg.field_map,
                                         prompt_template=cfg.prompt_template, split=cfg.split)
        chat = use_chat(tokenizer, cfg.chat_template, needs_chat(pairs), cfg.chat_template_kwargs)
        rows, audit = tokenize_records(tokenizer, pairs, chat=chat, max_length=cfg.max_length,
                                       max_prompt_length=cfg.max_prompt_length)
        return Loaded(rows, audit, bool(chat), report).check(path, cfg.max_length)

    def step(
        self, cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor,
        ref: RefSums | None,
        aligned: Tensor | None = None,
    ) -> tuple[LossOutput, Stats]:
        """``aligned``: the policy's Σ_t [log p − log Σ_v p_v²] per completion ``(2B,)`` when the
        run uses WPO (``sequence_logps_wpo``)."""
        B = len(rows)
        rc, rr = ref if ref is not None else (None, None)
        wpo = None
        if aligned is not None:  # WPO
            wpo = wpo_weights(aligned[:B], aligned[B:], counts[:B], counts[B:])  # (B,)
        out = pairwise_loss(
            cfg, logps[:B], logps[B:], rc, rr, chosen_lengths=counts[:B],
            rejected_lengths=counts[B:], pair_weights=wpo,
        )
        weights = [getattr(r, "weight", 1.0) for r in rows]  # pairs expanded from rankings
        if any(w != 1.0 for w in weights):
            out = replace(out, losses=out.losses * torch.tensor(weights, device=logps.device))
        stats = loss_stats(out, cfg.spec)
        if wpo is not None:
            stats["wpo_weight"] = wpo
        stats.update(logps_stats("chosen", logps[:B], counts[:B]))
        stats.update(logps_stats("rejected", logps[B:], counts[B:]))
        return out, stats


def token_weighting(cfg: LossConfig) -> Callable[[Batch], Batch]:
    """What the loop does to each batch before scoring it, decided once: LD-DPO's per-token
    weights in the ``completion_mask`` (policy and reference then sum weighted log-probs), or
    nothing."""
    alpha = cfg.ld_alpha
    if alpha is None:
        return _unchanged

    def weigh(batch: Batch) -> Batch:
        # LD-DPO runs score plain batches: its reference is never the precomputed table, and
        # reference-free objectives refuse ld_alpha, so prefix sharing is off (loop._shares_prefix)
        assert isinstance(batch, PreferenceBatch), "LD-DPO needs a plain pair batch"
        weights = ld_token_weights(batch.completion_mask, batch.pairs, alpha)  # (2B, T)
        return replace(batch, completion_mask=weights)

    return weigh


def _unchanged(batch: Batch) -> Batch:
    return batch


register_shape(PairsShape())
