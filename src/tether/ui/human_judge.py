"""The ``human`` judge: people on the labeling page are the judge (the eval issue's Protocol).

``judge_many(items)`` puts every (prompt, answer_a, answer_b) into the labeling database, where
``tether label --db <same file>`` shows it to annotators blind (sides shuffled per annotator), and
returns a verdict for each item from the votes stored so far:

- the plurality of the item's non-skip votes: answer A better -> ``"A"``, B -> ``"B"``; tie,
  both bad, or a split vote -> ``"tie"``;
- ``"unparsed"`` (raw ``"no human vote yet"``) while nobody has voted; the evaluator excludes
  and counts such items, so calling again later, once people have voted, fills them in;
- identical answers are a ``"tie"`` and are never shown.

``p_a`` is the share of votes for A, ties and both-bad counting half. The database keys a pair by
its prompt and the unordered answers, so asking (a, b) and then (b, a) reuses the same votes,
mapped to each call's order. With ``wait_s`` > 0, ``judge_many`` polls the database until every
item has a vote or the time is up.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tether.eval.judges.base import JudgeItem, Verdict
from tether.eval.judges.registry import register_judge
from tether.ui.agreement import plurality
from tether.ui.inputs import PairItem, item_key
from tether.ui.store import LabelStore, VoteRow

if TYPE_CHECKING:
    from tether.eval.config import JudgeConfig

__all__ = ["HumanJudge"]


class HumanJudge:
    """Implements ``tether.eval.judges.base.Judge`` with votes from the labeling page."""

    deterministic = True  # the page randomises sides itself: one question per pair is enough
    cacheable = False  # votes keep arriving: read them afresh every time

    def __init__(
        self,
        db: str | Path | LabelStore,
        *,
        identity: str = "human",
        wait_s: float = 0.0,
        poll_s: float = 1.0,
    ) -> None:
        if isinstance(db, LabelStore):
            self.store = db
        else:
            # a new database is a win-rate one (the page says so); an existing one keeps its mode
            self.store = LabelStore(db, mode=None if Path(db).exists() else "winrate")
        self.identity = identity
        self.wait_s = wait_s
        self.poll_s = poll_s

    def __call__(
        self, prompt: str, answer_a: str, answer_b: str, row: dict | None = None
    ) -> Verdict:
        return self.judge_many([JudgeItem(prompt, answer_a, answer_b, row)])[0]

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        pairs = [
            PairItem(it.prompt, it.answer_a, it.answer_b, "answer_a", "answer_b",
                     f"judge:{self.identity}")
            for it in items
        ]
        self.store.add_items(pairs)
        deadline = time.monotonic() + self.wait_s
        while True:
            verdicts = self._verdicts(items)
            pending = any(v.winner == "unparsed" for v in verdicts)
            if not pending or time.monotonic() >= deadline:
                return verdicts
            time.sleep(self.poll_s)

    def _verdicts(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        by_item: dict[int, list[VoteRow]] = {}
        for v in self.store.votes():
            if v.outcome != "skip":
                by_item.setdefault(v.item_id, []).append(v)
        out = []
        for it in items:
            stored = self.store.find_item(item_key(it.prompt, it.answer_a, it.answer_b))
            assert stored is not None, "judge_many stores every item before reading verdicts"
            if stored.identical:
                out.append(Verdict("tie", 0.5, "identical answers"))
                continue
            flip = stored.answer_1 != it.answer_a
            out.append(_verdict([v.outcome for v in by_item.get(stored.id, [])], flip))
        return out


def _as_ab(outcome: str, flip: bool) -> str:
    if outcome == "1":
        return "B" if flip else "A"
    if outcome == "2":
        return "A" if flip else "B"
    return "tie"  # tie, both bad, split vote: neither answer is better


def _verdict(outcomes: list[str], flip: bool) -> Verdict:
    """Same plurality rule as the preference export, then in the caller's A/B order."""
    if not outcomes:
        return Verdict("unparsed", None, "no human vote yet")
    sides = Counter(_as_ab(o, flip) for o in outcomes)
    p_a = (sides["A"] + 0.5 * sides["tie"]) / len(outcomes)
    raw = f"human votes: A={sides['A']} B={sides['B']} tie or both bad={sides['tie']}"
    winner = _as_ab(plurality(outcomes) or "tie", flip)
    return Verdict("A" if winner == "A" else "B" if winner == "B" else "tie", p_a, raw)


@register_judge("human")
def _build(cfg: JudgeConfig, memo_dir: Path | None) -> HumanJudge:
    return HumanJudge(cfg.judge_db, wait_s=cfg.judge_wait)
