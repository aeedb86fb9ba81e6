"""An LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Ollama, vLLM, llama.cpp's server, ``transformers serve`` and OpenAI itself speak this protocol.
The API key is read from a named environment variable and only ever put in the request header;
``user:password@`` in the URL becomes Basic auth and leaves the URL. Everything the server sends
back has both redacted before tether stores or shows it (a server may quote the key).
A reply is read as a stream, at most ``max_response_bytes`` of it and within ``timeout`` seconds
in all, so a server that never stops sending cannot exhaust memory or hold a worker forever.
429, 5xx, timeouts, connection errors and malformed replies are retried with exponential
backoff (honouring ``Retry-After``); what still fails, and a reply over the size cap, becomes an
``unparsed`` verdict with the reason in ``error``, never a loss. 401/403/404 mean the judge is
set up wrong and stop the run. Requests run on a bounded thread pool and draw from a request
budget.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from tether.errors import JudgeError
from tether.eval.judges.base import JudgeItem, Verdict
from tether.eval.judges.registry import register_judge
from tether.eval.judges.template import (
    PAIRWISE_V1,
    JudgeTemplate,
    p_a_from_logprobs,
    parse_verdict,
)
from tether.eval.redact import Redactor, basic_token, redact_url, split_userinfo

if TYPE_CHECKING:
    from pathlib import Path

    from tether.eval.config import JudgeConfig

__all__ = ["OpenAIJudge", "chat_completions_url"]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_FATAL_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found"}
_MAX_SLEEP = 60.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # a verdict is a few hundred bytes; error pages a few KB

# httpx logs every request's URL at INFO, the level tether's CLI logs at: one line per judge
# call is noise, and a URL is the one place a credential could still hide (a query string).
logging.getLogger("httpx").setLevel(logging.WARNING)


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``.../v1`` or the full endpoint -> the chat-completions endpoint."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise JudgeError(
            "judge_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got "
            f"{redact_url(base_url)!r}"
        )
    url = base_url.strip().rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class _Budget:
    """A thread-safe count of the HTTP requests still allowed (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True


class _Failure(Exception):
    """One attempt failed in a way worth retrying."""


class _Reply(NamedTuple):
    status: int
    headers: httpx.Headers
    text: str  # the body as read (possibly cut off), credentials redacted
    cut: str | None  # why the body was not read to its end: "size", "time", "encoding"


def _decoder(encoding: str) -> Callable[[bytes, int], bytes] | None:
    """``decode(chunk, max_out)`` for a Content-Encoding; None for one we cannot bound.

    Decoding is done here, not by httpx, so a small compressed chunk cannot expand past the
    size cap (a compression bomb): zlib stops at ``max_out`` bytes.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return lambda chunk, max_out: chunk
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # | 32: gzip or zlib header
        return lambda chunk, max_out: inflate.decompress(chunk, max_out)
    return None


def _read_capped(
    response: httpx.Response, limit: int, deadline: float
) -> tuple[bytearray, str | None]:
    """At most ``limit`` bytes of the (decoded) body, read until ``deadline``; and why it was
    cut off, if it was. One growing buffer: memory stays near ``limit``, never a multiple."""
    body = bytearray()
    decode = _decoder(response.headers.get("content-encoding", ""))
    if decode is None:
        return body, "encoding"
    try:
        for raw in response.iter_raw():
            body += decode(raw, limit - len(body) + 1)
            if len(body) > limit:
                del body[limit:]
                return body, "size"
            if time.monotonic() > deadline:
                return body, "time"
    except zlib.error:
        return body, "encoding"
    return body, None


class OpenAIJudge:
    """``judge=openai judge_url=... judge_model=...``; sees each pair in both orders."""

    deterministic = False

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 16,
        logprobs: bool = True,
        timeout: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        retries: int = 4,
        backoff: float = 1.0,
        concurrency: int = 4,
        request_budget: int | None = None,
        usd_per_million_tokens: float = 0.0,
        template: JudgeTemplate = PAIRWISE_V1,
    ) -> None:
        if not model:
            raise JudgeError("judge_model: required for judge=openai (the served model's name)")
        url, user, password = split_userinfo(base_url.strip())
        self.url = chat_completions_url(url)  # no credentials: it is shown, logged and cached
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.retries = retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self.budget = _Budget(request_budget)
        self.template = template
        self.usd_per_million_tokens = usd_per_million_tokens
        self.template_hash = template.hash
        # What changes the verdicts: model, server, sampling, room to answer (the template is
        # keyed separately by its hash).
        self.identity = (
            f"openai:{model}@{self.url}|temperature={temperature}|max_tokens={max_tokens}"
        )
        # identity: _read_capped decodes gzip/deflate itself, boundedly, and nothing else.
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Credentials in the URL become Basic auth (as httpx would do) but leave the URL.
        auth = httpx.BasicAuth(user, password) if user or password else None
        self._redact = Redactor(
            key, user, password, *([basic_token(user, password)] if auth is not None else [])
        )
        self._client = httpx.Client(headers=headers, timeout=timeout, auth=auth)

    def __repr__(self) -> str:  # never the headers: they hold the key
        return f"OpenAIJudge(url={self.url!r}, model={self.model!r})"

    def close(self) -> None:
        self._client.close()

    @property
    def requests_made(self) -> int:
        return self.budget.used

    def payload(self, item: JudgeItem) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.template.messages(item.prompt, item.answer_a, item.answer_b),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 5
        return body

    def _exchange(self, body: dict[str, Any]) -> _Reply:
        """POST once and read the reply within the size and time caps."""
        deadline = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", self.url, json=body) as response:
                data, cut = _read_capped(response, self.max_response_bytes, deadline)
        except httpx.TimeoutException:
            raise _Failure("timed out") from None
        except httpx.TransportError as e:
            raise _Failure(f"connection failed ({type(e).__name__})") from None
        text = self._redact(data.decode("utf-8", errors="replace"))
        return _Reply(response.status_code, response.headers, text, cut)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP attempt -> the reply's JSON; _Failure to retry, ValueError to give up on
        this item, JudgeError to stop."""
        reply = self._exchange(body)
        status = reply.status
        if status in _FATAL_STATUS:
            hint = f"; is the key in ${self.api_key_env}?" if status in (401, 403) else ""
            raise JudgeError(
                f"judge_url: {self.url} answered HTTP {status} ({_FATAL_STATUS[status]}) for "
                f"model {self.model!r}: {reply.text[:160]!r}{hint}"
            )
        if status in _RETRY_STATUS or status >= 500:
            raise _Failure(f"HTTP {status}", reply.headers.get("retry-after"))
        if status >= 400:
            raise ValueError(f"HTTP {status}: {reply.text[:300]}")  # this item only
        if reply.cut == "size":  # no retry: a server that sent this much will again
            raise ValueError(
                f"reply larger than judge_max_response_bytes={self.max_response_bytes}; "
                "not read further"
            )
        if reply.cut == "time":
            raise _Failure(f"reply still arriving after judge_timeout={self.timeout:g}s")
        if reply.cut == "encoding":
            encoding = reply.headers.get("content-encoding", "")
            raise _Failure(f"reply in a broken or unsupported Content-Encoding {encoding!r}")
        try:
            data = self._redact.walk(json.loads(reply.text))
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Failure(f"malformed reply {reply.text[:120]!r}") from None
        if not isinstance(message, dict):
            raise _Failure(f"malformed reply {reply.text[:120]!r}")
        return data

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * (2**attempt) * (1 + 0.25 * random.random())
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date instead of seconds: ignore
                delay = max(delay, float(retry_after))
        time.sleep(min(delay, _MAX_SLEEP))

    def __call__(
        self, prompt: str, answer_a: str, answer_b: str, row: dict | None = None
    ) -> Verdict:
        data, error = self.request(self.payload(JudgeItem(prompt, answer_a, answer_b, row)))
        if data is None:
            return Verdict("unparsed", raw=error if error.startswith("HTTP") else "", error=error)
        return self._verdict(data)

    def request(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """POST a chat-completions body with retries -> (reply JSON, "") or (None, why not).

        Backs off on 429, 5xx, timeouts and malformed replies; respects the request budget;
        a server that rejects log-probs is asked again without them. ``JudgeError`` (bad key,
        unknown model) is raised: no retry can fix it.
        """
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if not self.budget.take():
                return None, f"request budget of {self.budget.limit} spent"
            try:
                return self._post(body), ""
            except _Failure as e:
                last = str(e.args[0])
                if attempt < self.retries:
                    self._sleep(attempt, e.args[1] if len(e.args) > 1 else None)
            except ValueError as e:
                if body.get("logprobs") and "logprob" in str(e).lower():
                    # A server that rejects log-probs: ask again without, now and from now on.
                    self.logprobs = False
                    body = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
                    continue
                return None, str(e)
        return None, f"gave up after {self.retries + 1} attempts: {last}"

    @staticmethod
    def _verdict(data: dict[str, Any]) -> Verdict:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") or message.get("refusal") or ""
        if not isinstance(text, str):
            text = str(text)
        winner = parse_verdict(text)
        if winner is None:
            return Verdict("unparsed", raw=text)
        logprobs = choice.get("logprobs") or {}
        p_a = p_a_from_logprobs(logprobs.get("content") if isinstance(logprobs, dict) else None)
        return Verdict(winner, p_a=p_a, raw=text)

    def judge_many(
        self, items: Sequence[JudgeItem],
        on_verdict: Callable[[int, Verdict], None] | None = None,
    ) -> list[Verdict]:
        """Verdicts in the order of ``items``, ``concurrency`` requests at a time;
        ``on_verdict(i, verdict)`` runs (in this thread) as each one arrives."""
        done = on_verdict or (lambda i, v: None)
        if self.concurrency == 1 or len(items) <= 1:
            out = []
            for k, i in enumerate(items):
                out.append(self(i.prompt, i.answer_a, i.answer_b, i.row))
                done(k, out[-1])
            return out
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
        futures = {pool.submit(self, i.prompt, i.answer_a, i.answer_b, i.row): k
                   for k, i in enumerate(items)}
        verdicts: dict[int, Verdict] = {}
        try:
            for f in as_completed(futures):
                verdicts[futures[f]] = f.result()
                done(futures[f], verdicts[futures[f]])
            return [verdicts[k] for k in range(len(items))]
        finally:
            # A JudgeError (bad key, unknown model) stops the queued requests too.
            pool.shutdown(wait=True, cancel_futures=True)

    def estimate(self, items: Sequence[JudgeItem]) -> dict:
        """Requests, tokens and (given a price) dollars the items will cost (~4 chars a token)."""
        chars = sum(
            len(m["content"])
            for i in items
            for m in self.template.messages(i.prompt, i.answer_a, i.answer_b)
        )
        input_tokens = chars // 4 + 8 * len(items)
        output_tokens = self.max_tokens * len(items)
        price = self.usd_per_million_tokens
        return {
            "requests": len(items),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "usd": (input_tokens + output_tokens) * price / 1e6 if price else None,
        }


@register_judge("openai", requires={"judge_url": ", e.g. http://127.0.0.1:8000/v1",
                                    "judge_model": " (the served model's name)"})
def _build(cfg: JudgeConfig, memo_dir: Path | None) -> OpenAIJudge:
    return OpenAIJudge(
        cfg.judge_url,
        cfg.judge_model,
        api_key_env=cfg.judge_api_key_env,
        temperature=cfg.judge_temperature,
        max_tokens=cfg.judge_max_tokens,
        logprobs=cfg.judge_logprobs,
        timeout=cfg.judge_timeout,
        max_response_bytes=cfg.judge_max_response_bytes,
        retries=cfg.judge_retries,
        backoff=cfg.judge_backoff,
        concurrency=cfg.concurrency,
        request_budget=cfg.request_budget,
        usd_per_million_tokens=cfg.judge_usd_per_million_tokens,
    )
