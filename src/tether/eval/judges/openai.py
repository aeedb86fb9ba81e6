"""An LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Ollama, vLLM, llama.cpp's server, ``transformers serve`` and OpenAI itself speak this protocol.
The API key is read from a named environment variable and only ever put in the request header.
429, 5xx, timeouts, connection errors and malformed replies are retried with exponential
backoff (honouring ``Retry-After``); what still fails becomes an ``unparsed`` verdict with the
reason in ``error``, never a loss. 401/403/404 mean the judge is set up wrong and stop the run.
Requests run on a bounded thread pool and draw from a request budget.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any
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

if TYPE_CHECKING:
    from pathlib import Path

    from tether.eval.config import JudgeConfig

__all__ = ["OpenAIJudge", "chat_completions_url"]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_FATAL_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found"}
_MAX_SLEEP = 60.0


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``.../v1`` or the full endpoint -> the chat-completions endpoint."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise JudgeError(
            f"judge_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}"
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
        retries: int = 4,
        backoff: float = 1.0,
        concurrency: int = 4,
        request_budget: int | None = None,
        usd_per_million_tokens: float = 0.0,
        template: JudgeTemplate = PAIRWISE_V1,
    ) -> None:
        if not model:
            raise JudgeError("judge_model: required for judge=openai (the served model's name)")
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.logprobs = logprobs
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
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=timeout)

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

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP attempt -> the reply's JSON; _Failure to retry, JudgeError to stop."""
        try:
            response = self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise _Failure("timed out") from None
        except httpx.TransportError as e:
            raise _Failure(f"connection failed ({type(e).__name__})") from None
        status = response.status_code
        if status in _FATAL_STATUS:
            hint = f"; is the key in ${self.api_key_env}?" if status in (401, 403) else ""
            raise JudgeError(
                f"judge_url: {self.url} answered HTTP {status} ({_FATAL_STATUS[status]}) for "
                f"model {self.model!r}: {response.text[:160]!r}{hint}"
            )
        if status in _RETRY_STATUS or status >= 500:
            raise _Failure(f"HTTP {status}", response.headers.get("retry-after"))
        if status >= 400:
            raise ValueError(f"HTTP {status}: {response.text[:300]}")  # this item only
        try:
            data = response.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Failure(f"malformed reply {response.text[:120]!r}") from None
        if not isinstance(message, dict):
            raise _Failure(f"malformed reply {response.text[:120]!r}")
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
        retries=cfg.judge_retries,
        backoff=cfg.judge_backoff,
        concurrency=cfg.concurrency,
        request_budget=cfg.request_budget,
        usd_per_million_tokens=cfg.judge_usd_per_million_tokens,
    )
