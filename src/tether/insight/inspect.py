"""``tether inspect``: what a preference file holds before any training, and what to do about it.

Findings, each with what it means and what to do (a key to set, rows to look at by file:line):

- rows, format, and pairs dropped because chosen == rejected (no signal);
- token lengths of prompt, chosen and rejected (with the model's tokenizer when given, else
  whitespace words) and how many rows ``max_length`` would cut;
- **length bias**: the share of pairs whose chosen answer is longer, and the distribution of the
  length difference. Length is the strongest known confounder of DPO (Park et al. 2024, R-DPO,
  arXiv 2403.19159; Dubois et al. 2024, length-controlled AlpacaEval, arXiv 2404.04475);
- exact and near-duplicate prompts (normalised text; MinHash over word 3-shingles, Broder 1997),
  near-identical chosen/rejected, and train/eval prompt overlap (leakage) with ``eval_data``;
- empty or very short answers;
- with ``model=``: the SFT model's own preference on each pair, the per-token log-prob margin
  log π(y_w|x)/|y_w| − log π(y_l|x)/|y_l|; pairs it strongly disagrees with are label-noise
  candidates, and their share suggests cDPO's ``label_smoothing`` (Mitchell 2023).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.data.records import PreferenceRecord, Text, load_preferences
from tether.fields import Checked, opt
from tether.io import write_json

__all__ = ["InspectConfig", "inspect_data"]


@dataclass(frozen=True)
class InspectConfig(Checked):
    """``tether inspect DATA [key=value ...]``."""

    data: str = opt("", "preference file (any format tether train reads)")
    eval_data: str | None = opt(None, "held-out file: report prompts it shares with data")
    model: str | None = opt(None, "SFT model: its tokenizer for lengths and its own preference")
    output_dir: str = opt("", "where report.md, inspect.json and plots/ go (default: beside data)")
    max_length: int = opt(1024, "prompt + answer tokens training would keep", ge=1)
    near_duplicate: float = opt(
        0.8, "estimated Jaccard similarity of word 3-shingles that counts as near-duplicate",
        gt=0, le=1,
    )
    short_answer_words: int = opt(2, "answers with at most this many words are listed", ge=0)
    strong_disagreement: float = opt(
        1.0, "model=: a per-token margin below minus this is a label-noise candidate", gt=0
    )
    field_map: dict[str, str] = opt({}, "rename fields, e.g. field_map.chosen=output")
    prompt_template: str | None = opt(None, "build the prompt from fields, e.g. '{instruction}'")
    split: str = opt("train", "split to read from a saved/hub dataset")
    batch_size: int = opt(8, "model=: pairs scored per batch", ge=1)
    device: str = opt("auto", "model=: cpu, cuda or auto")
    trust_remote_code: bool = opt(False, "model=: allow model code from the hub")
    show: int = opt(10, "rows listed per finding", ge=1)

    def problems(self) -> list[str]:
        return [] if self.data else ["data: required (the preference file to inspect)"]


# --------------------------------------------------------------------------- text measures


def _text(t: Text) -> str:
    return t if isinstance(t, str) else "\n".join(m.get("content") or "" for m in t)


def normalise(t: Text) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what makes two prompts 'equal'."""
    return " ".join(re.sub(r"[^\w\s]", " ", _text(t).lower()).split())


