"""Ranked rows: ``{prompt, responses: [...], scores: [...]}`` (higher = better) or
``ranking: [...]`` (each response's rank, 1 = best).

With a ranked objective (``plackett_luce``, ``rrhf``) the rows are trained whole, every
response best first (a file of pairs is read as rankings of two); with a pairwise objective
they are expanded into pairs (``rank_pairs``, ``rank_weight_by_gap``) by ``tether.shapes.pairs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tether.data.records import (
    DataReport,
    PreferenceRecord,
    Row,
    Text,
    _check_text,
    _mapped,
    load_preferences,
    read_rows,
)
from tether.data.tokenization import TokenizedPair, TruncationAudit, tokenize_records, use_chat
from tether.errors import DataError
from tether.losses import (
    LossConfig,
    LossOutput,
    expand_ranking,
    loss_stats,
    ranked_loss,
    ranking_order,
)
from tether.shapes.base import Loaded, RefSums, Stats, add_audit, register_shape

__all__ = [
    "RankedRecord", "RankedShape", "TokenizedRanked", "TokenizedWeightedPair", "load_ranked",
    "looks_ranked", "read_rankings", "tokenize_expanded",
]


@dataclass(frozen=True)
class RankedRecord:
    """Responses in the row's order; ``scores`` higher = better (ranks are turned into scores)."""

    prompt: Text
    responses: list[Text]
    scores: list[float]
    source: str = ""


@dataclass(frozen=True)
class TokenizedWeightedPair(TokenizedPair):
    weight: float = 1.0  # scales the pair's loss; the dataset's weights average 1


@dataclass(frozen=True)
class TokenizedRanked(TokenizedPair):
    """All responses best first (``chosen``, ``rejected`` = the first two), with scores."""

    responses: tuple[list[int], ...] = ()
    scores: tuple[float, ...] = ()

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(r) for r in self.responses)

    @property
    def completions(self) -> list[list[int]]:
        return list(self.responses)


def _scores(data: Mapping[str, Any], n: int, source: str) -> list[float]:
    has = [k for k in ("scores", "ranking") if k in data]
    if len(has) != 1:
        raise DataError(f"{source}: a ranked row needs exactly one of 'scores' (higher = better)"
                        " or 'ranking' (1 = best)")
    key = has[0]
    values = data[key]
    if not isinstance(values, list) or len(values) != n:
        raise DataError(f"{source}: field '{key}' must be a list of {n} numbers, one per response")
    for i, v in enumerate(values):
        bad_score = not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
        bad_rank = key == "ranking" and (bad_score or v != int(v) or v < 1)
        if bad_score or bad_rank:
            want = "a rank >= 1" if key == "ranking" else "a finite number"
            raise DataError(f"{source}: field '{key}[{i}]' must be {want}, got {v!r}")
    return [float(v) for v in values] if key == "scores" else [-float(v) for v in values]


