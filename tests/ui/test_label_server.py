"""A real uvicorn server on 127.0.0.1: durability under kill -9, concurrent annotators, CLI."""

from __future__ import annotations

import json
import random
import socket
import threading
from pathlib import Path

import httpx
import pytest

from tether.commands.label import main
from tether.errors import ConfigError
from tether.ui.inputs import PairItem
from tether.ui.security import LOOPBACK
from tether.ui.server import allowed_hosts_for, serve
from tether.ui.store import LabelStore

from .helpers import api_login, collect_rows, write_jsonl


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``tether label ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_acknowledged_votes_survive_kill_9(tmp_path: Path, live_server) -> None:
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(10))
    db = tmp_path / "label.db"
    server = live_server(["--items", str(items), "--db", str(db), "--overlap", "0"])
    assert server.url.startswith("http://127.0.0.1:")
    acknowledged = []
    with httpx.Client(base_url=server.url) as client:
        csrf = api_login(client, "ann")
        for choice in ("A", "B", "tie"):
            item = client.get("/api/item").json()["item"]
            r = client.post("/api/vote", json={"item_id": item["item_id"], "choice": choice},
                            headers={"x-csrf-token": csrf})
            assert r.status_code == 200 and r.json()["recorded"] is True
            acknowledged.append((item["item_id"], choice))
        cookies = dict(client.cookies)
    server.kill9()  # no shutdown, no checkpoint: only what was committed survives
    assert server.proc.returncode == -9
    stored = [(v.item_id, v.choice) for v in LabelStore(db).votes()]
    assert stored == acknowledged
    restarted = live_server(["--db", str(db)])
    with httpx.Client(base_url=restarted.url, cookies=cookies) as client:
        progress = client.get("/api/progress").json()["progress"]  # the session survived too
    assert progress == {"done": 3, "skipped": 0, "remaining": 7}


