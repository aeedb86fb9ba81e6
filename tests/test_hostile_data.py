"""Hostile data files (issue 14): a BOM, unknown roles, ``messages`` as a string and
attribute access in ``prompt_template``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tether.cli import main
from tether.data import load_completions, load_preferences
from tether.errors import ConfigError, DataError

GOOD = {"prompt": "the cat sat", "chosen": " yes please", "rejected": " no"}
SRC = Path(__file__).resolve().parents[1] / "src"


def jsonl(path: Path, *lines: str | dict) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def triples(path: Path, **kwargs: object) -> list[tuple[object, object, object]]:
    records, _ = load_preferences(str(path), **kwargs)  # type: ignore[arg-type]
    return [(r.prompt, r.chosen, r.rejected) for r in records]


# --------------------------------------------------------------------------- encoding


def test_utf8_bom_is_accepted_in_jsonl_and_json(tmp_path):
    plain = jsonl(tmp_path / "plain.jsonl", GOOD, {**GOOD, "chosen": " café"})
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert triples(bom) == triples(plain) == [
        ("the cat sat", " yes please", " no"), ("the cat sat", " café", " no")]
    as_list = tmp_path / "bom.json"
    as_list.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert triples(as_list) == [("the cat sat", " yes please", " no")]


# --------------------------------------------------------------------------- shape of rows


def test_roles_outside_the_four_known_are_refused(tmp_path):
    def conv(*roles: str) -> list[dict[str, str]]:
        return [{"role": r, "content": f"text {i}"} for i, r in enumerate(roles)]

    ok = {"prompt": conv("system", "user", "assistant", "tool", "user"),
          "chosen": conv("assistant"), "rejected": [{"role": "assistant", "content": "no"}]}
    bad = {**ok, "chosen": conv("assistant", "gpt")}
    path = jsonl(tmp_path / "r.jsonl", ok, bad)
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert str(err.value) == (
        f"{path}:2: field 'chosen[1]' has role 'gpt'; expected one of system, user, assistant, "
        "tool (rename it, e.g. with a script, or remove the row)"
    )
    assert triples(jsonl(tmp_path / "ok.jsonl", ok))[0][0] == ok["prompt"]


def test_sft_messages_as_a_string_is_a_data_error(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl",
                 {"messages": [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"}]},
                 {"messages": "user: hi\nassistant: hello"})
    with pytest.raises(DataError) as err:
        load_completions(str(path))
    assert str(err.value) == (f"{path}:2: field 'messages' must be a list of {{'role', "
                              "'content'} messages, got str")


@pytest.mark.parametrize(
    "template", ["{prompt.__class__}", "{instruction.__init__.__globals__}", "{items[0]}",
                 "{0}", "{}", "{instruction!r}", "Q: {instruction:{prompt.__class__}}"],
)
def test_prompt_template_allows_field_names_only(template, tmp_path):
    path = jsonl(tmp_path / "t.jsonl", {"instruction": "sum", "items": ["a"], "prompt": "p",
                                        "chosen": "a", "rejected": "b"})
    with pytest.raises(ConfigError) as err:
        load_preferences(str(path), prompt_template=template)
    assert str(err.value).startswith("prompt_template: '{")
    assert "is not a plain field name; use {field} names only" in str(err.value)


def test_prompt_template_with_plain_fields_and_literal_braces(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", {"instruction": "sum", "input": "1 2", "chosen": "a",
                                        "rejected": "b"})
    got = triples(path, prompt_template="{{json}} {instruction}: {input}")
    assert got == [("{json} sum: 1 2", "a", "b")]


# --------------------------------------------------------------------------- the CLI


def cli_case(name: str, d: Path) -> tuple[str, list[str], str]:
    """(command, data file and keys, regex of the error after '<command>: error: ')."""
    if name == "role":
        conv = {"prompt": [{"role": "human", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}]}
        f = jsonl(d / "role.jsonl", GOOD, conv)
        return "train", [f"data={f}"], re.escape(f"{f}:2: field 'prompt[0]' has role 'human'")
    if name == "template":
        f = jsonl(d / "t.jsonl", {"q": "x", "chosen": "a", "rejected": "b"})
        return "train", [f"data={f}", "prompt_template={q.__class__}"], re.escape(
            "prompt_template: '{q.__class__}' is not a plain field name")
    assert name == "messages string"
    f = jsonl(d / "sft.jsonl", {"messages": "hello"})
    return "sft", [f"data={f}"], re.escape(f"{f}:1: field 'messages' must be a list")


CLI_CASES = ["role", "template", "messages string"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_with_one_line_and_exit_2(case, tmp_path, llama_dir, capsys):
    command, items, pattern = cli_case(case, tmp_path)
    code = main([command, f"model={llama_dir}", *items, "max_steps=1", "batch_size=2",
                 "progress=false", f"output_dir={tmp_path / 'run'}",
                 f"cache_dir={tmp_path / 'cache'}"])
    lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x or "Trace" in x]
    assert code == 2, lines
    assert len(lines) == 1 and re.match(rf"tether {command}: error: {pattern}", lines[0]), lines
    assert not (tmp_path / "run" / "model").exists()


def test_bom_file_trains_from_the_cli(tmp_path, llama_dir, capsys):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode() * 4)
    code = main(["train", f"model={llama_dir}", f"data={data}", "max_steps=1", "batch_size=2",
                 "progress=false", f"output_dir={tmp_path / 'run'}",
                 f"cache_dir={tmp_path / 'cache'}"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
