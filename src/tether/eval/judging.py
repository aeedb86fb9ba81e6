"""Judge policy-vs-reference pairs: display orders, identical answers, the cache, bookkeeping.

A non-deterministic judge (an LLM) sees each pair twice, the policy's answer first and then
second; when the two orders disagree the pair is a tie, and the order-flip rate says how often
that happened. Identical answers are ties without asking. Either order failing makes the pair
``unparsed``: it is counted and excluded, never a loss. Each verdict is written to the cache
as it arrives (judges whose ``judge_many`` takes ``on_verdict``, like the OpenAI judge; others
per call), so a killed evaluation asks again only what was in flight.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.eval.cache import JudgmentCache, judgment_key
from tether.eval.judges.base import Judge, JudgeItem, Verdict
from tether.eval.stats import Outcome

__all__ = ["Call", "Pair", "PairJudgment", "judge_pairs", "outcome_of", "prompt_text"]

Order = Literal["policy_first", "reference_first"]


def prompt_text(prompt: Any) -> str:
    """What a judge is shown as the prompt: the text, or the conversation as ``role: content``."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        if len(prompt) == 1 and prompt[0].get("role") == "user":
            return str(prompt[0].get("content", ""))
        return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)
    return json.dumps(prompt, ensure_ascii=False)


@dataclass(frozen=True)
class Pair:
    """The policy's and the reference's answer to one prompt (one sample of it)."""

    index: int
    group: int  # prompt index: the bootstrap resamples prompts
    prompt: str
    policy: str
    reference: str
    row: dict | None = None


@dataclass(frozen=True)
class Call:
    """One display order of a pair and what the judge said about it."""

    order: Order
    answer_a: str
    answer_b: str
    verdict: Verdict
    source: Literal["judge", "cache", "identical"]


@dataclass(frozen=True)
class PairJudgment:
    pair: Pair
    outcome: Outcome
    p_policy: float | None  # the judge's probability that the policy's answer is better
    calls: list[Call] = field(default_factory=list)


def outcome_of(order: Order, winner: str) -> Outcome:
    """A display-order verdict as the policy's outcome."""
    if winner in ("tie", "unparsed"):
        return winner  # type: ignore[return-value]
    policy_label = "A" if order == "policy_first" else "B"
    return "win" if winner == policy_label else "loss"


def _combine(pair: Pair, calls: list[Call]) -> PairJudgment:
    outcomes = [outcome_of(c.order, c.verdict.winner) for c in calls]
    if "unparsed" in outcomes:
        outcome: Outcome = "unparsed"
    elif len(set(outcomes)) == 1:
        outcome = outcomes[0]
    else:
        outcome = "tie"  # the orders disagree: position, not quality, decided
    ps = [
        c.verdict.p_a if c.order == "policy_first" else 1.0 - c.verdict.p_a
        for c in calls
        if c.verdict.p_a is not None
    ]
    p_policy = sum(ps) / len(ps) if ps and outcome != "unparsed" else None
    return PairJudgment(pair, outcome, p_policy, calls)


def _display(pair: Pair, order: Order) -> tuple[str, str]:
    if order == "policy_first":
        return (pair.policy, pair.reference)
    return (pair.reference, pair.policy)


def judge_pairs(
    judge: Judge,
    pairs: Sequence[Pair],
    cache: JudgmentCache,
    *,
    both_orders: bool | None = None,
    chunk_size: int = 16,
    announce: Callable[[str], None] = print,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[PairJudgment]:
    """Judge every pair, cache first; ``both_orders=None``: both orders for LLM-like judges."""
    if both_orders is None:
        both_orders = not judge.deterministic
    orders: tuple[Order, ...] = ("policy_first", "reference_first") if both_orders else (
        "policy_first",
    )
    template_hash = str(getattr(judge, "template_hash", ""))
    wanted: list[tuple[int, Order, str, JudgeItem]] = []
    for pair in pairs:
        if pair.policy == pair.reference:
            continue
        for order in orders:
            a, b = _display(pair, order)
            key = judgment_key(judge.identity, template_hash, pair.prompt, a, b, pair.row)
            wanted.append((pair.index, order, key, JudgeItem(pair.prompt, a, b, pair.row)))
    # A judge whose verdicts can still change (people voting on the labeling page) opts out.
    cacheable = bool(getattr(judge, "cacheable", True))
    cached = cache.get_many([w[2] for w in wanted]) if cacheable else {}
    todo = [w for w in wanted if w[2] not in cached]
    _announce_plan(judge, len(pairs), len(wanted), [w[3] for w in todo], announce)
    fresh: dict[str, Verdict] = {}

    def store(verdicts: list[tuple[str, Verdict]]) -> None:
        if cacheable:
            cache.put_many((key, judge.identity, template_hash, v) for key, v in verdicts)

    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        keys = [w[2] for w in chunk]
        verdicts = _ask(judge, [w[3] for w in chunk], keys, store)
        fresh.update(zip(keys, verdicts, strict=True))
        if on_progress is not None:
            on_progress(min(start + chunk_size, len(todo)), len(todo))
    by_pair: dict[int, list[Call]] = {}
    for index, order, key, item in wanted:
        source: Literal["judge", "cache"] = "cache" if key in cached else "judge"
        verdict = cached[key] if key in cached else fresh[key]
        by_pair.setdefault(index, []).append(
            Call(order, item.answer_a, item.answer_b, verdict, source)
        )
    out = []
    for pair in pairs:
        calls = by_pair.get(pair.index)
        if calls is None:  # identical answers
            a, b = _display(pair, "policy_first")
            same = Call("policy_first", a, b, Verdict("tie", p_a=0.5, raw=""), "identical")
            out.append(PairJudgment(pair, "tie", 0.5, [same]))
        else:
            out.append(_combine(pair, calls))
    return out


def _ask(
    judge: Judge, items: list[JudgeItem], keys: list[str],
    store: Callable[[list[tuple[str, Verdict]]], None],
) -> list[Verdict]:
    """``judge.judge_many(items)``, storing each verdict (under ``keys[i]``) as soon as it
    exists: one by one through ``on_verdict`` where the judge takes it, else all after the
    call (a rule or a reward model: fast, and one write)."""
    if "on_verdict" in inspect.signature(judge.judge_many).parameters:
        return judge.judge_many(  # type: ignore[call-arg]
            items, on_verdict=lambda i, v: store([(keys[i], v)])
        )
    verdicts = judge.judge_many(items)
    store(list(zip(keys, verdicts, strict=True)))
    return verdicts


def _announce_plan(
    judge: Judge, n_pairs: int, n_calls: int, todo: list[JudgeItem], announce: Callable[[str], None]
) -> None:
    """Say what the judging will cost before spending anything (requests, tokens, money)."""
    line = (
        f"judge {judge.identity}: {n_pairs} pairs, {n_calls} judgments needed, "
        f"{n_calls - len(todo)} cached, {len(todo)} to ask"
    )
    estimate = getattr(judge, "estimate", None)
    if todo and callable(estimate):
        est = estimate(todo)
        line += f"; about {est['input_tokens']:,} input + {est['output_tokens']:,} output tokens"
        if est.get("usd") is not None:
            line += f", about ${est['usd']:.2f}"
        limit = getattr(getattr(judge, "budget", None), "limit", None)
        if limit is not None and limit < len(todo):
            line += f" (request budget {limit}: some judgments will stay unparsed)"
    announce(line)
