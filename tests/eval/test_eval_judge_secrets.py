"""The judge's API key and the user:password of judge_url reach no output (issue 14).

``tether eval`` runs as a real process against a real server on 127.0.0.1 that echoes the
credentials back: in a 401 body, and inside its verdicts. Every file tether wrote (eval/, the
SQLite cache), stdout and stderr are then searched for every spelling of them.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from eval_chat_server import ChatServer, Reply, completion

from tether import cli
from tether.errors import JudgeError
from tether.eval.judges.openai import OpenAIJudge, chat_completions_url
from tether.model.tiny import tiny_llama

SRC = Path(__file__).resolve().parents[2] / "src"
KEY_ENV = "TETHER_TEST_ECHO_KEY"
KEY = "sk-echo-0123456789abcdef"
USER, PASSWORD = "judge-user", "pa55@w0rd/x"
URL_PASSWORD = quote(PASSWORD, safe="")  # "@" and "/" must be %-encoded inside a URL
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = [KEY, USER, PASSWORD, URL_PASSWORD, BASIC]


def _leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


class Echo:
    """Replies that quote the credentials: even calls with a verdict, odd ones without.
    ``login``: also quote the URL's user and password (when the judge was given them)."""

    def __init__(self, status: int = 200, login: bool = True) -> None:
        self.status = status
        self.login = login
        self.server: ChatServer | None = None

    def __call__(self, body: dict, n: int) -> Reply:
        assert self.server is not None
        sent = {k.lower(): v for k, v in self.server.requests[n][0].items()}.get("authorization")
        echo = f"you sent <{sent}>; key {KEY}"
        echo += f"; login {USER}:{PASSWORD} ({URL_PASSWORD})" if self.login else ""
        if self.status != 200:
            return Reply(status=self.status, body={"error": {"message": f"invalid: {echo}"}})
        return Reply(body=completion(f"Verdict: A. {echo}" if n % 2 == 0 else f"Hmm. {echo}"))

    def serve(self) -> ChatServer:
        self.server = ChatServer(self)
        return self.server


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("secrets")
    for name, seed in (("reference", 0), ("model", 1)):
        tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=seed).save_pretrained(
            root / name)
        tokenizer.save_pretrained(root / name)
    (root / "heldout.jsonl").write_text("".join(
        json.dumps({"prompt": f"the cat {w} ?"}) + "\n" for w in ("sat", "ran", "dog", "mat")))
    return root


def _eval_args(run_dir: Path, out: Path, judge_url: str) -> list[str]:
    return ["eval", f"model={run_dir / 'model'}", f"reference={run_dir / 'reference'}",
            f"data={run_dir / 'heldout.jsonl'}", "judge=openai", f"judge_url={judge_url}",
            "judge_model=m", f"judge_api_key_env={KEY_ENV}", "judge_backoff=0.001",
            "max_new_tokens=6", "implicit_reward=off", "progress=false", f"output_dir={out / 'o'}",
            f"cache_dir={out / 'c'}"]


def _files_leaking(root: Path) -> dict[str, list[str]]:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    return {str(p): found for p in files if (found := _leaks(p.read_bytes()))}


def test_echoed_credentials_reach_no_file_cache_or_stream(run_dir: Path, tmp_path: Path) -> None:
    echo = Echo()
    with echo.serve() as server:
        host = server.url.split("//", 1)[1]
        # A process of its own: what logging or a library prints reaches its real stderr.
        done = subprocess.run(
            [sys.executable, "-m", "tether",
             *_eval_args(run_dir, tmp_path, f"http://{USER}:{URL_PASSWORD}@{host}")],
            env={**os.environ, "PYTHONPATH": str(SRC), KEY_ENV: KEY},
            capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert server.calls > 0
    sent = {k.lower(): v for k, v in server.requests[0][0].items()}["authorization"]
    assert sent == f"Basic {BASIC}"  # the credentials still work; they are only kept out of sight
    assert _leaks(done.stdout) == [] and _leaks(done.stderr) == []
    assert _files_leaking(tmp_path) == {}
    # The echoes did travel through every path: parsed verdicts, unparsed ones, the cache.
    eval_dir = tmp_path / "o" / "eval"
    raws = [json.loads(x)["raw"] for x in (eval_dir / "judgments.jsonl").read_text().splitlines()]
    assert any(r.startswith("Verdict: A. you sent <Basic [redacted]>; key [redacted]; login "
                            "[redacted]:[redacted] ([redacted])") for r in raws)
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["unparsed"] > 0 and "[redacted]" in results["unparsed_examples"][0]
    assert results["judge"].startswith(f"openai:m@http://{host}/chat/completions")
    assert "judge_url: http://***@127.0.0.1:" in (eval_dir / "config.yaml").read_text()
    with sqlite3.connect(tmp_path / "c" / "judgments.sqlite") as db:
        cached = [r for (r,) in db.execute("SELECT raw FROM judgments")]
    assert cached and all("[redacted]" in r for r in cached)


def test_a_401_body_quoting_the_key_is_reported_without_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with Echo(401, login=False).serve() as server:
        code = cli.main(_eval_args(run_dir, tmp_path, server.url))
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("tether eval: error: judge_url: ") and err.count("\n") == 1
    assert "answered HTTP 401 (unauthorized)" in err
    assert "you sent <Bearer [redacted]>; key [redacted]" in err
    assert f"is the key in ${KEY_ENV}?" in err
    assert _leaks(out) == [] and _leaks(err) == []
    assert _files_leaking(tmp_path) == {}


def test_judge_keeps_credentials_out_of_what_it_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with Echo().serve() as server:
        host = server.url.split("//", 1)[1]
        judge = OpenAIJudge(f"http://{USER}:{URL_PASSWORD}@{host}", "m",
                            api_key_env=KEY_ENV, retries=0)
        verdicts = [judge("q", "x", "y"), judge("q", "x", "z")]
    with Echo(403, login=False).serve() as server, pytest.raises(JudgeError) as refused:
        OpenAIJudge(server.url, "m", api_key_env=KEY_ENV, retries=0)("q", "x", "y")
    assert [v.winner for v in verdicts] == ["A", "unparsed"]
    assert "you sent <Bearer [redacted]>; key [redacted]" in str(refused.value)
    for text in (judge.url, judge.identity, repr(judge), str(refused.value),
                 *(str(v) for v in verdicts)):
        assert _leaks(text) == [], text
    with pytest.raises(JudgeError, match=r"got 'ftp://h/v1'"):
        OpenAIJudge(f"ftp://{USER}:{URL_PASSWORD}@h/v1", "m")
    with pytest.raises(JudgeError, match=r"got 'ftp://\*\*\*@h/v1'"):
        chat_completions_url(f"ftp://{USER}:{URL_PASSWORD}@h/v1")
