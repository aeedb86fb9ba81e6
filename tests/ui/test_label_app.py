"""The HTTP pages and API through the framework's test client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tether.errors import ConfigError
from tether.ui.app import create_app
from tether.ui.inputs import PairItem
from tether.ui.store import LabelStore

BASE = "http://127.0.0.1:8765"
HOSTILE = [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 2">',
    "</div><svg onload=alert(3)>",
]


def make_store(tmp_path: Path, n: int = 3, overlap: float = 0.0) -> LabelStore:
    store = LabelStore(tmp_path / "l.db", overlap=overlap)
    store.add_items([PairItem(f"prompt {i}", f"one {i}", f"two {i}", "chosen", "rejected",
                              f"f:{i + 1}") for i in range(n)])
    return store


def client_for(store: LabelStore, token: str | None = None) -> TestClient:
    return TestClient(create_app(store, token=token), base_url=BASE, follow_redirects=False)


def login(client: TestClient, name: str = "ann", **extra: str) -> None:
    r = client.post("/login", data={"name": name, **extra})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def page_fields(html: str) -> dict[str, str]:
    item = re.search(r'name="item_id" value="(\d+)"', html)
    csrf = re.search(r'name="csrf" value="([^"]+)"', html)
    assert item and csrf, html
    return {"item_id": item.group(1), "csrf": csrf.group(1)}


def test_login_vote_progress_and_done(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    client = client_for(store)
    assert client.get("/").headers["location"] == "/login"
    assert "Who is judging?" in client.get("/login").text
    login(client)
    for step in range(3):
        html = client.get("/").text
        assert f"{step} done · 0 skipped · {3 - step} remaining" in html
        fields = page_fields(html)
        r = client.post("/vote", data={**fields, "choice": "tie", "reason": "why not"})
        assert r.status_code == 303 and r.headers["location"] == "/"
    html = client.get("/").text
    assert "All done" in html and "3 judged, 0 skipped" in html
    assert [v.choice for v in store.votes()] == ["tie"] * 3
    assert {v.reason for v in store.votes()} == {"why not"}


def test_hostile_model_text_and_names_are_escaped(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db")
    store.add_items([PairItem(HOSTILE[2], HOSTILE[0], HOSTILE[1], "a", "b", "f:1")])
    client = client_for(store)
    login(client, name='<b onmouseover="x()">eve</b>')
    r = client.get("/")
    html = r.text
    for text in HOSTILE:
        assert text not in html
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;window.pwned = 2&#34;&gt;" in html
    assert "&lt;/div&gt;&lt;svg onload=alert(3)&gt;" in html
    assert "&lt;b onmouseover=&#34;x()&#34;&gt;eve&lt;/b&gt;" in html
    # the only script is the page's own file; the CSP forbids inline script as a second guard
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/label.js" defer>']
    assert "<img" not in html and "<svg" not in html
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    api = client.get("/api/item").json()["item"]
    assert {api["a"][0]["content"], api["b"][0]["content"]} == {HOSTILE[0], HOSTILE[1]}
    assert client.get("/api/item").headers["content-type"].startswith("application/json")


def test_chat_messages_are_shown_with_roles(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db")
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi?"}]
    store.add_items([PairItem(prompt, "hello", [{"role": "assistant", "content": "hey"}],
                              "a", "b", "f:1")])
    client = client_for(store)
    login(client)
    html = client.get("/").text
    assert re.search(r'class="role">system</div>\s*<div class="text">be brief</div>', html)
    assert re.search(r'class="role">assistant</div>\s*<div class="text">hey</div>', html)


def test_form_post_needs_the_sessions_csrf_token(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    client = client_for(store)
    login(client)
    fields = page_fields(client.get("/").text)
    r = client.post("/vote", data={**fields, "csrf": "forged", "choice": "A"})
    assert r.status_code == 403
    other = client_for(store)
    login(other, "bob")
    bobs = page_fields(other.get("/").text)["csrf"]
    r = client.post("/vote", data={**fields, "csrf": bobs, "choice": "A"})
    assert r.status_code == 403  # a token is bound to its own session
    assert store.votes() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1:9999"},  # another port is another origin
        {"origin": "null"},
        {"referer": "http://evil.example/page"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ],
)
def test_cross_site_posts_are_refused_even_with_a_valid_token(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    store = make_store(tmp_path)
    client = client_for(store)
    login(client)
    fields = page_fields(client.get("/").text)
    r = client.post("/vote", data={**fields, "choice": "A"}, headers=headers)
    assert r.status_code == 403
    r = client.post("/api/vote", json={"item_id": int(fields["item_id"]), "choice": "A"},
                    headers={"x-csrf-token": fields["csrf"], **headers})
    assert r.status_code == 403
    r = client.post("/login", data={"name": "mallory"}, headers=headers)
    assert r.status_code == 403
    assert store.votes() == [] and store.annotators() == ["ann"]


def test_same_origin_browser_posts_are_accepted(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    client = client_for(store)
    login(client)
    fields = page_fields(client.get("/").text)
    r = client.post("/vote", data={**fields, "choice": "B"},
                    headers={"origin": BASE, "sec-fetch-site": "same-origin"})
    assert r.status_code == 303
    assert len(store.votes()) == 1


def test_unknown_host_header_is_refused(tmp_path: Path) -> None:
    client = TestClient(create_app(make_store(tmp_path)), base_url="http://rebound.example")
    assert client.get("/login").status_code == 400
    open_app = TestClient(create_app(make_store(tmp_path), token="t" * 20, allowed_hosts=None),
                          base_url="http://lab.example")
    assert open_app.get("/login").status_code == 200


def test_access_token_is_asked_at_login(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    client = client_for(store, token="s3cret-token-0123456")
    assert 'name="token"' in client.get("/login").text
    assert client.post("/login", data={"name": "ann", "token": "wrong"}).status_code == 403
    assert client.post("/login", data={"name": "ann"}).status_code == 403
    assert store.annotators() == []
    login(client, token="s3cret-token-0123456")
    assert store.annotators() == ["ann"]


def test_api_vote_flow_duplicates_and_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path, n=2)
    client = client_for(store)
    assert client.get("/api/item").status_code == 401
    login(client)
    got = client.get("/api/item").json()
    item_id, csrf = got["item"]["item_id"], got["csrf"]
    assert got["progress"] == {"done": 0, "skipped": 0, "remaining": 2}
    body = {"item_id": item_id, "choice": "A", "reason": "clearer"}
    assert client.post("/api/vote", json=body).status_code == 403  # no token header
    r = client.post("/api/vote", json=body, headers={"x-csrf-token": csrf})
    assert r.status_code == 200
    assert r.json() == {"recorded": True,
                        "progress": {"done": 1, "skipped": 0, "remaining": 1}}
    r = client.post("/api/vote", json=body, headers={"x-csrf-token": csrf})
    assert r.json()["recorded"] is False  # resent: acknowledged, not doubled
    r = client.post("/api/vote", json={**body, "choice": "B"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 409
    r = client.post("/api/vote", json={"item_id": 999, "choice": "A"},
                    headers={"x-csrf-token": csrf})
    assert r.status_code == 404
    r = client.post("/api/vote", json={"item_id": item_id, "choice": "maybe"},
                    headers={"x-csrf-token": csrf})
    assert r.status_code == 400
    r = client.post("/api/vote", json={"choice": "A"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 422
    assert len(store.votes()) == 1


def test_resume_in_a_new_browser_session(tmp_path: Path) -> None:
    store = make_store(tmp_path, n=4)
    first = client_for(store)
    login(first)
    page_1 = page_fields(first.get("/").text)
    first.post("/vote", data={**page_1, "choice": "skip"})
    on_screen = first.get("/").text
    later = client_for(store)  # another browser, same name
    login(later)
    resumed = later.get("/").text
    assert page_fields(resumed)["item_id"] == page_fields(on_screen)["item_id"]
    assert "0 done · 1 skipped · 3 remaining" in resumed
    # the A/B sides are the same as before
    assert re.findall(r'<div class="text">(.*?)</div>', resumed) == \
        re.findall(r'<div class="text">(.*?)</div>', on_screen)


def test_logout_ends_the_session(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    client = client_for(store)
    login(client)
    csrf = page_fields(client.get("/").text)["csrf"]
    assert client.post("/logout", data={"csrf": csrf}).headers["location"] == "/login"
    assert client.get("/").headers["location"] == "/login"


def test_bad_login_names(tmp_path: Path) -> None:
    client = client_for(make_store(tmp_path))
    r = client.post("/login", data={"name": "x" * 65})
    assert r.status_code == 400 and "1 to 64 printable characters" in r.text
    assert client.post("/login", data={"name": "  "}).status_code == 400


def test_static_script_and_style_are_served(tmp_path: Path) -> None:
    client = client_for(make_store(tmp_path))
    js = client.get("/static/label.js")
    assert js.status_code == 200 and "requestSubmit" in js.text
    assert "innerHTML" not in js.text  # the script never turns text into markup
    assert client.get("/static/label.css").status_code == 200


def test_sessions_expire_after_session_ttl_and_votes_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time
    import types

    import tether.ui.store

    now = [time.time()]  # the store's clock, moved by hand: no sleeping, no race with load
    monkeypatch.setattr(tether.ui.store, "time", types.SimpleNamespace(time=lambda: now[0]))
    store = make_store(tmp_path, n=3)
    store.session_ttl = 3600.0  # what --session-hours 1 sets
    client = client_for(store)
    r = client.post("/login", data={"name": "ann"})
    assert "max-age=3600" in r.headers["set-cookie"].lower()  # the browser drops it too
    first = page_fields(client.get("/").text)
    assert client.post("/vote", data={**first, "choice": "A"}).status_code == 303
    now[0] += 3599
    assert client.get("/").status_code == 200  # still within the hour
    now[0] += 2
    assert client.get("/").headers["location"] == "/login"  # the old cookie no longer works
    # a form posted with the expired session goes to the login page and counts nothing
    r = client.post("/vote", data={**first, "choice": "B"})
    assert r.headers["location"] == "/login" and len(store.votes()) == 1
    login(client)  # logging in again: the same annotator, nothing lost
    assert "1 done · 0 skipped · 2 remaining" in client.get("/").text
    with pytest.raises(ConfigError, match="session-hours"):
        LabelStore(tmp_path / "l.db", session_ttl=0)
