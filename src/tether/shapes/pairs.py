"""Preference pairs ``(prompt, chosen, rejected)``: what DPO and its pairwise family train on.

A file of ranked rows is expanded into pairs (``rank_pairs``, ``rank_weight_by_gap``); such
pairs carry a weight that scales their loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from tether.data.records import load_preferences, needs_chat
from tether.data.tokenization import TokenizedPair, tokenize_records, use_chat
from tether.losses import LossConfig, LossOutput, loss_config, loss_stats, pairwise_loss
from tether.shapes.base import Loaded, RefSums, Stats, logps_stats, register_shape
from tether.shapes.ranked import looks_ranked, read_rankings, tokenize_expanded, tokenizer_args

__all__ = ["PairsShape"]


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
    ) -> tuple[LossOutput, Stats]:
        B = len(rows)
        rc, rr = ref if ref is not None else (None, None)
        out = pairwise_loss(
            cfg, logps[:B], logps[B:], rc, rr, chosen_lengths=counts[:B],
            rejected_lengths=counts[B:],
        )
        weights = [getattr(r, "weight", 1.0) for r in rows]  # pairs expanded from rankings
        if any(w != 1.0 for w in weights):
            out = replace(out, losses=out.losses * torch.tensor(weights, device=logps.device))
        stats = loss_stats(out, cfg.spec)
        stats.update(logps_stats("chosen", logps[:B], counts[:B]))
        stats.update(logps_stats("rejected", logps[B:], counts[B:]))
        return out, stats


register_shape(PairsShape())