def _shingles(t: str, k: int = 3) -> set[str]:
    words = t.split()
    return {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def minhash(t: str, n: int = 64) -> tuple[int, ...]:
    """n minimum hashes of the text's word 3-shingles: equal in a share of positions that
    estimates the Jaccard similarity of the two shingle sets."""
    sh = _shingles(t) or {""}
    return tuple(min(int.from_bytes(hashlib.blake2b(f"{i}:{s}".encode(), digest_size=8)
                                    .digest(), "big") for s in sh) for i in range(n))


def similarity(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def near_duplicates(
    texts: Sequence[str], threshold: float, bands: int = 16
) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of texts whose estimated similarity reaches ``threshold``: MinHash
    signatures bucketed by bands (LSH), so only candidates are compared."""
    sigs = [minhash(t) for t in texts]
    rows = len(sigs[0]) // bands if sigs else 0
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    for i, sig in enumerate(sigs):
        for b in range(bands):
            buckets[(b, sig[b * rows : (b + 1) * rows])].append(i)
    found = set()
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if (i, j) not in found and similarity(sigs[i], sigs[j]) >= threshold:
                    found.add((i, j))
    return sorted(found)


# --------------------------------------------------------------------------- the findings


@dataclass
class Finding:
    name: str
    severity: str  # "info" | "warn"
    summary: str
    meaning: str
    todo: str
    rows: list[str] = dataclasses.field(default_factory=list)  # file:line


def _lengths(records: Sequence[PreferenceRecord], tokenizer: Any) -> dict[str, list[int]]:
    def count(t: Text) -> int:
        text = _text(t)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer \
            else len(text.split())
    return {k: [count(getattr(r, k)) for r in records] for k in ("prompt", "chosen", "rejected")}


def _length_bias(records: Sequence[PreferenceRecord], n: dict[str, list[int]],
                 cfg: InspectConfig) -> tuple[Finding, list[int]]:
    diff = [c - r for c, r in zip(n["chosen"], n["rejected"], strict=True)]
    longer = sum(d > 0 for d in diff) / len(diff)
    shorter = sum(d < 0 for d in diff) / len(diff)
    biased = max(longer, shorter) >= 0.6
    side = "longer" if longer >= shorter else "shorter"
    finding = Finding(
        "length_bias", "warn" if biased else "info",
        f"chosen is longer in {longer:.0%} of pairs, shorter in {shorter:.0%} (mean difference "
        f"{sum(diff) / len(diff):+.1f} tokens)",
        "DPO can learn the length instead of the preference: a policy trained on these pairs "
        f"will drift toward {side} answers" if biased else
        "chosen and rejected lengths are balanced: length is not an easy shortcut here",
        "set length_normalize=true (or ld_alpha / loss=rdpo when available), and judge with the "
        "length-controlled win-rate (lc_win_rate) after training" if biased else "nothing",
    )
    return finding, diff


def _duplicates(records: Sequence[PreferenceRecord], cfg: InspectConfig) -> list[Finding]:
    norm = [normalise(r.prompt) for r in records]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(norm):
        groups[t].append(i)
    exact = [g for g in groups.values() if len(g) > 1]
    near = [(i, j) for i, j in near_duplicates(norm, cfg.near_duplicate) if norm[i] != norm[j]]
    same = [i for i, r in enumerate(records)
            if similarity(minhash(normalise(r.chosen)), minhash(normalise(r.rejected)))
            >= cfg.near_duplicate]
    return [
        Finding("duplicate_prompts", "warn" if exact else "info",
                f"{sum(len(g) for g in exact)} rows share their prompt with another row "
                f"({len(exact)} groups); {len(near)} further pairs of near-duplicate prompts",
                "repeated prompts weigh more in the loss and leak between train and eval splits",
                "keep one row per prompt unless the pairs differ on purpose (tether pairs dedupes)",
                [" = ".join(records[i].source for i in g) for g in exact]
                + [f"{records[i].source} ~ {records[j].source}" for i, j in near]),
        Finding("near_identical_answers", "warn" if same else "info",
                f"{len(same)} pairs whose chosen and rejected are near-identical",
                "a pair that barely differs carries little signal, and a noisy one",
                "look at these rows; drop them or rewrite the rejected answer",
                [records[i].source for i in same]),
    ]


def _short(records: Sequence[PreferenceRecord], cfg: InspectConfig) -> Finding:
    rows = [f"{r.source} ({side})" for r in records for side in ("chosen", "rejected")
            if len(_text(getattr(r, side)).split()) <= cfg.short_answer_words]
    return Finding("short_answers", "warn" if rows else "info",
                   f"{len(rows)} answers with at most {cfg.short_answer_words} words",
                   "very short or empty answers often are truncation or extraction errors",
                   "look at these rows", rows)


def _leakage(records: Sequence[PreferenceRecord], cfg: InspectConfig) -> Finding:
    assert cfg.eval_data is not None
    held, _ = load_preferences(cfg.eval_data, field_map=cfg.field_map,
                               prompt_template=cfg.prompt_template, split=cfg.split)
    train = {normalise(r.prompt): r.source for r in records}
    rows = [f"{h.source} = {train[normalise(h.prompt)]}" for h in held
            if normalise(h.prompt) in train]
    return Finding("train_eval_overlap", "warn" if rows else "info",
                   f"{len(rows)} of {len(held)} eval prompts also appear in the training data",
                   "a win-rate measured on prompts the model trained on overstates the gain",
                   "remove these prompts from eval_data (or from data)", rows)


def inspect_data(cfg: InspectConfig) -> dict[str, Any]:
    """Run every check on ``cfg.data``; write report.md, inspect.json and plots; return the
    JSON."""
    from tether.insight.inspect_model import model_preference
    from tether.insight.inspect_report import write_inspect_report

    records, report = load_preferences(cfg.data, field_map=cfg.field_map,
                                       prompt_template=cfg.prompt_template, split=cfg.split)
    tokenizer = None
    if cfg.model:
        from tether.model.loading import load_tokenizer

        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, field="model")
    n = _lengths(records, tokenizer)
    cut = [r.source for r, p, c, j in zip(records, n["prompt"], n["chosen"], n["rejected"],
                                          strict=True) if p + max(c, j) + 1 > cfg.max_length]
    bias, diff = _length_bias(records, n, cfg)
    findings = [
        Finding("identical_pairs", "warn" if report.identical_dropped else "info",
                f"{report.identical_dropped} of {report.rows} rows have chosen == rejected",
                "such rows carry no preference; training drops them",
                "fix or remove them at the source", report.identical_sources),
        Finding("truncation", "warn" if cut else "info",
                f"{len(cut)} rows longer than max_length={cfg.max_length} "
                f"({'tokens' if tokenizer else 'words; pass model= for tokens'})",
                "training cuts their answers (or drops rows whose prompt leaves no room)",
                "raise max_length, set max_prompt_length, or shorten these rows", cut),
        bias, *_duplicates(records, cfg), _short(records, cfg),
    ]
    if cfg.eval_data:
        findings.append(_leakage(records, cfg))
    margins: list[float] = []
    if cfg.model:
        finding, margins = model_preference(cfg, records, tokenizer)
        findings.append(finding)
    out_dir = Path(cfg.output_dir or Path(cfg.data).expanduser().resolve().parent / "inspect")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "data": cfg.data, "rows": report.rows, "pairs": len(records), "format": report.format,
        "units": "tokens" if tokenizer else "words",
        "lengths": {k: _stats(v) for k, v in n.items()},
        "length_bias": {"chosen_longer": sum(d > 0 for d in diff) / len(diff),
                        "chosen_shorter": sum(d < 0 for d in diff) / len(diff),
                        "mean_difference": sum(diff) / len(diff)},
        "findings": [dataclasses.asdict(f) for f in findings],
    }
    if margins:
        result["model_margin"] = _stats(margins)
    result["report"] = str(out_dir / "report.md")
    write_json(out_dir / "inspect.json", result)
    write_inspect_report(out_dir, result, findings, n, diff, margins, cfg.show)
    return result


def _stats(values: Sequence[float]) -> dict[str, float]:
    s = sorted(values)
    return {"mean": sum(s) / len(s), "p50": s[len(s) // 2], "p95": s[int(0.95 * (len(s) - 1))],
            "max": s[-1], "min": s[0]}

