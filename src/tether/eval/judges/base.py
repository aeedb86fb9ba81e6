"""The one Protocol every judge implements, and the verdict it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Judge", "JudgeItem", "Verdict", "Winner"]

Winner = Literal["A", "B", "tie", "unparsed"]


@dataclass(frozen=True)
class Verdict:
    """One judgment of (prompt, answer A, answer B).

    ``winner`` is ``"unparsed"`` when the judge failed or its output could not be read: such
    items are excluded from the win-rate and counted, never scored as a loss. ``p_a`` is the
    judge's probability that A is better, when it gives one (reward model, log-probs).
    ``error`` says why a judge gave no answer at all (HTTP failure, budget spent). Neither kind
    of ``unparsed`` verdict is cached: a later run asks again.
    """

    winner: Winner
    p_a: float | None = None
    raw: str = ""
    error: str | None = None


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees. ``row`` is the held-out data row (ground truth for rule judges)."""

    prompt: str
    answer_a: str
    answer_b: str
    row: dict | None = None


@runtime_checkable
class Judge(Protocol):
    """``judge(prompt, answer_a, answer_b) -> Verdict``, plus a batch form.

    ``identity`` names the judge and its settings (model, template version); it keys the
    judgment cache. ``deterministic`` judges (rules, reward models) are asked once per pair;
    others see both orders. ``judge_many`` lets a judge batch, run requests concurrently, or
    (the human judge) wait for votes from the labeling page.

    A judge may also carry ``template_hash: str`` (the hash of its prompt template or rule
    source); it joins ``identity`` in the cache key and in every judgments.jsonl line. A
    ``judge_many`` that takes ``on_verdict`` (called as ``on_verdict(i, verdict)`` the moment
    item ``i`` is judged) lets each verdict be stored as it arrives, so an interrupted
    evaluation pays for no answer twice; without it verdicts are stored per call.
    """

    identity: str
    deterministic: bool

    def __call__(
        self, prompt: str, answer_a: str, answer_b: str, row: dict | None = None
    ) -> Verdict: ...

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...
