"""Agreement between annotators (Cohen's and Fleiss' kappa) and between people and a judge.

Votes are compared in answer terms (``"1"``, ``"2"``, ``"tie"``, ``"both_bad"``), never in the
displayed A/B terms: each annotator saw the sides in their own shuffled order. Skips are not
judgments and are left out.

Cohen (1960): kappa = (p_o - p_e) / (1 - p_e), p_e = sum_c p_A(c) p_B(c).
Fleiss (1971): kappa = (P_bar - P_e) / (1 - P_e), P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)),
P_e = sum_j p_j^2, p_j = sum_i n_ij / sum_i n_i. Items may have different numbers of ratings
(n_i); with a constant n this is exactly Fleiss' statistic.
Kappa is undefined (``None``) when chance agreement is 1 (everyone used one category).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

from tether.ui.store import VoteRow

__all__ = [
    "annotator_agreement",
    "cohen_kappa",
    "fleiss_kappa",
    "item_outcomes",
    "judge_agreement",
    "plurality",
]

JUDGED = ("1", "2", "tie", "both_bad")


def _share_equal(a: Sequence[str], b: Sequence[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (``a[i]`` and ``b[i]``)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    p_o = _share_equal(a, b)
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(ratings: Iterable[Sequence[str]]) -> float | None:
    """Fleiss' kappa; ``ratings`` holds, per item, the labels its raters gave (items with
    fewer than two ratings carry no agreement and are ignored)."""
    rated = [Counter(r) for r in ratings if len(r) >= 2]
    if not rated:
        return None
    p_items = []
    totals: Counter[str] = Counter()
    for counts in rated:
        n_i = sum(counts.values())
        p_items.append((sum(c * c for c in counts.values()) - n_i) / (n_i * (n_i - 1)))
        totals.update(counts)
    p_bar = sum(p_items) / len(p_items)
    all_ratings = sum(totals.values())
    p_e = sum((c / all_ratings) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def _judged(votes: Iterable[VoteRow]) -> dict[int, dict[str, str]]:
    """item -> annotator -> outcome, skips dropped."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for v in votes:
        if v.outcome in JUDGED:
            out[v.item_id][v.annotator] = v.outcome
    return out


def plurality(outcomes: Sequence[str]) -> str | None:
    """The most frequent outcome, ``"disagree"`` when two outcomes share the top count,
    ``None`` for no outcomes."""
    if not outcomes:
        return None
    ranked = Counter(outcomes).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "disagree"
    return ranked[0][0]


def item_outcomes(votes: Iterable[VoteRow]) -> dict[int, str]:
    """Per voted item, the plurality of its non-skip votes (or ``"disagree"``)."""
    out = {}
    for item_id, by_annotator in _judged(votes).items():
        verdict = plurality(list(by_annotator.values()))
        if verdict is not None:
            out[item_id] = verdict
    return out


def annotator_agreement(votes: Iterable[VoteRow]) -> dict[str, Any]:
    """Agreement on items judged by more than one annotator.

    ``kappa`` is Cohen's when exactly two annotators share items, Fleiss' when more do;
    ``pairwise`` gives Cohen's kappa for every pair of annotators with items in common.
    """
    judged = _judged(votes)
    shared = {i: r for i, r in judged.items() if len(r) >= 2}
    raters = sorted({name for r in shared.values() for name in r})
    pairs = []
    for x, y in combinations(raters, 2):
        common = [r for r in shared.values() if x in r and y in r]
        a, b = [r[x] for r in common], [r[y] for r in common]
        if common:
            pairs.append({"a": x, "b": y, "n": len(common), "agreement": _share_equal(a, b),
                          "kappa": cohen_kappa(a, b)})
    agreeing = total = 0
    for r in shared.values():
        for p, q in combinations(list(r.values()), 2):
            total += 1
            agreeing += p == q
    if len(raters) == 2:
        kind, kappa = "cohen", pairs[0]["kappa"]
    else:
        kind, kappa = "fleiss", fleiss_kappa([list(r.values()) for r in shared.values()])
    return {
        "items": len(shared),
        "annotators": len(raters),
        "kappa_kind": kind if shared else None,
        "kappa": kappa if shared else None,
        "agreement": agreeing / total if total else None,
        "pairwise": pairs,
    }


def _as_judge(outcome: str) -> str:
    # A judge has no "both bad": for it neither answer is better, which is a tie.
    return "tie" if outcome in ("both_bad", "disagree") else outcome


def judge_agreement(
    votes: Sequence[VoteRow], verdicts: Mapping[str, Mapping[int, str]]
) -> dict[str, dict[str, Any]]:
    """For each automatic judge: agreement and Cohen's kappa with the people's per-item
    plurality (both-bad and split votes count as ties), and with each annotator."""
    people = item_outcomes(votes)
    judged = _judged(votes)
    report: dict[str, dict[str, Any]] = {}
    for judge, by_item in sorted(verdicts.items()):
        common = sorted(set(by_item) & set(people))
        h = [_as_judge(people[i]) for i in common]
        j = [by_item[i] for i in common]
        per_annotator = {}
        for name in sorted({n for r in judged.values() for n in r}):
            mine = [i for i in common if name in judged[i]]
            a = [_as_judge(judged[i][name]) for i in mine]
            b = [by_item[i] for i in mine]
            if mine:
                per_annotator[name] = {
                    "n": len(mine),
                    "agreement": _share_equal(a, b),
                    "kappa": cohen_kappa(a, b),
                }
        report[judge] = {
            "n": len(common),
            "agreement": _share_equal(h, j) if common else None,
            "kappa": cohen_kappa(h, j),
            "per_annotator": per_annotator,
        }
    return report
