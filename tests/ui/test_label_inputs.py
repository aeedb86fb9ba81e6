"""Reading candidate answers, win-rate pairs and judge verdicts from JSONL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.errors import DataError
from tether.ui.inputs import item_key, read_items

from .helpers import write_jsonl


def test_responses_become_every_unordered_pair(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "responses": ["x", "y", "z"]}])
    items = read_items(path, "collect")
    assert [(i.answer_1, i.answer_2) for i in items] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert [(i.label_1, i.label_2) for i in items][2] == ("responses[1]", "responses[2]")
    assert all(i.origin == f"{path}:1" and i.verdicts == () for i in items)


def test_chosen_rejected_keeps_the_files_preference_as_a_verdict(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"prompt": "q", "chosen": [{"role": "assistant", "content": "c2"}],
         "rejected": [{"role": "assistant", "content": "r2"}], "judge": "rm:tiny"},
    ]
    items = read_items(write_jsonl(tmp_path / "p.jsonl", rows), "collect")
    assert items[0].verdicts == (("source", "1"),)
    assert items[1].verdicts == (("rm:tiny", "1"),)
    assert items[1].answer_1 == [{"role": "assistant", "content": "c2"}]


def test_winrate_rows_and_eval_judgments(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "policy": "P", "reference": "R"},
        # eval shows the reference first, judge prefers A (= the reference's answer)
        {"prompt": "q", "answer_a": "R2", "answer_b": "P2", "order": ["reference", "policy"],
         "verdict": "A", "judge": "openai:m"},
        {"prompt": "s", "policy": "P3", "reference": "R3", "winner": "policy", "judge": "rule"},
        {"prompt": "t", "policy": "P4", "reference": "R4", "winner": "unparsed", "judge": "rule"},
    ]
    items = read_items(write_jsonl(tmp_path / "j.jsonl", rows), "winrate")
    assert [(i.answer_1, i.answer_2) for i in items] == [
        ("P", "R"), ("P2", "R2"), ("P3", "R3"), ("P4", "R4")
    ]
    assert [i.verdicts for i in items] == [
        (), (("openai:m", "2"),), (("rule", "1"),), ()
    ]
    assert {(i.label_1, i.label_2) for i in items} == {("policy", "reference")}


@pytest.mark.parametrize(
    ("line", "mode", "expected"),
    [
        ("{not json", "collect", r"bad\.jsonl:2: not valid JSON"),
        ('["a"]', "collect", r"bad\.jsonl:2: expected a JSON object"),
        ('{"prompt": "p", "responses": ["only one"]}', "collect", r":2: 'responses' must be"),
        ('{"prompt": "p", "chosen": 3, "rejected": "r"}', "collect", r"field 'chosen' must be"),
        ('{"prompt": "p", "policy": "a", "reference": "b"}', "collect", r"need --mode winrate"),
        ('{"prompt": "p", "responses": ["a", "b"]}', "winrate", r"need --mode collect"),
        ('{"prompt": "p", "answer_a": "a", "answer_b": "b"}', "winrate", r"'order' must be"),
        ('{"prompt": "p", "policy": "a", "reference": "b", "verdict": "A"}', "winrate",
         r"needs 'order'"),
        ('{"prompt": "p", "policy": "a", "reference": "b", "winner": "C"}', "winrate",
         r"verdict 'C' not understood"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, line: str, mode: str, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"collect": '{"prompt": "ok", "chosen": "a", "rejected": "b"}',
            "winrate": '{"prompt": "ok", "policy": "a", "reference": "b"}'}[mode]
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=expected) as err:
        read_items(path, mode)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_items(tmp_path / "nope.jsonl", "collect")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        read_items(tmp_path / "empty.jsonl", "collect")


def test_item_key_ignores_answer_order_but_not_content() -> None:
    assert item_key("p", "a", "b") == item_key("p", "b", "a")
    assert item_key("p", "a", "b") != item_key("p", "a", "c")
    assert item_key("p", "a", "b") != item_key("q", "a", "b")
