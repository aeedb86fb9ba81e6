"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions, scripted by the test.

Not a mock of httpx: the judge talks TCP to it. ``reply(body, n)`` decides each answer (``n``
counts requests from 0), so a test can script 429s, 500s, slow replies and broken JSON.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON, str/bytes -> as is
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: str | None, top: dict[str, float] | None = None) -> dict:
    """A chat.completion object; ``top`` maps tokens to log-probs for the first token."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": content},
    }
    if top is not None:
        first = max(top, key=top.__getitem__)
        choice["logprobs"] = {
            "content": [
                {
                    "token": first,
                    "logprob": top[first],
                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()],
                }
            ]
        }
    return {"id": "x", "object": "chat.completion", "model": "judge", "choices": [choice]}


class ChatServer:
    def __init__(self, reply: Callable[[dict, int], Reply]) -> None:
        self.reply = reply
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with server._lock:
                    n = len(server.requests)
                    server.requests.append((dict(self.headers.items()), body))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    r = server.reply(body, n)
                    time.sleep(r.delay)
                    data = r.body
                    if isinstance(data, dict):
                        data = json.dumps(data)
                    payload = data.encode() if isinstance(data, str) else (data or b"")
                    self.send_response(r.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def calls(self) -> int:
        return len(self.requests)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
