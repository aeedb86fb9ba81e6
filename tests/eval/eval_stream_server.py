"""A real HTTP server on 127.0.0.1 whose 200 replies are written by a generator, chunk by chunk.

For judges that misbehave on the wire: a body that never ends, one that drips a byte at a time,
a compression bomb. It counts the bytes it managed to send, which bounds what the client can
have read. Every body stops at ``safety_bytes`` or ``safety_s``, so a client without limits
fails its test instead of eating the machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StreamServer:
    def __init__(
        self,
        chunks: Callable[[], Iterator[bytes]],
        headers: dict[str, str] | None = None,
        safety_bytes: int = 64 * 1024 * 1024,
        safety_s: float = 10.0,
    ) -> None:
        self.requests = 0
        self.sent = 0  # body bytes handed to the socket, all requests together
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when we close

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                sent, start = 0, time.monotonic()
                try:
                    for chunk in chunks():
                        if sent >= safety_bytes or time.monotonic() - start > safety_s:
                            break
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        sent += len(chunk)
                        with server._lock:
                            server.sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what these tests want

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self) -> StreamServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def endless() -> Iterator[bytes]:
    """A JSON reply that starts well and never ends: 64 KiB at a time."""
    yield b'{"choices": [{"message": {"role": "assistant", "content": "A'
    block = b"A" * 65536
    while True:
        yield block


def drip(every_s: float = 0.05) -> Callable[[], Iterator[bytes]]:
    """One byte every ``every_s`` seconds: each read is quick, the whole reply never ends."""

    def chunks() -> Iterator[bytes]:
        yield b'{"choices": [{"message": {"content": "'
        while True:
            time.sleep(every_s)
            yield b"A"

    return chunks
