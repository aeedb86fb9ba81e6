"""``tether push`` and ``push_to_hub=``: a real upload through huggingface_hub to a Hub
served on 127.0.0.1 (hub_server.py); the token comes from HF_TOKEN and is never printed."""

from __future__ import annotations

import pytest
from hub_server import HubServer

from conftest import make_pairs, train_config, write_jsonl
from tether import cli
from tether.training.loop import train

TOKEN = "hf_tEsTtOkEn0123456789abcdef"


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, llama_dir):
    tmp = tmp_path_factory.mktemp("push")
    data = write_jsonl(tmp / "pairs.jsonl", make_pairs(16))
    return train(train_config(tmp, model=str(llama_dir), data=str(data), max_steps=1))


def _no_token_anywhere(capsys, caplog, run_dir):
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".md"):
            assert TOKEN not in f.read_text(errors="replace"), f


def test_tether_push_uploads_model_and_card(hub, run_dir, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(run_dir), "--repo", "org/tiny-dpo"]) == 0
    repo = hub.repos["org/tiny-dpo"]
    assert repo["private"] is True  # private unless --public
    local = {p.name: p.read_bytes() for p in (run_dir / "model").iterdir() if p.is_file()}
    assert repo["files"] == local  # every file, byte for byte, the card included
    assert "README.md" in repo["files"] and "model.safetensors" in repo["files"]
    # every call of the upload carries the token; huggingface_hub's own daily fetch of its
    # agent registry (GET /api/agent-harnesses) goes without one
    api = [r for r in hub.requests if r["method"] == "POST"]
    assert {r["authorization"] for r in api} == {f"Bearer {TOKEN}"}
    assert all(r["authorization"] is None for r in hub.requests if r["method"] == "GET")
    paths = [r["path"].split("?")[0] for r in api]
    assert paths[0] == "/api/repos/create" and paths[-1] == "/api/models/org/tiny-dpo/commit/main"
    assert "pushed:" in capsys.readouterr().out
    _no_token_anywhere(capsys, caplog, run_dir)


def test_push_again_reuses_the_repo(hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(run_dir), "--repo", "org/again", "--public"]) == 0
    assert cli.main(["push", str(run_dir), "--repo", "org/again"]) == 0  # 409: exists, fine
    assert hub.repos["org/again"]["private"] is False


def test_push_without_a_token_is_one_line(hub, run_dir, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert cli.main(["push", str(run_dir), "--repo", "org/x"]) == 2
    err = capsys.readouterr().err
    assert "HF_TOKEN: not set" in err and len(err.strip().splitlines()) == 1
    assert hub.requests == []
    assert cli.main(["push", str(run_dir), "--repo", "not a repo"]) == 2


def test_push_to_hub_after_training(hub, tmp_path, llama_dir, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(data), max_steps=1,
                             push_to_hub="org/trained"))
    files = hub.repos["org/trained"]["files"]
    assert files["README.md"] == (run / "model" / "README.md").read_bytes()
    assert b"# org/trained" in files["README.md"]
    _no_token_anywhere(capsys, caplog, run)
