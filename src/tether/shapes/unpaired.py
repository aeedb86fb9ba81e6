"""Unpaired rows (KTO): ``{prompt, completion, label: true|false}``.

A file of preference pairs works too: each pair is split into one desirable and one
undesirable row. Each row's ``chosen`` is its completion and ``rejected`` another row's
completion under this row's prompt, the mismatched pair KTO's reference point z0 needs. The
mismatch is drawn once at load time with the seed (a random completion from another prompt, as
in-batch mismatching gives), so reference log-probs can be precomputed like pairs'.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tether.data.records import (
    DataReport,
    PreferenceRecord,
    Text,
    _check_text,
    _mapped,
    load_preferences,
    read_rows,
)
from tether.data.tokenization import TokenizedPair, TruncationAudit, tokenize_records, use_chat
from tether.errors import DataError
from tether.losses import LossConfig, LossOutput, loss_stats, unpaired_loss
from tether.shapes.base import Loaded, RefSums, Stats, add_audit, register_shape

__all__ = ["TokenizedUnpaired", "UnpairedRecord", "UnpairedShape", "load_unpaired"]


@dataclass(frozen=True)
class UnpairedRecord:
    prompt: Text
    completion: Text
    label: bool  # desirable?
    source: str = ""


@dataclass(frozen=True)
class TokenizedUnpaired(TokenizedPair):
    label: bool = True  # chosen = the labelled completion, rejected = the mismatched one


def _label(value: Any, source: str) -> bool:
    """true/false, 1/0, or (CSV, where every cell is text) the strings true/false/1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(
        f"{source}: field 'label' must be true or false (desirable or not), got {value!r}"
    )


def load_unpaired(
    path: str,
    *,
    data_format: str = "auto",
    field_map: Mapping[str, str] | None = None,
    prompt_template: str | None = None,
    split: str = "train",
) -> tuple[list[UnpairedRecord], DataReport]:
    """KTO rows ``{prompt, completion, label}``, or preference pairs split in two."""
    rows = read_rows(path, split)
    if not rows:
        raise DataError(f"{path}: no rows")
    if "label" not in _mapped(rows[0], field_map, prompt_template):
        pairs, report = load_preferences(
            path, data_format=data_format, field_map=field_map,
            prompt_template=prompt_template, split=split,
        )
        report.notes.append("pairs split into desirable (chosen) and undesirable (rejected) rows")
        return [
            UnpairedRecord(p.prompt, completion, label, p.source)
            for p in pairs
            for completion, label in ((p.chosen, True), (p.rejected, False))
        ], report
    records = []
    for row in rows:
        data = _mapped(row, field_map, prompt_template)
        for name in ("prompt", "completion", "label"):
            if name not in data:
                raise DataError(f"{row.source}: missing field '{name}' (unpaired rows need "
                                "prompt, completion, label)")
        records.append(UnpairedRecord(
            _check_text(data["prompt"], "prompt", row.source),
            _check_text(data["completion"], "completion", row.source),
            _label(data["label"], row.source),
            row.source,
        ))
    report = DataReport(path=path, rows=len(rows), kept=len(records), format="unpaired")
    return records, report


def _mismatched(records: Sequence[UnpairedRecord], seed: int) -> list[int]:
    """For each row, another row whose prompt differs: a seeded shuffle, rotated by one."""
    key = [json.dumps(r.prompt) for r in records]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = len(order)
    out = [0] * n
    for k, i in enumerate(order):
        step = 1
        while step < n and key[order[(k + step) % n]] == key[i]:
            step += 1
        if step == n:
            raise DataError("kto: every row has the same prompt; the reference point needs "
                            "completions of other prompts (add rows with other prompts)")
        out[i] = order[(k + step) % n]
    return out


def _tokenize_unpaired(
    records: Sequence[UnpairedRecord], seed: int, tok: Mapping[str, Any]
) -> tuple[list[TokenizedPair], TruncationAudit]:
    audit, rows = TruncationAudit(), list[TokenizedPair]()
    for rec, j in zip(records, _mismatched(records, seed), strict=True):
        pair = PreferenceRecord(rec.prompt, rec.completion, records[j].completion, rec.source)
        out, part = tokenize_records(records=[pair], **tok)
        add_audit(audit, part, 1)
        rows += [TokenizedUnpaired(t.prompt, t.chosen, t.rejected, t.source, rec.label)
                 for t in out]
    return rows, audit


class UnpairedShape:
    name = "unpaired"
    prefix_sharing = False

    def load(self, cfg: Any, path: str, tokenizer: Any) -> Loaded:
        records, report = load_unpaired(path, data_format=cfg.data_format,
                                        field_map=cfg.field_map,
                                        prompt_template=cfg.prompt_template, split=cfg.split)
        chat = use_chat(tokenizer, cfg.chat_template, isinstance(records[0].prompt, list),
                        cfg.chat_template_kwargs)
        tok = {"tokenizer": tokenizer, "chat": chat, "max_length": cfg.max_length,
               "max_prompt_length": cfg.max_prompt_length}
        rows, audit = _tokenize_unpaired(records, cfg.seed, tok)
        return Loaded(rows, audit, bool(chat), report).check(path, cfg.max_length)

    def step(
        self, cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor,
        ref: RefSums | None,
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


register_shape(UnpairedShape())
