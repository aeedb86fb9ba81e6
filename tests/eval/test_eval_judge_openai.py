"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import math
import time

import pytest
from eval_chat_server import ChatServer, Reply, completion

from tether.errors import JudgeError
from tether.eval.judges.base import Judge, JudgeItem
from tether.eval.judges.openai import OpenAIJudge, chat_completions_url
from tether.eval.judges.template import PAIRWISE_V1, JudgeTemplate, parse_verdict

FAST = {"backoff": 0.001, "timeout": 2.0, "retries": 2}


def _judge(server: ChatServer, **kw) -> OpenAIJudge:
    return OpenAIJudge(server.url, "judge-model", **{**FAST, **kw})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", "A"),
        (" B.\n", "B"),
        ("**A**", "A"),
        ("tie", "tie"),
        ("[[B]]", "B"),
        ("Response A is concise but wrong. Response B is correct.\n\nVerdict: B", "B"),
        ("I first thought A, but on reflection the better response is B.", "B"),
        ("Final answer: **A**", "A"),
        ("<think>B looks longer, maybe B</think>\nA", "A"),
        ("A\n\nBecause it answers the question.", "A"),
        ("Response B is better because it is correct.", "B"),
        ("Both responses are equally good.", "tie"),
        ("A good answer would mention Paris.", None),  # "A" the article, not a verdict
        ("I cannot decide.", None),
        ("", None),
    ],
)
def test_parse_verdict_tolerates_chatter(text, expected):
    assert parse_verdict(text) == expected


def test_template_is_neutral_versioned_and_hashed():
    msgs = PAIRWISE_V1.messages("What is 2+2?", "four", "4")
    user = msgs[1]["content"]
    assert "random order" in user and "Length is not a merit" in user
    assert user.index("four") < user.index("=== RESPONSE B ===") < user.index("\n4\n")
    assert len(PAIRWISE_V1.hash) == 16
    other = JudgeTemplate("tether-pairwise-v2", PAIRWISE_V1.system, PAIRWISE_V1.user)
    assert other.hash != PAIRWISE_V1.hash


def test_base_url_forms():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(JudgeError, match="http"):
        chat_completions_url("localhost:8000")


def test_verdict_and_probability_from_top_logprobs():
    top = {"A": math.log(0.7), "B": math.log(0.2), " A": math.log(0.05)}
    with ChatServer(lambda body, n: Reply(body=completion("A", top))) as server:
        judge = _judge(server)
        assert isinstance(judge, Judge) and not judge.deterministic
        v = judge("q", "x", "y")
    # p(A) = (0.7 + 0.05) / (0.7 + 0.05 + 0.2)
    assert v.winner == "A" and v.p_a == pytest.approx(0.75 / 0.95)
    _, body = server.requests[0]
    assert body["model"] == "judge-model" and body["logprobs"] is True
    assert body["messages"][0]["role"] == "system" and "q" in body["messages"][1]["content"]


def test_unparseable_reply_is_unparsed_without_retry():
    with ChatServer(lambda body, n: Reply(body=completion("Hmm, hard to say."))) as server:
        v = _judge(server)("q", "x", "y")
    assert v.winner == "unparsed" and v.raw == "Hmm, hard to say." and v.error is None
    assert server.calls == 1


@pytest.mark.parametrize(
    ("failure", "expected_error"),
    [
        (Reply(status=429, body={"error": "slow down"}, headers={"Retry-After": "0"}), "HTTP 429"),
        (Reply(status=500, body="oops"), "HTTP 500"),
        (Reply(status=503, body=""), "HTTP 503"),
        (Reply(body="this is not json"), "malformed"),
        (Reply(body={"choices": []}), "malformed"),
        (Reply(body=completion("A"), delay=0.6), "timed out"),
    ],
)
def test_failures_are_retried_then_unparsed_never_a_loss(failure, expected_error):
    with ChatServer(lambda body, n: failure) as server:
        v = _judge(server, timeout=0.3)("q", "x", "y")
    assert v.winner == "unparsed" and expected_error in v.error
    assert server.calls == 3  # 1 + retries=2


