"""End to end in a real headless Chromium: log in, vote with the keyboard, export.

Needs Debian's ``chromium`` package (/usr/bin/chromium) and Playwright for Python, which drives
it through its bundled driver (no ``playwright install``: the system browser is used).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tether.commands.label import main

from .helpers import write_jsonl

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
XSS_A = "<script>window.__xss = 1</script>"
XSS_B = '<img src=x onerror="window.__xss = 2">'

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _chromium() -> None:
    """A machine without Chromium skips these tests, except CI, where that is a failure."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and /usr/bin/chromium is missing: apt-get install chromium")
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")


def shown(page) -> dict[str, str]:
    return {
        "item": page.input_value("input[name=item_id]"),
        "a": page.inner_text("#answer-a .text"),
        "b": page.inner_text("#answer-b .text"),
    }


def check_hostile(page, now: dict[str, str], tmp_path: Path) -> bool:
    """On the item with hostile answers: they arrive as text, shown verbatim, never run."""
    if XSS_A not in (now["a"], now["b"]):
        return False
    assert {now["a"], now["b"]} == {XSS_A, XSS_B}
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("#answer-a img, #answer-b img, main script").count() == 0
    page.screenshot(path=str(tmp_path / "label.png"), full_page=True)
    if os.environ.get("TETHER_LABEL_SCREENSHOT"):
        page.screenshot(path=os.environ["TETHER_LABEL_SCREENSHOT"], full_page=True)
    return True


def press_and_wait(page, key: str) -> None:
    """Press a shortcut; it submits the form, and the next page loads."""
    with page.expect_navigation():
        page.keyboard.press(key)


def test_vote_with_the_keyboard_and_export(tmp_path: Path, live_server, capsys) -> None:
    from playwright.sync_api import sync_playwright

    rows = [
        {"prompt": "Which is plain text?", "chosen": XSS_A, "rejected": XSS_B},
        {"prompt": [{"role": "user", "content": "Name a prime."}], "responses": ["7", "9"]},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
        {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": "Colour of the sky?", "chosen": "blue", "rejected": "green"},
    ]
    db = tmp_path / "label.db"
    items = write_jsonl(tmp_path / "items.jsonl", rows)
    server = live_server(["--items", str(items), "--db", str(db), "--overlap", "0"])
    picked: dict[str, tuple[str, str]] = {}  # key pressed -> (A, B) texts it was pressed on
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url + "login")
        page.fill("input[name=name]", "ann")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "0 done · 0 skipped · 5 remaining" in page.inner_text("#progress")
        hostile_seen = False
        for step, key in enumerate(["1", "b", "t", "4"]):
            now = shown(page)
            hostile_seen |= check_hostile(page, now, tmp_path)
            picked[key] = (now["a"], now["b"])
            press_and_wait(page, key)
            assert f"{step + 1} done" in page.inner_text("#progress")
        # the last item: a reason typed after "r" must not trigger shortcuts ("b", "a", "s" ...)
        last = shown(page)
        hostile_seen |= check_hostile(page, last, tmp_path)
        page.keyboard.press("r")
        page.keyboard.type("because it is blue")
        assert shown(page)["item"] == last["item"]
        page.keyboard.press("Escape")
        press_and_wait(page, "a")
        assert "All done" in page.inner_text("#done")
        assert page.evaluate("() => window.__xss") is None
        assert hostile_seen
        browser.close()

    out = tmp_path / "prefs.jsonl"
    assert main(["--db", str(db), "--export", str(out)]) == 0
    assert "3 pairs written; left out: 1 ties, 1 both bad" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_chosen = {str(r["chosen"]): r for r in records}
    a1, b1 = picked["1"]
    a2, b2 = picked["b"]
    assert by_chosen[a1]["rejected"] == b1  # "1": A better
    assert by_chosen[b2]["rejected"] == a2  # "b": B better
    assert by_chosen[last["a"]]["rejected"] == last["b"]
    assert by_chosen[last["a"]]["reasons"] == ["because it is blue"]
    assert all(r["annotators"] == ["ann"] for r in records)
