"""Data shapes beyond preference pairs: unpaired rows (KTO) and ranked rows.

- unpaired: ``{prompt, completion, label: true|false}``; a file of preference pairs works too,
  each pair split into one desirable and one undesirable row.
- ranked: ``{prompt, responses: [...], scores: [...]}`` (higher = better) or ``ranking: [...]``
  (each response's rank, 1 = best). With a ranked objective (``plackett_luce``, ``rrhf``) the
  rows are trained whole (a file of pairs is read as rankings of two); with a pairwise
  objective they are expanded into pairs (``rank_pairs``, ``rank_weight_by_gap``).

All of them become ``TokenizedPair`` subclasses, so batching, the reference strategies and the
loop's bookkeeping serve them unchanged:

- ``TokenizedUnpaired``: ``chosen`` is the row's completion, ``rejected`` another row's
  completion under this row's prompt, the mismatched pair KTO's reference point z0 needs. The
  mismatch is drawn once at load time with the seed (a random completion from another prompt,
  as in-batch mismatching gives), so reference log-probs can be precomputed like pairs.
- ``TokenizedWeightedPair``: a pair expanded from a ranking, with its weight.
- ``TokenizedRanked``: every response, best first, with its score.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
from tether.errors import DataError
from tether.losses import LOSS_SPECS, LossConfig, expand_ranking, loss_config, ranking_order
from tether.data.tokenization import TokenizedPair, TruncationAudit, tokenize_records, use_chat

__all__ = [
    "RankedRecord",
    "TokenizedRanked",
    "TokenizedUnpaired",
    "TokenizedWeightedPair",
    "UnpairedRecord",
    "load_ranked",
    "load_shaped",
    "load_unpaired",
    "looks_ranked",
]


@dataclass(frozen=True)
class UnpairedRecord:
    prompt: Text
    completion: Text
    label: bool  # desirable?
    source: str = ""


@dataclass(frozen=True)
class RankedRecord:
    """Responses in the row's order; ``scores`` higher = better (ranks are turned into scores)."""

    prompt: Text
    responses: list[Text]
    scores: list[float]
    source: str = ""


@dataclass(frozen=True)
class TokenizedUnpaired(TokenizedPair):
    label: bool = True  # chosen = the labelled completion, rejected = the mismatched one


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


# --------------------------------------------------------------------------- reading


def _label(value: Any, source: str) -> bool:
    """true/false, 1/0, or (CSV) the strings true/false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
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


# --------------------------------------------------------------------------- tokenizing


def _add(total: TruncationAudit, part: TruncationAudit, rows: int) -> None:
    """Fold one source row's audit (over its ``rows`` tokenized sequences) into ``total``."""
    for f in dataclasses.fields(TruncationAudit):
        if f.name not in ("rows", "dropped"):
            setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
    total.rows += 1
    total.dropped += part.dropped == rows  # a row is dropped when its prompt leaves no room


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
        _add(audit, part, 1)
        rows += [TokenizedUnpaired(t.prompt, t.chosen, t.rejected, t.source, rec.label)
                 for t in out]
    return rows, audit


def _tokenize_ranked(
    records: Sequence[RankedRecord], tok: Mapping[str, Any]
) -> tuple[list[TokenizedPair], TruncationAudit]:
    audit, rows = TruncationAudit(), list[TokenizedPair]()
    for rec in records:
        order = ranking_order(rec.scores)  # best first
        singles = [PreferenceRecord(rec.prompt, rec.responses[i], "", rec.source) for i in order]
        out, part = tokenize_records(records=singles, **tok)
        _add(audit, part, len(singles))
        if out:
            responses = tuple(t.chosen for t in out)
            rows.append(TokenizedRanked(out[0].prompt, responses[0], responses[1], rec.source,
                                        responses, tuple(rec.scores[i] for i in order)))
    return rows, audit


def _tokenize_expanded(
    records: Sequence[RankedRecord], cfg: LossConfig, tok: Mapping[str, Any]
) -> tuple[list[TokenizedPair], TruncationAudit]:
    audit = TruncationAudit()
    kept: list[tuple[TokenizedPair, float]] = []
    for rec in records:
        pairs = expand_ranking(rec.scores, cfg.rank_pairs, cfg.rank_weight_by_gap)
        recs = [PreferenceRecord(rec.prompt, rec.responses[p.chosen], rec.responses[p.rejected],
                                 rec.source) for p in pairs]
        out, part = tokenize_records(records=recs, **tok)
        _add(audit, part, len(recs))
        if out:  # all of a row's pairs share the prompt: all kept or all dropped
            kept += [(t, p.weight) for t, p in zip(out, pairs, strict=True)]
    mean = sum(w for _, w in kept) / max(1, len(kept))
    rows: list[TokenizedPair] = [
        TokenizedWeightedPair(t.prompt, t.chosen, t.rejected, t.source, w / mean) for t, w in kept
    ]
    return rows, audit


def load_shaped(
    cfg: Any, path: str, tokenizer: Any
) -> tuple[list[TokenizedPair], TruncationAudit, DataReport, bool] | None:
    """Rows of the unpaired and ranked shapes, tokenized; ``None`` for plain pairs and SFT.

    ``cfg`` is the training config. Returns the rows, the truncation audit, the data report
    and whether the chat template was used.
    """
    loss = loss_config(cfg)
    shape = LOSS_SPECS[cfg.loss].data
    kwargs = {"field_map": cfg.field_map, "prompt_template": cfg.prompt_template,
              "split": cfg.split}
    records: Sequence[UnpairedRecord | RankedRecord]
    if shape == "unpaired":
        records, report = load_unpaired(path, data_format=cfg.data_format, **kwargs)
    elif shape in ("ranked", "pairs") and looks_ranked(path, cfg.field_map, cfg.split):
        records, report = load_ranked(path, **kwargs)
    elif shape == "ranked":  # a pair is a ranking of two responses
        pairs, report = load_preferences(path, data_format=cfg.data_format, **kwargs)
        records = [RankedRecord(p.prompt, [p.chosen, p.rejected], [1.0, 0.0], p.source)
                   for p in pairs]
        report.notes.append("pairs read as rankings of two responses")
    else:
        return None
    chat = use_chat(tokenizer, cfg.chat_template, isinstance(records[0].prompt, list))
    tok = {"tokenizer": tokenizer, "chat": chat, "max_length": cfg.max_length,
           "max_prompt_length": cfg.max_prompt_length}
    if shape == "unpaired":
        rows, audit = _tokenize_unpaired(records, cfg.seed, tok)  # type: ignore[arg-type]
    elif shape == "ranked":
        rows, audit = _tokenize_ranked(records, tok)  # type: ignore[arg-type]
    else:
        rows, audit = _tokenize_expanded(records, loss, tok)  # type: ignore[arg-type]
        report.notes.append(f"expanded into {len(rows)} pairs (rank_pairs={loss.rank_pairs}, "
                            f"rank_weight_by_gap={loss.rank_weight_by_gap})")
    if not rows:
        raise DataError(f"{path}: no rows left after truncation ({audit.dropped} dropped: prompts "
                        f"longer than max_length); raise max_length or set max_prompt_length")
    return rows, audit, report, chat
