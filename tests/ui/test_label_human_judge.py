"""The ``human`` judge: items go to the labeling database, verdicts come from votes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tether.eval.judges.base import Judge, JudgeItem
from tether.ui.human_judge import HumanJudge
from tether.ui.store import LabelStore


def vote_for(store: LabelStore, name: str, better: dict[str, str]) -> None:
    """As ``name``, vote for the answer text ``better[prompt]`` (or "tie") on every item."""
    _, who = store.login(name)
    while (shown := store.current(who)) is not None:
        want = better[shown.item.prompt]
        choice = "tie" if want == "tie" else "A" if shown.answer_a == want else "B"
        store.vote(who, shown.item.id, choice)


def test_implements_the_judge_protocol(tmp_path: Path) -> None:
    judge = HumanJudge(tmp_path / "h.db")
    assert isinstance(judge, Judge)
    assert judge.identity == "human" and judge.deterministic is True


def test_unvoted_items_are_unparsed_then_filled_in(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    judge = HumanJudge(db)
    items = [JudgeItem("p1", "x1", "y1"), JudgeItem("p2", "x2", "y2"),
             JudgeItem("p3", "x3", "y3"), JudgeItem("p4", "same", "same")]
    first = judge.judge_many(items)
    assert [v.winner for v in first] == ["unparsed", "unparsed", "unparsed", "tie"]
    assert first[0].raw == "no human vote yet"
    store = LabelStore(db)  # what `tether label --db h.db` serves
    assert len(store.items()) == 4
    vote_for(store, "ann", {"p1": "x1", "p2": "y2", "p3": "tie"})
    again = judge.judge_many(items)
    assert [v.winner for v in again] == ["A", "B", "tie", "tie"]
    assert [v.p_a for v in again[:3]] == [1.0, 0.0, 0.5]
    assert len(store.items()) == 4  # asking again stores nothing new


def test_the_reverse_order_maps_to_the_same_votes(tmp_path: Path) -> None:
    # every annotator sees every item (overlap 1), so three people can vote on one pair
    judge = HumanJudge(LabelStore(tmp_path / "h.db", overlap=1.0), identity="human:panel")
    judge.judge_many([JudgeItem("p", "good", "bad")])
    store = judge.store
    vote_for(store, "ann", {"p": "good"})
    vote_for(store, "bob", {"p": "good"})
    vote_for(store, "cyd", {"p": "bad"})
    forward = judge("p", "good", "bad")
    backward = judge("p", "bad", "good")
    assert (forward.winner, backward.winner) == ("A", "B")
    assert forward.p_a == 2 / 3 and backward.p_a == 1 / 3
    assert "A=2 B=1" in forward.raw and "A=1 B=2" in backward.raw
    assert [i.origin for i in store.items()] == ["judge:human:panel"]


def test_split_votes_are_a_tie(tmp_path: Path) -> None:
    judge = HumanJudge(LabelStore(tmp_path / "h.db", overlap=1.0))
    judge.judge_many([JudgeItem("p", "a", "b")])
    vote_for(judge.store, "ann", {"p": "a"})
    vote_for(judge.store, "bob", {"p": "b"})
    verdict = judge("p", "a", "b")
    assert verdict.winner == "tie" and verdict.p_a == 0.5


def test_wait_polls_until_people_have_voted(tmp_path: Path) -> None:
    judge = HumanJudge(tmp_path / "h.db", wait_s=20, poll_s=0.05)
    judge.store.add_items([])  # the database exists before the page serves it

    def annotate() -> None:
        store = LabelStore(tmp_path / "h.db")
        while not store.items():
            time.sleep(0.02)
        vote_for(store, "ann", {"p": "b"})

    worker = threading.Thread(target=annotate)
    worker.start()
    start = time.monotonic()
    verdict = judge.judge_many([JudgeItem("p", "a", "b")])[0]
    worker.join()
    assert verdict.winner == "B" and time.monotonic() - start < 20