def test_transient_failures_then_success():
    script = [Reply(status=429), Reply(status=502), Reply(body="{not json")]

    def reply(body, n):
        return script[n] if n < len(script) else Reply(body=completion("B"))

    with ChatServer(reply) as server:
        v = _judge(server, retries=3)("q", "x", "y")
    assert v.winner == "B" and server.calls == 4


def test_backoff_grows_exponentially():
    with ChatServer(lambda body, n: Reply(status=500)) as server:
        start = time.monotonic()
        _judge(server, backoff=0.05, retries=3)("q", "x", "y")
        elapsed = time.monotonic() - start
    # sleeps 0.05 + 0.1 + 0.2 = 0.35 s (plus up to 25% jitter)
    assert 0.35 <= elapsed < 1.5


def test_server_rejecting_logprobs_is_asked_again_without():
    def reply(body, n):
        if "logprobs" in body:
            return Reply(status=400, body={"error": "logprobs is not supported"})
        return Reply(body=completion("A"))

    with ChatServer(reply) as server:
        judge = _judge(server)
        v = judge("q", "x", "y")
        assert v.winner == "A" and v.p_a is None and server.calls == 2
        judge("q", "x", "z")  # remembered: no second rejected request
        assert server.calls == 3


def test_api_key_sent_in_header_and_never_leaked(monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("TETHER_TEST_JUDGE_KEY", secret)

    def reply(body, n):
        return Reply(status=401, body={"error": "bad key"}) if n == 1 else Reply(
            body=completion("A"))

    with ChatServer(reply) as server:
        judge = _judge(server, api_key_env="TETHER_TEST_JUDGE_KEY")
        v = judge("q", "x", "y")
        with pytest.raises(JudgeError) as e:
            judge("q", "x", "z")
    headers = {k.lower(): v for k, v in server.requests[0][0].items()}
    assert headers["authorization"] == f"Bearer {secret}"
    message = str(e.value)
    assert "401" in message and "TETHER_TEST_JUDGE_KEY" in message and "\n" not in message
    for text in (message, repr(judge), judge.identity, v.raw, str(v)):
        assert secret not in text


def test_request_budget_caps_calls():
    with ChatServer(lambda body, n: Reply(body=completion("A"))) as server:
        judge = _judge(server, request_budget=3, concurrency=2)
        verdicts = judge.judge_many([JudgeItem("q", str(i), "y") for i in range(5)])
    assert server.calls == 3 and judge.requests_made == 3
    assert sorted(v.winner for v in verdicts) == ["A", "A", "A", "unparsed", "unparsed"]
    assert all("budget" in v.error for v in verdicts if v.winner == "unparsed")


def test_concurrency_is_bounded_and_order_kept():
    def reply(body, n):
        answer = body["messages"][1]["content"].split("=== RESPONSE A ===\n")[1][0]
        return Reply(body=completion("A" if answer in "02468" else "B"), delay=0.15)

    with ChatServer(reply) as server:
        judge = _judge(server, concurrency=3)
        start = time.monotonic()
        verdicts = judge.judge_many([JudgeItem("q", str(i), "y") for i in range(9)])
        elapsed = time.monotonic() - start
    assert [v.winner for v in verdicts] == ["A", "B"] * 4 + ["A"]
    assert server.max_in_flight == 3
    assert elapsed < 9 * 0.15  # ran concurrently: about three rounds of 0.15 s


def test_estimate_counts_requests_and_tokens():
    judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", max_tokens=16, usd_per_million_tokens=2.0)
    items = [JudgeItem("p" * 40, "a" * 400, "b" * 400)] * 3
    est = judge.estimate(items)
    template_chars = sum(len(m["content"]) for m in PAIRWISE_V1.messages("", "", ""))
    per_item = (template_chars + 840) // 1  # characters per request
    assert est["requests"] == 3
    assert est["input_tokens"] == (3 * per_item) // 4 + 8 * 3
    assert est["output_tokens"] == 48
    assert est["usd"] == pytest.approx((est["input_tokens"] + 48) * 2.0 / 1e6)
