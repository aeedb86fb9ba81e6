"""Start the labeling page under uvicorn, bound to 127.0.0.1 unless told otherwise.

Any address other than loopback makes the page reachable from other machines, so it needs an
access token (asked at login). ``--host`` is resolved once, here: the token is required unless
every address it resolves to is loopback, and the socket is bound to the address that was
checked (a name is never looked up twice, so its DNS cannot answer differently the second time).
The listening socket is opened before uvicorn starts, so ``--port 0`` picks a free port and the
printed URL is the real one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn

from tether.errors import ConfigError
from tether.ui.app import create_app
from tether.ui.security import LOOPBACK, host_name, is_loopback_ip
from tether.ui.store import LabelStore

__all__ = [
    "MIN_TOKEN",
    "Address",
    "allowed_host_names",
    "allowed_hosts_for",
    "open_socket",
    "resolve",
    "serve",
]

MIN_TOKEN = 16

Address = tuple[int, tuple[Any, ...]]  # (socket family, sockaddr) as getaddrinfo gives them


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(
            f"--host {host}: cannot resolve this name ({why}); give an IP address such as "
            "127.0.0.1, or a name this machine resolves"
        ) from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def allowed_host_names(names: Iterable[str]) -> frozenset[str]:
    """``--allowed-host`` values as Host names to compare with: lowercased, no IPv6 brackets."""
    out = set()
    for given in names:
        name = given.strip().lower()
        name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        bad = not name or any(c in name for c in "/@ \t[]")
        if ":" in name and not bad:
            try:
                ipaddress.IPv6Address(name)
            except ValueError:
                bad = True  # a port or a scheme, not an IPv6 address
        if bad:
            raise ConfigError(
                f"--allowed-host {given!r}: expected a host name or IP address as the browser's "
                "address bar shows it, without scheme or port (e.g. --allowed-host lab.local)"
            )
        out.add(name)
    return frozenset(out)


def allowed_hosts_for(
    host: str,
    token: str | None,
    *,
    addresses: Iterable[str] | None = None,
    extra: Iterable[str] = (),
) -> frozenset[str] | None:
    """Host names the app accepts; refuses a non-loopback address without a strong token.

    ``addresses``: what ``host`` resolves to (resolved here when None). Only when all of them
    are loopback does the page go without a token; it then answers to loopback names, to
    ``host`` itself and to the ``extra`` names the user listed.
    """
    names = allowed_host_names(extra)  # checked even when unused: a typo should not pass
    found = sorted({str(a[1][0]) for a in resolve(host, 0)} if addresses is None else addresses)
    if found and all(is_loopback_ip(a) for a in found):
        return LOOPBACK | {host_name(host)} | names
    if not token:
        via = "" if found == [host] else f" (which resolves to {', '.join(found)})"
        raise ConfigError(
            f"--host {host}{via} makes the labeling page reachable from other machines; give an "
            f"access token with --token or TETHER_LABEL_TOKEN, or use --host 127.0.0.1"
        )
    if len(token) < MIN_TOKEN:
        raise ConfigError(
            f"--token is {len(token)} characters; use at least {MIN_TOKEN} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    # Reached through any name (LAN address, host name): the token guards the page.
    return None


def open_socket(host: str, port: int, address: Address | None = None) -> socket.socket:
    """A socket bound to ``address`` (default: the first one ``host`` resolves to)."""
    family, sockaddr = address or resolve(host, port)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen ({err.strerror}); "
            "choose another --port (0 picks a free one)"
        ) from None
    return sock


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: scripts and tests read the URL from a pipe


def serve(
    store: LabelStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C). Prints the URL once the socket is listening.
    ``allowed_hosts``: more Host names the page answers to on loopback (``--allowed-host``)."""
    say = say or _say
    addresses = resolve(host, port)
    allowed = allowed_hosts_for(host, token, addresses=[str(a[1][0]) for a in addresses],
                                extra=allowed_hosts)
    app = create_app(store, token=token, allowed_hosts=allowed)
    sock = open_socket(host, port, addresses[0])
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    n = sum(not it.identical for it in store.items())
    say(f"tether label: {n} items to judge ({store.mode}) at http://{shown}:{bound}/")
    if token:
        say("tether label: log in with your name and the access token (not printed)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
