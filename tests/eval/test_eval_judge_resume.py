"""The judgment cache across runs: an unreadable reply is asked again (never cached for good),
and a killed ``tether eval`` has kept every verdict that arrived before the kill."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from eval_chat_server import ChatServer, Reply, completion

from tether.eval.cache import JudgmentCache
from tether.eval.judges.openai import OpenAIJudge
from tether.eval.judging import Pair, judge_pairs
from tether.model.tiny import tiny_llama

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _pairs(n: int) -> list[Pair]:
    return [Pair(i, i, f"prompt {i}", f"good answer {i}", f"poor answer {i}") for i in range(n)]


def _judge(server: ChatServer) -> OpenAIJudge:
    return OpenAIJudge(server.url, "m", backoff=0.001, retries=0, concurrency=2)


def test_unreadable_reply_is_asked_again_by_the_next_run(tmp_path):
    db = tmp_path / "judgments.sqlite"
    phase = {"reply": "I would rather not say."}
    with ChatServer(lambda body, n: Reply(body=completion(phase["reply"]))) as server:
        with JudgmentCache(db) as cache:
            first = judge_pairs(_judge(server), _pairs(3), cache, announce=lambda s: None)
            assert len(cache) == 0
        assert [j.outcome for j in first] == ["unparsed"] * 3 and server.calls == 6
        phase["reply"] = "A"  # the server was fixed
        lines: list[str] = []
        with JudgmentCache(db) as cache:
            second = judge_pairs(_judge(server), _pairs(3), cache, announce=lines.append)
        assert server.calls == 12 and "0 cached, 6 to ask" in lines[0]
    assert [j.outcome for j in second] == ["tie"] * 3  # "A" in both orders


def test_unparsed_rows_an_older_version_stored_are_asked_again(tmp_path):
    db = tmp_path / "judgments.sqlite"
    with ChatServer(lambda body, n: Reply(body=completion("A"))) as server:
        with JudgmentCache(db) as cache:
            judge_pairs(_judge(server), _pairs(2), cache, announce=lambda s: None)
        assert server.calls == 4
        with sqlite3.connect(db) as conn:  # what tether stored before: an unparsed verdict
            conn.execute("UPDATE judgments SET winner = 'unparsed' WHERE rowid = 1")
        lines: list[str] = []
        with JudgmentCache(db) as cache:
            judge_pairs(_judge(server), _pairs(2), cache, announce=lines.append)
        assert server.calls == 5 and "3 cached, 1 to ask" in lines[0]


@pytest.fixture
def eval_run(tmp_path, tokenizer) -> tuple[Path, Path]:
    """A run directory whose model differs from its reference, and held-out prompts."""
    ref = tmp_path / "reference"
    tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=0).save_pretrained(ref)
    tokenizer.save_pretrained(ref)
    run = tmp_path / "run"
    tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=1).save_pretrained(
        run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(ref)}))
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the cat {w} ?"}) + "\n"
                            for w in ("sat", "ran", "dog", "mat", "rug", "red")))
    return run, data


def _eval(run: Path, data: Path, server: ChatServer, cache: Path) -> subprocess.Popen:
    args = [f"model={run}", f"data={data}", "judge=openai", f"judge_url={server.url}",
            "judge_model=judge", "judge_backoff=0.001", "concurrency=1", "max_new_tokens=6",
            "implicit_reward=off", f"cache_dir={cache}", "progress=false", "device=cpu"]
    return subprocess.Popen([sys.executable, "-m", "tether", "--quiet", "eval", *args],
                            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_eval_keeps_every_verdict_that_arrived(eval_run, tmp_path):
    run, data = eval_run
    slow = {"from": 5}  # requests from the 6th on hang: the kill comes while one is in flight
    with ChatServer(lambda body, n: Reply(body=completion("A"),
                                          delay=5.0 if n >= slow["from"] else 0.0)) as server:
        proc = _eval(run, data, server, tmp_path / "cache")
        deadline = time.time() + 120
        while server.calls < 6:  # one at a time: 5 verdicts are in before the 6th is asked
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the judge was never asked 6 times"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        slow["from"] = 10**6
        asked_before = server.calls
        again = _eval(run, data, server, tmp_path / "cache")
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err[-3000:]
    plan = re.search(r"(\d+) judgments needed, (\d+) cached, (\d+) to ask", out)
    assert plan is not None, out
    needed, cached, to_ask = map(int, plan.groups())
    assert cached == 5 and to_ask == needed - 5  # only the request in flight is asked again
    assert server.calls - asked_before == to_ask
