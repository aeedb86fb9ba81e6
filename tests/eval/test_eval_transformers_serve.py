"""The OpenAI-compatible judge end to end against `transformers serve`, a real peer server.

The server runs offline on 127.0.0.1 and loads tiny local models by path (no hub). One model is
random (its verdicts are noise: the test checks the protocol round trip, parsing and
bookkeeping); the other is wired to always answer "A", so the position bias is known exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from tether.eval.cache import JudgmentCache
from tether.eval.judges.openai import OpenAIJudge
from tether.eval.judges.template import PAIRWISE_V1, parse_verdict
from tether.eval.judging import Pair, judge_pairs, outcome_of
from tether.eval.stats import count_outcomes, order_agreement
from tether.model.tiny import tiny_llama, train_tokenizer

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _save_models(root: Path) -> tuple[str, str]:
    texts = [m["content"] for m in PAIRWISE_V1.messages("Name a colour.", "Red.", "Blue.")]
    tok = train_tokenizer(texts * 4 + ["A B tie"], vocab_size=400, chat_template=True)
    noise = tiny_llama(tok, hidden=32, layers=1, heads=2, kv_heads=1, max_positions=4096)
    # "Always A": every token embeds to the same vector and no layer writes to the residual
    # stream, so the last hidden state is constant; only the row of "A" in the LM head sees it.
    fixed = tiny_llama(tok, hidden=32, layers=1, heads=2, kv_heads=1, max_positions=4096, seed=1)
    with torch.no_grad():
        fixed.model.embed_tokens.weight.fill_(1.0)
        for layer in fixed.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        fixed.lm_head.weight.zero_()
        fixed.lm_head.weight[tok.convert_tokens_to_ids("A")] = 10.0
    paths = []
    for name, model in (("noise", noise), ("always_a", fixed)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    pytest.importorskip("openai", reason="transformers serve needs transformers[serving]")
    cli = Path(sys.executable).parent / "transformers"
    if not cli.exists():
        pytest.skip(f"no transformers CLI next to {sys.executable}")
    root = tmp_path_factory.mktemp("serve")
    models = _save_models(root)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "serve.log").read_text()[-2000:]
                pytest.fail(f"transformers serve did not come up (exit {proc.poll()}):\n{tail}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield base + "/v1", models
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _pairs() -> list[Pair]:
    return [
        Pair(0, 0, "Name a colour.", "Red.", "Blue."),
        Pair(1, 1, "Name a fruit.", "An apple.", "A pear, which is a fruit."),
        Pair(2, 2, "Say hi.", "Hi!", "Hello there."),
        Pair(3, 3, "Same?", "Yes.", "Yes."),  # identical: no request
    ]


def test_round_trip_with_a_random_model(served, tmp_path):
    url, (noise, _) = served
    judge = OpenAIJudge(url, noise, max_tokens=6, timeout=60, retries=2, backoff=0.1,
                        concurrency=2)
    with JudgmentCache(tmp_path / "j.sqlite") as cache:
        out = judge_pairs(judge, _pairs(), cache, announce=lambda s: None)
    # Every request got a well-formed chat.completion the first time: no retry, no error.
    assert judge.requests_made == 6
    calls = [c for j in out for c in j.calls]
    assert all(c.verdict.error is None for c in calls)
    for c in calls[:-1]:  # the last call is the identical pair's free tie
        assert c.source == "judge"
        assert c.verdict.winner == (parse_verdict(c.verdict.raw) or "unparsed")
    c = count_outcomes([j.outcome for j in out])
    assert c.total == 4 and c.wins + c.ties + c.losses + c.unparsed == 4 and c.ties >= 1
    # A second judge over the same cache reads every parsed verdict without a request; only
    # the replies that could not be parsed are asked again (they are never cached).
    parsed = sum(c.verdict.winner != "unparsed" for c in calls[:-1])
    again = OpenAIJudge(url, noise, max_tokens=6)
    with JudgmentCache(tmp_path / "j.sqlite") as cache:
        out2 = judge_pairs(again, _pairs(), cache, announce=lambda s: None)
    assert again.requests_made == 6 - parsed
    cached = [c.verdict.raw for j in out2 for c in j.calls if c.verdict.winner != "unparsed"]
    assert len(cached) >= parsed


def test_position_bias_of_an_always_a_model(served, tmp_path):
    url, (_, always_a) = served
    judge = OpenAIJudge(url, always_a, max_tokens=1, timeout=60, retries=2, backoff=0.1)
    out = judge_pairs(judge, _pairs()[:3], JudgmentCache(None), announce=lambda s: None)
    assert judge.requests_made == 6
    assert [c.verdict.raw for j in out for c in j.calls] == ["A"] * 6
    assert [j.outcome for j in out] == ["tie"] * 3  # A in both orders: the orders disagree
    orders = [tuple(outcome_of(c.order, c.verdict.winner) for c in j.calls) for j in out]
    agreement = order_agreement(orders)
    assert agreement["order_flip_rate"] == 1.0 and agreement["first_position_rate"] == 1.0