@pytest.mark.slow
def test_twenty_concurrent_annotators_500_votes(tmp_path: Path, live_server) -> None:
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(600))
    db = tmp_path / "label.db"
    server = live_server(["--items", str(items), "--db", str(db), "--overlap", "0.05"])
    acked: dict[str, list[tuple[int, str]]] = {}
    errors: list[str] = []
    start = threading.Barrier(20)

    def annotator(k: int) -> None:
        name, rng = f"annotator-{k:02d}", random.Random(k)
        mine: list[tuple[int, str]] = []
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                csrf = api_login(client, name)
                start.wait(timeout=120)
                while len(mine) < 25:
                    item = client.get("/api/item").json()["item"]
                    body = {"item_id": item["item_id"], "choice": rng.choice("AB") if k % 4
                            else rng.choice(["A", "B", "tie", "both_bad", "skip"])}
                    for attempt in range(2):  # every vote is sent twice, as a retry would
                        r = client.post("/api/vote", json=body, headers={"x-csrf-token": csrf})
                        assert r.status_code == 200, r.text
                        assert r.json()["recorded"] is (attempt == 0)
                    mine.append((body["item_id"], body["choice"]))
        except Exception as err:  # reported below; a thread's exception is otherwise lost
            errors.append(f"{name}: {err!r}")
            start.abort()  # release the others instead of leaving them at the barrier
        acked[name] = mine

    threads = [threading.Thread(target=annotator, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    store = LabelStore(db)
    votes = store.votes()
    assert len(votes) == 500
    assert sorted((v.annotator, v.item_id, v.choice) for v in votes) == sorted(
        (name, item, choice) for name, mine in acked.items() for item, choice in mine
    )
    shared = {i.id for i in store.items() if i.overlap}
    by_item: dict[int, set[str]] = {}
    for v in votes:
        by_item.setdefault(v.item_id, set()).add(v.annotator)
    # an item that is not shared is judged by one annotator, unless someone skipped it first
    skipped = {v.item_id for v in votes if v.choice == "skip"}
    doubled = [i for i, who in by_item.items() if len(who) > 1 and i not in shared | skipped]
    assert doubled == []


def test_cli_refuses_a_public_host_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_LABEL_TOKEN", raising=False)
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(2))
    db = str(tmp_path / "l.db")
    code, _, err = run_cli(capsys, "--items", str(items), "--db", db, "--host", "0.0.0.0")
    assert code == 2
    assert err.count("\n") == 1 and "give an access token with --token" in err
    code, _, err = run_cli(capsys, "--db", db, "--host", "0.0.0.0", "--token", "short")
    assert code == 2 and "use at least 16" in err
    monkeypatch.setenv("TETHER_LABEL_TOKEN", "short-too")
    code, _, err = run_cli(capsys, "--db", db, "--host", "0.0.0.0")
    assert code == 2 and "use at least 16" in err  # the variable is read as the token


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "policy": "a", "reference": "b"}\n')
    out = str(tmp_path / "o.jsonl")
    cases = [
        (["--items", str(bad), "--db", str(tmp_path / "l.db")], f"{bad}:1: collect mode"),
        (["--db", str(tmp_path / "missing.db"), "--export", out], "no such database"),
        (["--db", str(tmp_path / "empty.db")], "no items to judge"),
        (["--db", str(tmp_path / "l.db"), "--mode", "winrate"], "created with --mode collect"),
    ]
    for args, expected in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and expected in err, err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_export_and_summary(
    tmp_path: Path, live_server, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": f"q{i}", "policy": f"pol{i}", "reference": f"ref{i}",
             "winner": "policy", "judge": "rule:exact"} for i in range(4)]
    items = write_jsonl(tmp_path / "judgments.jsonl", rows)
    db = tmp_path / "w.db"
    server = live_server(["--items", str(items), "--mode", "winrate", "--db", str(db),
                          "--overlap", "0"])
    with httpx.Client(base_url=server.url) as client:
        csrf = api_login(client, "ann")
        while (item := client.get("/api/item").json()["item"]) is not None:
            # always pick the policy's answer, wherever it is shown
            choice = "A" if item["a"][0]["content"].startswith("pol") else "B"
            r = client.post("/api/vote", json={"item_id": item["item_id"], "choice": choice},
                            headers={"x-csrf-token": csrf})
            assert r.status_code == 200
    out, summ = tmp_path / "prefs.jsonl", tmp_path / "summary.json"
    code, stdout, err = run_cli(capsys, "--db", str(db), "--export", str(out),
                                "--summary", str(summ))
    assert code == 0, err
    assert "4 pairs written" in stdout
    assert "win-rate 1.000" in stdout and "people vs rule:exact: kappa" not in stdout
    # all-"policy" on both sides: agreement 1 but kappa undefined (one category)
    data = json.loads(summ.read_text())
    assert data["winrate"]["wins"] == 4 and data["winrate"]["losses"] == 0
    assert data["judge_agreement"]["rule:exact"]["agreement"] == 1.0
    chosen = [json.loads(line)["chosen"] for line in out.read_text().splitlines()]
    assert sorted(chosen) == ["pol0", "pol1", "pol2", "pol3"]


def test_bind_policy_and_a_taken_port(tmp_path: Path) -> None:
    assert allowed_hosts_for("127.0.0.1", None) == LOOPBACK
    assert allowed_hosts_for("localhost", None) == LOOPBACK
    assert allowed_hosts_for("0.0.0.0", "x" * 16) is None  # any Host name; the token guards
    with pytest.raises(ConfigError, match="reachable from other machines"):
        allowed_hosts_for("192.168.1.20", None)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        store = LabelStore(tmp_path / "l.db")
        store.add_items([PairItem("p", "a", "b", "x", "y", "f:1")])
        with pytest.raises(ConfigError, match="cannot listen"):
            serve(store, port=taken.getsockname()[1], say=lambda line: None)
    finally:
        taken.close()
