"""Start the labeling page under uvicorn, bound to 127.0.0.1 unless told otherwise.

Any address other than loopback makes the page reachable from other machines, so it needs an
access token (asked at login). The listening socket is opened here, before uvicorn starts, so
``--port 0`` picks a free port and the printed URL is the real one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from tether.errors import ConfigError
from tether.ui.app import create_app
from tether.ui.security import LOOPBACK, is_loopback
from tether.ui.store import LabelStore

__all__ = ["MIN_TOKEN", "allowed_hosts_for", "open_socket", "serve"]

MIN_TOKEN = 16


def allowed_hosts_for(host: str, token: str | None) -> frozenset[str] | None:
    """Host names the app accepts; refuses a non-loopback address without a strong token."""
    if is_loopback(host):
        return LOOPBACK
    if not token:
        raise ConfigError(
            f"--host {host} makes the labeling page reachable from other machines; give an "
            f"access token with --token or TETHER_LABEL_TOKEN, or use --host 127.0.0.1"
        )
    if len(token) < MIN_TOKEN:
        raise ConfigError(
            f"--token is {len(token)} characters; use at least {MIN_TOKEN} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    # Reached through any name (LAN address, host name): the token guards the page.
    return None


def open_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
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
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C). Prints the URL once the socket is listening."""
    say = say or _say
    allowed = allowed_hosts_for(host, token)
    app = create_app(store, token=token, allowed_hosts=allowed)
    sock = open_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    n = sum(not it.identical for it in store.items())
    say(f"tether label: {n} items to judge ({store.mode}) at http://{shown}:{bound}/")
    if token:
        say("tether label: log in with your name and the access token (not printed)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
