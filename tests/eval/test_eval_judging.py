"""Display orders, identical answers, the SQLite cache and resuming, against a real server."""

from __future__ import annotations

import sqlite3

import pytest
from eval_chat_server import ChatServer, Reply, completion

from tether.eval.cache import JudgmentCache
from tether.eval.judges.base import Verdict
from tether.eval.judges.openai import OpenAIJudge
from tether.eval.judges.rule import RuleJudge
from tether.eval.judging import Pair, judge_pairs, outcome_of
from tether.eval.stats import order_agreement


def _pairs(n: int) -> list[Pair]:
    return [Pair(i, i, f"prompt {i}", f"good answer {i}", f"poor answer {i}") for i in range(n)]


def _judge(server: ChatServer, **kw) -> OpenAIJudge:
    return OpenAIJudge(server.url, "m", backoff=0.001, retries=1, concurrency=2, **kw)


def _quality(body: dict, n: int) -> Reply:
    """A judge that sees quality: picks whichever response says 'good'."""
    user = body["messages"][1]["content"]
    a = user.split("=== RESPONSE A ===")[1].split("=== END OF RESPONSE A ===")[0]
    return Reply(body=completion("A" if "good" in a else "B"))


def test_position_biased_judge_gives_ties_and_full_flip_rate():
    pairs = [*_pairs(3), Pair(3, 3, "same", "identical", "identical")]
    with ChatServer(lambda body, n: Reply(body=completion("A"))) as server:
        out = judge_pairs(_judge(server), pairs, JudgmentCache(None), announce=lambda s: None)
    assert server.calls == 6  # two orders x three pairs; the identical pair costs nothing
    assert [j.outcome for j in out] == ["tie"] * 4
    assert out[3].calls[0].source == "identical"
    both = [tuple(c.verdict.winner for c in j.calls) for j in out[:3]]
    assert both == [("A", "A")] * 3
    orders = [tuple(outcome_of(c.order, c.verdict.winner) for c in j.calls) for j in out[:3]]
    assert orders == [("win", "loss")] * 3
    agreement = order_agreement(orders)
    assert agreement["order_flip_rate"] == 1.0 and agreement["first_position_rate"] == 1.0


def test_consistent_judge_wins_in_both_orders():
    with ChatServer(_quality) as server:
        out = judge_pairs(_judge(server), _pairs(4), JudgmentCache(None), announce=lambda s: None)
    assert [j.outcome for j in out] == ["win"] * 4
    for j in out:
        assert [c.order for c in j.calls] == ["policy_first", "reference_first"]
        assert [c.verdict.winner for c in j.calls] == ["A", "B"]
        assert j.calls[1].answer_a == j.pair.reference  # the swap really happened


def test_one_failed_order_makes_the_pair_unparsed_not_a_loss():
    def reply(body, n):
        if "RESPONSE A ===\npoor" in body["messages"][1]["content"]:
            return Reply(status=500)
        return _quality(body, n)

    with ChatServer(reply) as server:
        out = judge_pairs(_judge(server), _pairs(2), JudgmentCache(None), announce=lambda s: None)
    assert [j.outcome for j in out] == ["unparsed", "unparsed"]
    assert all(j.p_policy is None for j in out)


def test_deterministic_judge_is_asked_once_per_pair():
    judge = RuleJudge("tether.eval.rules:shorter")
    pairs = [Pair(0, 0, "q", "short", "much longer"), Pair(1, 0, "q", "longer one", "short")]
    out = judge_pairs(judge, pairs, JudgmentCache(None), announce=lambda s: None)
    assert [len(j.calls) for j in out] == [1, 1]
    assert [j.outcome for j in out] == ["win", "loss"]


def test_interrupted_evaluation_resumes_without_repeated_calls(tmp_path):
    db = tmp_path / "judgments.sqlite"
    pairs = _pairs(10)  # 20 judgments in two orders
    with ChatServer(_quality) as server:
        # Run 1 spends a budget of 6 requests: 6 verdicts stored, 14 left unparsed (not stored).
        with JudgmentCache(db) as cache:
            first = judge_pairs(_judge(server, request_budget=6), pairs, cache,
                                chunk_size=4, announce=lambda s: None)
        assert server.calls == 6
        assert sum(j.outcome == "unparsed" for j in first) >= 7
        # Run 2 is interrupted (Ctrl-C) after its first chunk of 4 judgments.
        def stop(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with JudgmentCache(db) as cache, pytest.raises(KeyboardInterrupt):
            judge_pairs(_judge(server), pairs, cache, chunk_size=4, announce=lambda s: None,
                        on_progress=stop)
        assert server.calls == 6 + 4
        # Run 3 asks only for what is missing.
        lines: list[str] = []
        with JudgmentCache(db) as cache:
            third = judge_pairs(_judge(server), pairs, cache, chunk_size=4, announce=lines.append)
        assert server.calls == 20
        assert "10 cached, 10 to ask" in lines[0]
        # Run 4 recomputes everything from the cache: no call at all, same outcomes.
        with JudgmentCache(db) as cache:
            fourth = judge_pairs(_judge(server), pairs, cache, announce=lambda s: None)
        assert server.calls == 20
    assert [j.outcome for j in third] == [j.outcome for j in fourth] == ["win"] * 10
    assert all(c.source == "cache" for j in fourth for c in j.calls)
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_cache_key_separates_judges_templates_orders_and_rows(tmp_path):
    from tether.eval.cache import judgment_key

    base = judgment_key("j", "t", "p", "a", "b", None)
    assert judgment_key("j", "t", "p", "a", "b", None) == base
    for other in (
        judgment_key("j2", "t", "p", "a", "b", None),
        judgment_key("j", "t2", "p", "a", "b", None),
        judgment_key("j", "t", "p", "b", "a", None),
        judgment_key("j", "t", "p", "a", "b", {"answer": "x"}),
    ):
        assert other != base
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        stored = cache.put_many([
            ("k1", "j", "t", Verdict("A", p_a=0.8, raw="A")),
            ("k2", "j", "t", Verdict("unparsed", error="HTTP 500")),  # failures are not kept
            ("k3", "j", "t", Verdict("unparsed", raw="chatter")),  # nor unreadable answers
        ])
        assert stored == 1 and len(cache) == 1
        got = cache.get_many(["k1", "k2", "k3"])
    assert got == {"k1": Verdict("A", p_a=0.8, raw="A")}
