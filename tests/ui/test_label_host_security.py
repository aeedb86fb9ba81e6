"""DNS rebinding and the bind policy, against a real server process on 127.0.0.1 (issue 14).

A page on ``http://127.attacker.example:PORT`` whose DNS answers 127.0.0.1 reaches the labeling
server with its own name in ``Host`` and a matching ``Origin``; only the Host check stops it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tether.commands.label import main
from tether.errors import ConfigError
from tether.ui.security import LOOPBACK, host_name, is_loopback
from tether.ui.server import allowed_hosts_for
from tether.ui.store import LabelStore

from .helpers import collect_rows, write_jsonl


def _as(server_url: str, host: str) -> httpx.Client:
    """A client that connects to the server but names ``host`` in Host and Origin, as a
    browser on a page served from that name would."""
    port = server_url.rstrip("/").rsplit(":", 1)[1]
    named = f"{host}:{port}"
    return httpx.Client(base_url=server_url, headers={"host": named, "origin": f"http://{named}"})


def _login_and_read(client: httpx.Client, name: str) -> tuple[int, int]:
    """(status of POST /login, status of GET /api/item) through ``client``."""
    login = client.post("/login", data={"name": name})
    return login.status_code, client.get("/api/item").status_code


def test_rebound_names_starting_with_127_are_refused(tmp_path: Path, live_server) -> None:
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(4))
    db = tmp_path / "label.db"
    server = live_server(["--items", str(items), "--db", str(db), "--overlap", "0"])
    with _as(server.url, "127.0.0.1") as ann:  # the real annotator
        assert _login_and_read(ann, "ann") == (303, 200)
    for rebound in ("127.attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example"):
        with _as(server.url, rebound) as attacker:
            assert _login_and_read(attacker, "ann") == (400, 400), rebound
            r = attacker.post("/api/vote", json={"item_id": 1, "choice": "A"})
            assert r.status_code == 400 and r.text == "unknown Host header"
    store = LabelStore(db)
    assert store.annotators() == ["ann"] and store.votes() == []


def test_loopback_names_and_listed_hosts_work(tmp_path: Path, live_server) -> None:
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(4))
    server = live_server(["--items", str(items), "--db", str(tmp_path / "l.db"),
                          "--allowed-host", "Lab.Internal", "--allowed-host", "[fd00::7]"])
    accepted = ["127.0.0.1", "localhost", "LocalHost", "[::1]", "127.0.0.2", "lab.internal",
                "LAB.internal", "[fd00::7]"]
    for k, host in enumerate(accepted):
        with _as(server.url, host) as client:
            assert _login_and_read(client, f"ann{k}") == (303, 200), host
    for host in ("lab.internal.attacker.example", "127.lab.internal", "[fd00::8]"):
        with _as(server.url, host) as client:
            assert _login_and_read(client, "eve") == (400, 400), host


def test_a_host_that_resolves_to_loopback_needs_no_token(tmp_path: Path, live_server) -> None:
    # 0x7f000001 is 127.0.0.1 to the system resolver, yet no "127." prefix: the bind policy
    # follows what the name resolves to, not how it is spelled.
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(2))
    server = live_server(["--items", str(items), "--db", str(tmp_path / "l.db"),
                          "--host", "0x7f000001"])
    assert server.url.startswith("http://0x7f000001:")
    with _as(server.url, "0x7f000001") as client:
        assert _login_and_read(client, "ann") == (303, 200)


def test_a_host_that_resolves_elsewhere_needs_the_token() -> None:
    # What "127.lanbox" resolves to on a LAN whose DNS says 10.0.0.7: no loopback, so a token.
    with pytest.raises(ConfigError, match=r"127\.lanbox \(which resolves to 10\.0\.0\.7\) makes"):
        allowed_hosts_for("127.lanbox", None, addresses=["10.0.0.7"])
    with pytest.raises(ConfigError, match="give an access token"):  # one address off loopback
        allowed_hosts_for("both", None, addresses=["127.0.0.1", "10.0.0.7"])
    assert allowed_hosts_for("127.lanbox", "t" * 16, addresses=["10.0.0.7"]) is None
    assert allowed_hosts_for("box", None, addresses=["127.0.1.1"], extra=["Lab"]) == (
        LOOPBACK | {"box", "lab"})


def test_cli_resolves_host_before_deciding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_LABEL_TOKEN", raising=False)
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(2))
    db = str(tmp_path / "l.db")
    # .invalid never resolves (RFC 6761): refused before any socket, whatever its prefix
    assert main(["--items", str(items), "--db", db, "--host", "127.lanbox.invalid"]) == 2
    err = capsys.readouterr().err
    assert "--host 127.lanbox.invalid: cannot resolve this name" in err and err.count("\n") == 1
    assert main(["--db", db, "--allowed-host", "http://lab:8765"]) == 2
    err = capsys.readouterr().err
    assert "--allowed-host 'http://lab:8765'" in err and "without scheme or port" in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
     ("127.attacker.example", False), ("127.0.0.1.nip.io", False), ("localhost.", False),
     ("10.0.0.1", False), ("0.0.0.0", False), ("", False)],
)
def test_loopback_is_an_ip_address_or_exactly_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_host_header_parsing() -> None:
    assert host_name("[::1]:8765") == "::1"
    assert host_name("Example.COM:80") == "example.com"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("[::1") == ""  # malformed: matches nothing
