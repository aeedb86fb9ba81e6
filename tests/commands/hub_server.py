"""A small Hugging Face Hub on 127.0.0.1: the part of its HTTP API that ``huggingface_hub``'s
``create_repo`` + ``upload_folder`` use, with every file small enough to go inline.

- ``POST /api/repos/create``: a repo (``{"url": ...}``; 409 when it exists, as the Hub does)
- ``POST /api/validate-yaml``: a model card's front matter is accepted
- ``POST /api/models/{repo}/preupload/{revision}``: every file ``regular`` (inline, no LFS)
- ``POST /api/models/{repo}/commit/{revision}``: NDJSON, a ``header`` line then one ``file``
  line per file with its base64 content; the files are kept in ``repos``

Every request's method, path and ``authorization`` header is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_REPO = r"(?P<repo>[^/]+/[^/]+)"


class HubServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.repos: dict[str, dict[str, Any]] = {}  # repo id -> {"private": ..., "files": {}}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                hub.requests.append({"method": "POST", "path": self.path,
                                     "authorization": self.headers.get("authorization"),
                                     "content_type": self.headers.get("content-type")})
                status, reply = hub.answer(self.path.split("?")[0], body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                hub.requests.append({"method": "GET", "path": self.path,
                                     "authorization": self.headers.get("authorization")})
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") \
                else req["name"]
            if repo in self.repos:
                return 409, {"error": "You already created this model repo",
                             "url": f"{self.url}/{repo}"}
            # huggingface_hub 1.x+ sends "visibility"; older clients sent "private"
            private = req["visibility"] == "private" if "visibility" in req \
                else req.get("private")
            self.repos[repo] = {"private": private, "files": {}}
            return 200, {"url": f"{self.url}/{repo}", "name": repo}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if m := re.fullmatch(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", path):
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False} for f in files]}
        if m := re.fullmatch(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", path):
            repo = self.repos.get(m["repo"])
            if repo is None:
                return 404, {"error": "Repository not found"}
            lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            for line in lines:
                if line["key"] == "file":
                    value = line["value"]
                    assert value["encoding"] == "base64"
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
            return 200, {"commitUrl": f"{self.url}/{m['repo']}/commit/{'0' * 40}",
                         "commitOid": "0" * 40, "pullRequestUrl": None}
        return 404, {"error": f"not served here: {path}"}

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
