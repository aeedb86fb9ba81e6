"""Reading preference data: every source and format, field mapping, validation with file:line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import pytest

from conftest import write_jsonl
from tether.data.records import (
    load_completions,
    load_preferences,
    load_prompts,
    needs_chat,
    read_rows,
)
from tether.errors import DataError

ROWS = [
    {"prompt": "the cat sat", "chosen": " yes please", "rejected": " no"},
    {"prompt": "a dog ran", "chosen": " thanks", "rejected": " no dog"},
    {"prompt": "red or blue", "chosen": " blue please", "rejected": " red"},
]

# The file issue 2 names; it sits beside the repository (../shared/data). TETHER_SHARED_DATA
# points elsewhere (e.g. from a git worktree whose parent is not the project directory).
SHARED_DATA = Path(
    os.environ.get("TETHER_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
INSTRUCTION_FILE = SHARED_DATA / "instruction-data-with-preference.json"


def at(where: object) -> str:
    """Regex: the message starts with this file/row label."""
    return "^" + re.escape(str(where))


def triples(records):
    return [(r.prompt, r.chosen, r.rejected) for r in records]


def write(kind: str, tmp_path: Path, rows: list[dict]) -> str:
    if kind == "jsonl":
        return str(write_jsonl(tmp_path / "d.jsonl", rows))
    if kind == "json":
        (tmp_path / "d.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return str(tmp_path / "d.json")
    if kind == "json-object":
        (tmp_path / "d.json").write_text(json.dumps({"train": rows}), encoding="utf-8")
        return str(tmp_path / "d.json")
    ds = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        ds.to_parquet(str(tmp_path / "d.parquet"))
        return str(tmp_path / "d.parquet")
    if kind == "csv":
        ds.to_csv(str(tmp_path / "d.csv"), index=False)
        return str(tmp_path / "d.csv")
    if kind == "saved":
        ds.save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    if kind == "saved-dict":
        datasets.DatasetDict({"train": ds.select([0]), "test": ds}).save_to_disk(
            str(tmp_path / "saved")
        )
        return str(tmp_path / "saved")
    raise AssertionError(kind)


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    "kind", ["jsonl", "json", "json-object", "parquet", "csv", "saved", "saved-dict"]
)
def test_every_source_gives_the_same_records(kind, tmp_path):
    path = write(kind, tmp_path, ROWS)
    split = "test" if kind == "saved-dict" else "train"
    records, report = load_preferences(path, split=split)
    assert triples(records) == [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]
    assert report.rows == report.kept == 3 and report.format == "standard"
    assert all(r.source.startswith(path) for r in records)
    assert len({r.source for r in records}) == 3  # each row says where it came from


def test_source_names_line_of_jsonl_and_csv(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {}, ROWS[1]])
    path.write_text(path.read_text().replace("{}\n", "\n"))  # a blank line is skipped
    assert [r.source for r in read_rows(str(path))] == [f"{path}:1", f"{path}:3"]
    csv = write("csv", tmp_path, ROWS)
    assert [r.source for r in read_rows(csv)] == [f"{csv}:2", f"{csv}:3", f"{csv}:4"]


def test_missing_split_of_a_saved_dataset(tmp_path):
    path = write("saved-dict", tmp_path, ROWS)
    with pytest.raises(DataError, match=r"no split 'validation'; available: train, test"):
        load_preferences(path, split="validation")


def test_missing_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_rows(str(tmp_path / "nope.jsonl"))


# --------------------------------------------------------------------------- formats


def test_conversational_rows(tmp_path):
    user = [{"role": "user", "content": "the cat sat"}]
    row = {"prompt": user, "chosen": [{"role": "assistant", "content": "yes"}],
           "rejected": [{"role": "assistant", "content": "no"}]}
    records, report = load_preferences(str(write_jsonl(tmp_path / "c.jsonl", [row])))
    assert report.format == "conversational"
    assert triples(records) == [(user, row["chosen"], row["rejected"])]
    assert needs_chat(records)


def test_implicit_prompt_from_hh_text(tmp_path):
    turn1 = "\n\nHuman: is the cat red?\n\nAssistant: no it is blue"
    prompt = turn1 + "\n\nHuman: and the dog?\n\nAssistant:"
    # Both answers start with "yes": the word stays in the answers, the cut is after the marker.
    row = {"chosen": prompt + " yes please", "rejected": prompt + " yes no"}
    records, report = load_preferences(str(write_jsonl(tmp_path / "hh.jsonl", [row])))
    assert report.format == "implicit"
    assert triples(records) == [(prompt, " yes please", " yes no")]


def test_implicit_prompt_from_text_without_markers_splits_at_whitespace(tmp_path):
    row = {"chosen": "the cat sat on the mat", "rejected": "the cat sang"}
    records, _ = load_preferences(str(write_jsonl(tmp_path / "t.jsonl", [row])))
    assert triples(records) == [("the cat ", "sat on the mat", "sang")]


def test_implicit_prompt_from_message_lists(tmp_path):
    u1, a1 = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    u2 = {"role": "user", "content": "a cat?"}
    good, bad = {"role": "assistant", "content": "yes"}, {"role": "assistant", "content": "no"}
    row = {"chosen": [u1, a1, u2, good], "rejected": [u1, a1, u2, bad]}
    records, report = load_preferences(str(write_jsonl(tmp_path / "m.jsonl", [row])))
    assert report.format == "implicit"
    assert triples(records) == [([u1, a1, u2], [good], [bad])]


def test_implicit_rows_without_shared_prompt_are_rejected(tmp_path):
    row = {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
           "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "m.jsonl", [row])
    with pytest.raises(DataError, match=at(path) + r":1: chosen and rejected share no prompt"):
        load_preferences(str(path))


ALPACA_ROW = {"instruction": "Name a colour.", "input": "cat", "output": "Blue.", "bad": "No."}


def test_field_map_and_alpaca_template(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_ROW, {**ALPACA_ROW, "input": ""}])
    records, _ = load_preferences(
        str(path), field_map={"chosen": "output", "rejected": "bad"}, prompt_template="alpaca"
    )
    head = "Below is an instruction that describes a task"
    tail = ". Write a response that appropriately completes the request.\n\n"
    assert records[0].prompt == (
        head + ", paired with an input that provides further context" + tail
        + "### Instruction:\nName a colour.\n\n### Input:\ncat\n\n### Response:\n"
    )
    assert records[1].prompt == head + tail + "### Instruction:\nName a colour.\n\n### Response:\n"
    assert (records[0].chosen, records[0].rejected) == ("Blue.", "No.")


def test_custom_template_and_its_errors(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_ROW])
    fm = {"chosen": "output", "rejected": "bad"}
    records, _ = load_preferences(str(path), field_map=fm, prompt_template="{instruction} ({input})")
    assert records[0].prompt == "Name a colour. (cat)"
    with pytest.raises(DataError, match=at(path) + r":1: field 'question' .*prompt_template"):
        load_preferences(str(path), field_map=fm, prompt_template="{question}")
    with pytest.raises(DataError, match=at(path) + r":1: missing field 'answer' .*field_map"):
        load_preferences(str(path), field_map={"chosen": "answer"}, prompt_template="alpaca")


def test_identical_pairs_are_dropped_and_counted(tmp_path):
    rows = [*ROWS, {"prompt": "p", "chosen": " same", "rejected": " same"}]
    records, report = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert len(records) == 3
    assert (report.rows, report.kept, report.identical_dropped) == (4, 3, 1)
    assert "1 dropped with chosen == rejected" in report.summary()


@pytest.mark.skipif(not INSTRUCTION_FILE.exists(), reason=f"{INSTRUCTION_FILE} not present")
def test_instruction_data_with_preference_file():
    raw = json.loads(INSTRUCTION_FILE.read_text(encoding="utf-8"))
    records, report = load_preferences(str(INSTRUCTION_FILE), prompt_template="alpaca")
    same = sum(r["chosen"] == r["rejected"] for r in raw)
    assert same == 6  # what the issue says this file holds
    assert (report.rows, report.identical_dropped, report.kept) == (len(raw), 6, len(raw) - 6)
    first = raw[0]
    assert records[0].prompt.endswith(
        f"### Instruction:\n{first['instruction']}\n\n### Input:\n{first['input']}\n\n"
        "### Response:\n"
    )
    # field_map reads another column: 'output' is the reference answer
    records, report = load_preferences(
        str(INSTRUCTION_FILE), field_map={"chosen": "output"}, prompt_template="alpaca"
    )
    assert report.identical_dropped == sum(r["output"] == r["rejected"] for r in raw)
    assert report.kept == len(records) == len(raw) - report.identical_dropped


# --------------------------------------------------------------------------- other loaders


def test_load_prompts_keeps_the_whole_row(tmp_path):
    rows = [{"prompt": "2+2?", "answer": "4"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}]
    prompts = load_prompts(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert [p.prompt for p in prompts] == ["2+2?", "\n\nHuman: hi\n\nAssistant:"]
    assert prompts[0].row == rows[0] and prompts[0].source.endswith("p.jsonl:1")


def test_load_completions(tmp_path):
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}]
    rows = [{"prompt": "the cat", "completion": " sat"}, {"messages": msgs}]
    recs = load_completions(str(write_jsonl(tmp_path / "s.jsonl", rows)))
    assert triples(recs) == [("the cat", " sat", ""), (msgs[:2], msgs[2:], "")]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"messages": msgs[:2]}])
    with pytest.raises(DataError, match=at(bad) + r":1: field 'messages' must end with assistant"):
        load_completions(str(bad))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "field 'chosen' must be a string"),
        ({"prompt": "p", "chosen": "c"}, "missing field 'rejected'"),
        ({"chosen": "c", "rejected": "r", "prompt": ""}, "field 'prompt' is empty"),
        ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "r"},
         r"field 'chosen\[0\]' must be a \{'role': str, 'content': str\} message"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], row])
    with pytest.raises(DataError, match=at(path) + ":3: " + message) as err:
        load_preferences(str(path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["parquet", "csv", "json"])
def test_bad_row_of_tabular_sources_says_which_row(tmp_path, kind):
    rows = [*ROWS[:2], {"prompt": "p", "chosen": "c", "rejected": " "}]
    path = write(kind, tmp_path, rows)
    where = {"parquet": f"{path}[2]", "csv": f"{path}:4", "json": f"{path}[2]"}[kind]
    with pytest.raises(DataError, match=at(where) + r": field 'rejected' is empty"):
        load_preferences(path)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_an_empty_cell_is_called_empty_not_nonetype(tmp_path, kind):
    if kind == "csv":
        path = tmp_path / "d.csv"
        path.write_text("prompt,chosen,rejected\np,c,r\np2,,r2\n")
        where = f"{path}:3"
    else:
        path = tmp_path / "d.jsonl"
        path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n'
                        '{"prompt": "p2", "chosen": null, "rejected": "r2"}\n')
        where = f"{path}:2"
    with pytest.raises(DataError, match=at(where) + r": field 'chosen' is empty \(null\)") as err:
        load_preferences(str(path))
    assert "NoneType" not in str(err.value)
