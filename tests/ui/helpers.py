"""Helpers for the labeling page's tests: JSONL files, logins and a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[2] / "src"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def collect_rows(n: int) -> list[dict]:
    """n prompts, each with one (chosen, rejected) pair of distinct answers."""
    return [
        {"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
        for i in range(n)
    ]


class LiveServer:
    """``python -m tether label`` in a subprocess on 127.0.0.1 with a free port."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "label", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.url = self._read_url()

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"server exited before printing its URL: {err}")
            if " at http://" in line:
                url = line.rsplit(" at ", 1)[1].strip()
                self._wait_ready(url, deadline)
                return url
        raise RuntimeError("server did not print its URL within 60 s")

    @staticmethod
    def _wait_ready(url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "healthz", timeout=2).text == "ok":
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"{url} never answered /healthz")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()



def api_login(client: httpx.Client, name: str) -> str:
    """Log in through the form endpoint; returns the session's CSRF token."""
    r = client.post("/login", data={"name": name})
    assert r.status_code == 303, r.text
    return str(client.get("/api/item").json()["csrf"])
