"""Keep a judge's credentials out of everything tether prints, writes or caches.

The API key and any ``user:password@`` in ``judge_url`` can come back inside text that tether
stores: a server that quotes the ``Authorization`` header in a 401 body, a model that repeats
what it was sent. ``Redactor`` replaces every spelling of a secret that can be predicted (as
given, URL-encoded, JSON-escaped, and the base64 of ``user:password`` that Basic auth sends)
with ``[redacted]``. ``split_userinfo`` takes the credentials out of a URL, so the URL that is
shown, logged and used in cache keys never holds them.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = ["MIN_SECRET", "REDACTED", "Redactor", "basic_token", "redact_url", "split_userinfo"]

REDACTED = "[redacted]"
# Shorter "secrets" (a placeholder key such as "x" for a local server) are not secret, and
# replacing them would mangle ordinary text, verdicts included ("A").
MIN_SECRET = 4
# scheme://userinfo@ : everything up to the last "@" before the path, as URL parsers read it
_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")


def split_userinfo(url: str) -> tuple[str, str, str]:
    """``http://user:pw@host/v1`` -> (``http://host/v1``, ``user``, ``pw``), percent-decoded."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, "", ""
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), unquote(user), unquote(password)


def redact_url(url: str) -> str:
    """The URL with any ``user:password@`` shown as ``***@`` (also for URLs that do not parse)."""
    return _USERINFO.sub("***@", url)


def basic_token(user: str, password: str) -> str:
    """What HTTP Basic auth puts on the wire for these credentials."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Redactor:
    """``redactor(text)`` and ``redactor.walk(json_value)`` with the secrets replaced."""

    def __init__(self, *secrets: str) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET:
                forms |= {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
        # Longest first, so a secret that contains another is not left half-replaced.
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return text

    def walk(self, value: Any) -> Any:
        """Every string inside a parsed JSON value (keys included), redacted."""
        if not self._forms:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, dict):
            return {self(str(k)): self.walk(v) for k, v in value.items()}
        return value
