"""A judge server that never stops sending cannot exhaust memory or time (issue 14).

Real servers on 127.0.0.1 stream the bodies; memory is measured with tracemalloc (every bytes
object the client holds is counted) and by the bytes the server managed to send.
"""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from eval_stream_server import StreamServer, drip, endless

from tether.config import build_config
from tether.errors import JudgeError
from tether.eval.config import EvalConfig
from tether.eval.evaluate import evaluate
from tether.eval.judges.base import Verdict
from tether.eval.judges.openai import OpenAIJudge
from tether.model.tiny import tiny_llama

MIB = 1024 * 1024


def _judged_with_peak(judge: OpenAIJudge) -> tuple[Verdict, int, float]:
    """(verdict, peak bytes allocated while judging, seconds) for one request."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        verdict = judge("q", "x", "y")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        judge.close()
    return verdict, peak, time.monotonic() - start


def test_endless_body_is_cut_at_the_size_cap_and_unparsed() -> None:
    with StreamServer(endless) as server:
        judge = OpenAIJudge(server.url, "m", max_response_bytes=MIB, retries=2, backoff=0.001,
                            timeout=5.0)
        verdict, peak, seconds = _judged_with_peak(judge)
    assert verdict.winner == "unparsed" and verdict.raw == ""
    assert verdict.error == "reply larger than judge_max_response_bytes=1048576; not read further"
    assert server.requests == 1  # a size overrun is not retried: the server would do it again
    assert peak < 3 * MIB  # the capped body and its text; without the cap: 256 MiB
    assert server.sent < 16 * MIB  # 1 MiB read + what the socket buffers held
    assert seconds < 5


def test_compression_bomb_is_cut_while_inflating() -> None:
    bomb = gzip.compress(b"A" * (64 * MIB), compresslevel=9)  # ~64 KiB on the wire

    def chunks() -> Iterator[bytes]:
        yield bomb

    # The judge asks for identity; a hostile server sends gzip anyway.
    with StreamServer(chunks, headers={"Content-Encoding": "gzip"}) as server:
        judge = OpenAIJudge(server.url, "m", max_response_bytes=MIB, retries=0)
        verdict, peak, _ = _judged_with_peak(judge)
    assert verdict.winner == "unparsed" and "judge_max_response_bytes" in str(verdict.error)
    assert len(bomb) < MIB and peak < 3 * MIB


def test_gzip_reply_within_the_cap_is_read() -> None:
    reply = {"choices": [{"message": {"role": "assistant", "content": "B"}}]}
    body = gzip.compress(json.dumps(reply).encode())

    def chunks() -> Iterator[bytes]:
        yield body[:10]  # split mid-stream: the inflater carries state across chunks
        yield body[10:]

    with StreamServer(chunks, headers={"Content-Encoding": "gzip"}) as server:
        verdict = OpenAIJudge(server.url, "m", retries=0)("q", "x", "y")
    assert verdict.winner == "B"


def test_a_reply_that_drips_forever_is_cut_at_the_total_timeout() -> None:
    with StreamServer(drip(0.05)) as server:
        judge = OpenAIJudge(server.url, "m", timeout=1.0, retries=1, backoff=0.001)
        start = time.monotonic()
        verdict = judge("q", "x", "y")
        seconds = time.monotonic() - start
    # each byte arrives well within the 1 s read timeout; only a total deadline ends it
    assert verdict.winner == "unparsed"
    assert verdict.error == (
        "gave up after 2 attempts: reply still arriving after judge_timeout=1s")
    assert server.requests == 2 and 2.0 <= seconds < 4.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A trained model, its reference and held-out prompts on disk, as tether eval reads them."""
    root = tmp_path_factory.mktemp("limits")
    for name, seed in (("reference", 0), ("run/model", 1)):
        tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=seed).save_pretrained(
            root / name)
        tokenizer.save_pretrained(root / name)
    data = root / "heldout.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the cat {w} ?"}) + "\n"
                            for w in ("sat", "ran", "dog")))
    return root


def test_evaluate_against_an_endless_judge_finishes_with_no_verdicts(run_dir, tmp_path):
    """Every reply is cut at the cap: each call is unparsed with the reason, one request each,
    bounded bytes; with no verdict at all the evaluation says so (exit 2 on the CLI) instead of
    a 50 % made of the identical pairs' ties."""
    with StreamServer(endless) as server, pytest.raises(JudgeError) as e:
        evaluate(build_config(EvalConfig, {
            "model": str(run_dir / "run" / "model"), "reference": str(run_dir / "reference"),
            "data": str(run_dir / "heldout.jsonl"), "judge": "openai", "judge_url": server.url,
            "judge_model": "m", "judge_max_response_bytes": 500_000, "judge_timeout": 5.0,
            "judge_backoff": 0.001, "max_new_tokens": 6, "progress": False,
            "output_dir": str(tmp_path / "o"), "cache_dir": str(tmp_path / "c"),
        }))
    reason = "reply larger than judge_max_response_bytes=500000; not read further"
    assert "no verdicts" in str(e.value) and reason in str(e.value)
    assert server.requests >= 1  # one request per call, no retries of a reply too big
    assert server.sent < server.requests * 16 * MIB  # bounded, not 64 MiB per request
    assert "judge_max_response_bytes: 500000" in (tmp_path / "o" / "eval" / "config.yaml"
                                                  ).read_text()
