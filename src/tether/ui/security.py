"""Request checks shared by every route of the labeling page.

- Host: when the server listens on loopback only, requests must name it by a loopback IP address
  (``127.0.0.1``, ``[::1]``, ...), the exact name ``localhost``, the ``--host`` name it was
  started with, or a name the user listed (``--allowed-host``). A web page that rebinds its own
  DNS name to 127.0.0.1 sends its own name (``127.attacker.example``, ``127.0.0.1.nip.io``) and
  is refused (DNS rebinding). Names are never matched by prefix: only a parsed IP address says
  "loopback".
- Origin: state-changing requests (POST) coming from another site are refused. Browsers send
  ``Origin`` (and ``Sec-Fetch-Site``) on every POST; a request with neither is not a browser's
  cross-site request, and still needs the session's CSRF token, which another site cannot read.
- Headers: a strict Content-Security-Policy (scripts only from this server, no inline script),
  no framing, no MIME sniffing. Model text is escaped by the templates; the CSP is the second
  line of defence.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

__all__ = [
    "LOOPBACK",
    "SecurityPolicy",
    "host_name",
    "is_loopback",
    "is_loopback_ip",
    "tokens_match",
]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on same-origin
    # form posts, which the origin check would have to refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback_ip(host: str) -> bool:
    """True only for an IP address literal on loopback (127.0.0.0/8, ::1, ::ffff:127.x.y.z)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name: what it resolves to is up to whoever runs its DNS
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def is_loopback(host: str) -> bool:
    """A loopback IP literal or the exact name ``localhost``; never a name that merely starts
    with ``127.`` (``127.attacker.example`` resolves wherever its owner likes)."""
    return host.lower() == "localhost" or is_loopback_ip(host)


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal a token."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header, lowercased, without port or IPv6 brackets."""
    host_header = host_header.strip().lower()
    if host_header.startswith("["):
        end = host_header.find("]")
        return host_header[1:end] if end > 0 else ""
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class SecurityPolicy:
    """``allowed_hosts``: the Host names accepted, lowercased, IPv6 without brackets; when it
    holds a loopback name, every loopback IP literal is accepted too. None accepts any Host (the
    server was bound to a public address, and the access token guards it)."""

    def __init__(self, allowed_hosts: frozenset[str] | None) -> None:
        self.allowed_hosts = allowed_hosts

    def host_ok(self, request: Request) -> bool:
        if self.allowed_hosts is None:
            return True
        name = host_name(request.headers.get("host", ""))
        return name in self.allowed_hosts or (
            is_loopback_ip(name) and bool(self.allowed_hosts & LOOPBACK)
        )

    @staticmethod
    def same_origin(request: Request) -> bool:
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            if referer is None:
                return True
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response: Response
        if not self.host_ok(request):
            response = PlainTextResponse("unknown Host header", status_code=400)
        elif request.method not in _SAFE_METHODS and not self.same_origin(request):
            response = PlainTextResponse("cross-site request refused", status_code=403)
        else:
            response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