def _ranked_record(row: Row, data: Mapping[str, Any]) -> RankedRecord:
    if "prompt" not in data:
        raise DataError(f"{row.source}: missing field 'prompt' (ranked rows need prompt, "
                        "responses and scores or ranking)")
    responses = data["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(f"{row.source}: field 'responses' must be a list of at least 2 answers")
    texts = [_check_text(r, f"responses[{i}]", row.source) for i, r in enumerate(responses)]
    prompt = _check_text(data["prompt"], "prompt", row.source)
    return RankedRecord(prompt, texts, _scores(data, len(texts), row.source), row.source)


def load_ranked(
    path: str,
    *,
    field_map: Mapping[str, str] | None = None,
    prompt_template: str | None = None,
    split: str = "train",
) -> tuple[list[RankedRecord], DataReport]:
    """Ranked rows; rows whose responses are all tied carry no preference and are dropped."""
    rows = read_rows(path, split)
    report = DataReport(path=path, rows=len(rows), format="ranked")
    records, tied = [], 0
    for row in rows:
        data = _mapped(row, field_map, prompt_template)
        if "responses" not in data:
            raise DataError(f"{row.source}: missing field 'responses' (ranked rows need prompt, "
                            "responses and scores or ranking)")
        rec = _ranked_record(row, data)
        if max(rec.scores) == min(rec.scores):
            tied += 1
            continue
        records.append(rec)
    if tied:
        report.notes.append(f"{tied} rows dropped: all their responses tied (no preference)")
    report.kept = len(records)
    if not records:
        raise DataError(f"{path}: no ranked rows with a preference (all {len(rows)} tied)")
    return records, report


def looks_ranked(path: str, field_map: Mapping[str, str] | None, split: str) -> bool:
    """Whether a data file holds ranked rows (its first row has ``responses``)."""
    rows = read_rows(path, split)
    return bool(rows) and "responses" in _mapped(rows[0], field_map, None)


def _tokenize_ranked(
    records: Sequence[RankedRecord], tok: Mapping[str, Any]
) -> tuple[list[TokenizedPair], TruncationAudit]:
    audit, rows = TruncationAudit(), list[TokenizedPair]()
    for rec in records:
        order = ranking_order(rec.scores)  # best first
        singles = [PreferenceRecord(rec.prompt, rec.responses[i], "", rec.source) for i in order]
        out, part = tokenize_records(records=singles, **tok)
        add_audit(audit, part, len(singles))
        if out:
            responses = tuple(t.chosen for t in out)
            rows.append(TokenizedRanked(out[0].prompt, responses[0], responses[1], rec.source,
                                        responses, tuple(rec.scores[i] for i in order)))
    return rows, audit


def tokenize_expanded(
    records: Sequence[RankedRecord], cfg: LossConfig, tok: Mapping[str, Any]
) -> tuple[list[TokenizedPair], TruncationAudit]:
    audit = TruncationAudit()
    kept: list[tuple[TokenizedPair, float]] = []
    for rec in records:
        pairs = expand_ranking(rec.scores, cfg.rank_pairs, cfg.rank_weight_by_gap)
        recs = [PreferenceRecord(rec.prompt, rec.responses[p.chosen], rec.responses[p.rejected],
                                 rec.source) for p in pairs]
        out, part = tokenize_records(records=recs, **tok)
        add_audit(audit, part, len(recs))
        if out:  # all of a row's pairs share the prompt: all kept or all dropped
            kept += [(t, p.weight) for t, p in zip(out, pairs, strict=True)]
    mean = sum(w for _, w in kept) / max(1, len(kept))
    rows: list[TokenizedPair] = [
        TokenizedWeightedPair(t.prompt, t.chosen, t.rejected, t.source, w / mean) for t, w in kept
    ]
    return rows, audit


def read_rankings(cfg: Any, path: str) -> tuple[list[RankedRecord], DataReport]:
    """Ranked rows, or pairs read as rankings of two responses."""
    kwargs = {"field_map": cfg.field_map, "prompt_template": cfg.prompt_template,
              "split": cfg.split}
    if looks_ranked(path, cfg.field_map, cfg.split):
        return load_ranked(path, **kwargs)
    pairs, report = load_preferences(path, data_format=cfg.data_format, **kwargs)
    report.notes.append("pairs read as rankings of two responses")
    return [RankedRecord(p.prompt, [p.chosen, p.rejected], [1.0, 0.0], p.source)
            for p in pairs], report


def tokenizer_args(cfg: Any, tokenizer: Any, prompt: Text) -> dict[str, Any]:
    """The keyword arguments of ``tokenize_records`` for this run (chat template or not)."""
    chat = use_chat(tokenizer, cfg.chat_template, isinstance(prompt, list),
                    cfg.chat_template_kwargs)
    return {"tokenizer": tokenizer, "chat": chat, "max_length": cfg.max_length,
            "max_prompt_length": cfg.max_prompt_length}


class RankedShape:
    name = "ranked"
    prefix_sharing = False

    def load(self, cfg: Any, path: str, tokenizer: Any) -> Loaded:
        records, report = read_rankings(cfg, path)
        tok = tokenizer_args(cfg, tokenizer, records[0].prompt)
        rows, audit = _tokenize_ranked(records, tok)
        return Loaded(rows, audit, tok["chat"], report).check(path, cfg.max_length)

    def step(
        self, cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor,
        ref: RefSums | None,
    ) -> tuple[LossOutput, Stats]:
        B = len(rows)
        K = logps.shape[0] // B
        sizes = [len(r.completions) for r in rows]
        n = torch.tensor(sizes, device=logps.device)
        mask = torch.arange(K, device=logps.device)[None, :] < n[:, None]  # (B, K) real responses
        scores = torch.tensor(
            [[*getattr(r, "scores", ()), *[0.0] * (K - k)]
             for r, k in zip(rows, sizes, strict=True)],
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


register_shape(RankedShape())
