"""Judged pairs -> the numbers of ``eval/results.json`` and the lines of ``judgments.jsonl``."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tether.eval.generate import Generation
from tether.eval.judging import PairJudgment, outcome_of
from tether.eval.stats import (
    SCORES,
    bootstrap_win_rate,
    count_outcomes,
    group_win_rates,
    length_controlled_win_rate,
    length_summary,
    order_agreement,
    style_controlled_win_rate,
    style_counts,
    wilson_interval,
    win_rate,
)

__all__ = ["clean", "judgment_lines", "win_rate_results"]


def clean(obj: Any) -> Any:
    """NaN and infinities become null, tuples lists: results.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _finish_counts(gens: Sequence[Generation]) -> dict[str, int]:
    c = Counter(g.finish_reason for g in gens)
    return {"stop": c.get("stop", 0), "length": c.get("length", 0)}


def win_rate_results(
    judged: Sequence[PairJudgment],
    policy: Sequence[Generation],
    reference: Sequence[Generation],
    *,
    bootstrap_samples: int,
    seed: int,
    length_warning_ratio: float,
) -> dict[str, Any]:
    """Counts, win-rate with its intervals, length control, order bias, lengths, finish reasons.

    ``policy[k]`` and ``reference[k]`` are the two answers of ``judged[k]``.
    """
    outcomes = [j.outcome for j in judged]
    counts = count_outcomes(outcomes)
    parsed = [k for k, o in enumerate(outcomes) if o != "unparsed"]
    scores = [SCORES[outcomes[k]] for k in parsed]
    groups = [judged[k].pair.group for k in parsed]
    lc = length_controlled_win_rate(
        scores,
        [policy[k].tokens for k in parsed],
        [reference[k].tokens for k in parsed],
        groups,
        bootstrap_samples,
        seed,
    )
    sc = style_controlled_win_rate(
        scores,
        [style_counts(policy[k].text, policy[k].tokens) for k in parsed],
        [style_counts(reference[k].text, reference[k].tokens) for k in parsed],
        groups,
        bootstrap_samples,
        seed,
    )
    labels = [str((judged[k].pair.row or {}).get("group", "")) for k in parsed]
    by_group = group_win_rates(scores, groups, labels, bootstrap_samples, seed) \
        if any(labels) else {}
    both = [
        tuple(outcome_of(c.order, c.verdict.winner) for c in j.calls)
        for j in judged
        if len(j.calls) == 2
    ]
    errors = [c.verdict.error or c.verdict.raw for j in judged for c in j.calls
              if c.verdict.winner == "unparsed"]
    return {
        "win_rate": win_rate(outcomes),
        "ci95": list(bootstrap_win_rate(scores, groups, bootstrap_samples, seed)),
        "wilson95": list(wilson_interval(counts.wins, counts.wins + counts.losses)),
        "wins": counts.wins,
        "ties": counts.ties,
        "losses": counts.losses,
        "unparsed": counts.unparsed,
        "n": counts.n,
        "pairs": counts.total,
        "decisive_win_rate": counts.wins / (counts.wins + counts.losses)
        if counts.wins + counts.losses else None,
        "lc_win_rate": lc.win_rate,
        "lc_ci95": list(lc.ci95),
        "lc_slope": lc.slope,
        "sc_win_rate": sc.win_rate,
        "sc_ci95": list(sc.ci95),
        "sc_coefficients": sc.coefficients,
        "groups": by_group,
        "regressed_groups": sorted(g for g, v in by_group.items() if v["regression"]),
        **order_agreement(both),  # type: ignore[arg-type]
        "lengths": length_summary(
            [g.tokens for g in policy], [g.tokens for g in reference], length_warning_ratio
        ),
        "finish_reasons": {
            "policy": _finish_counts(policy), "reference": _finish_counts(reference)
        },
        "unparsed_examples": errors[:5],
    }


def judgment_lines(
    judged: Sequence[PairJudgment],
    policy: Sequence[Generation],
    identity: str,
    template_hash: str,
) -> list[dict[str, Any]]:
    """One line per judge call (display order); identical answers get one line, no call."""
    lines = []
    for j, gen in zip(judged, policy, strict=True):
        for c in j.calls:
            lines.append({
                "pair": j.pair.index,
                "prompt_index": j.pair.group,
                "sample": gen.sample,
                "prompt": j.pair.prompt,
                "policy_answer": j.pair.policy,
                "reference_answer": j.pair.reference,
                "order": c.order,
                "answer_a": c.answer_a,
                "answer_b": c.answer_b,
                "raw": c.verdict.raw,
                "verdict": c.verdict.winner,
                "p_a": c.verdict.p_a,
                "error": c.verdict.error,
                "source": c.source,
                "pair_outcome": j.outcome,
                "judge": identity,
                "template_hash": template_hash,
            })
    return lines
