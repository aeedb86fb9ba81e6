"""Hostile data files (issue 14): oversized and deeply nested rows, lone surrogates, a BOM,
unknown roles, ``messages`` as a string and attribute access in ``prompt_template``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tether.cli import main
from tether.data.records import load_completions, load_preferences, read_rows
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


def test_lone_surrogate_escape_names_file_line_and_field(tmp_path):
    path = jsonl(tmp_path / "s.jsonl", GOOD, r'{"prompt": "x\ud800", "chosen": "a", "rejected": "b"}')
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert str(err.value) == (f"{path}:2: field 'prompt' holds a lone surrogate ('\\ud800'), "
                              "which is not a character; fix the \\u escape or remove the row")
    msgs = jsonl(tmp_path / "m.jsonl", r'{"prompt": [{"role": "user", "content": "\udfff"}], '
                 r'"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}')
    with pytest.raises(DataError, match=r"m\.jsonl:1: field 'prompt\[0\]\.content' holds a lone"):
        read_rows(str(msgs))


def test_a_surrogate_pair_escape_is_one_real_character(tmp_path):
    path = jsonl(tmp_path / "e.jsonl", r'{"prompt": "hi \ud83d\ude00", "chosen": "a", "rejected": "b"}')
    assert triples(path) == [("hi \U0001f600", "a", "b")]


def test_line_separator_inside_a_string_does_not_split_the_line(tmp_path):
    # U+2028 is legal raw inside a JSON string; str.splitlines() would break the row there.
    path = tmp_path / "u.jsonl"
    row = {**GOOD, "prompt": "one\u2028two"}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row, ensure_ascii=False) + "\n"
                    + json.dumps({**GOOD, "rejected": 3}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: field 'rejected'"):
        load_preferences(str(path))
    assert [r.data["prompt"] for r in read_rows(str(path))][:2] == ["the cat sat", "one\u2028two"]


# --------------------------------------------------------------------------- size and depth


def test_a_line_over_the_limit_names_line_size_limit_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_MAX_ROW_BYTES", "1000")
    fits = json.dumps({**GOOD, "prompt": "p" * (1000 - len(json.dumps({**GOOD, "prompt": ""})))})
    over = json.dumps({**GOOD, "prompt": "é" * 500}, ensure_ascii=False)
    size = len(over.encode())
    assert len(fits.encode()) == 1000 and len(over) < 1000 < size  # over in bytes, not in chars
    path = tmp_path / "big.jsonl"
    path.write_text(f"{fits}\n{over}\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert str(err.value) == (
        f"{path}:2: the line is {size:,} bytes, over the limit of 1,000 per row; shorten the "
        "row, or raise the limit with the environment variable TETHER_MAX_ROW_BYTES=<bytes>"
    )
    monkeypatch.setenv("TETHER_MAX_ROW_BYTES", str(size))
    assert len(triples(path)) == 2


def test_a_json_list_row_over_the_limit_is_named_by_index(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_MAX_ROW_BYTES", "100")
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "chosen": "y" * 90}]), encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_rows(str(path))
    # text of row 1: 11 (prompt) + 90 (chosen) + 3 (rejected) + 20 (the three keys) = 124
    assert str(err.value).startswith(f"{path}[1]: its text is 124 bytes, over the limit of 100")
    monkeypatch.setenv("TETHER_MAX_ROW_BYTES", "lots")
    with pytest.raises(DataError, match=r"^TETHER_MAX_ROW_BYTES='lots': expected a whole number"):
        read_rows(str(path))


def test_deep_nesting_is_a_data_error_at_any_depth(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = jsonl(tmp_path / "d.jsonl", GOOD, f'{{"prompt": {deep}, "chosen": "a", "rejected": "b"}}')
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert str(err.value) == (f"{path}:2: nested deeper than 64 levels; rows hold texts, "
                              "message lists and flat fields")
    # Past our limit but within Python's: the parse succeeds and the row check names the field.
    medium = jsonl(tmp_path / "m.jsonl", {**GOOD, "meta": json.loads("[" * 100 + "]" * 100)})
    with pytest.raises(DataError, match=r"m\.jsonl:1: field 'meta' is nested deeper than 64"):
        load_preferences(str(medium))
    as_list = tmp_path / "d.json"
    as_list.write_text(f"[{deep}]", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(as_list))}: nested deeper than 64"):
        read_rows(str(as_list))


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
    if name == "surrogate":
        f = jsonl(d / "s.jsonl", GOOD, r'{"prompt": "\ud800", "chosen": "a", "rejected": "b"}')
        return "train", [f"data={f}"], re.escape(f"{f}:2: field 'prompt' holds a lone surrogate")
    if name == "deep":
        f = jsonl(d / "deep.jsonl", '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return "train", [f"data={f}"], re.escape(f"{f}:1: nested deeper than 64 levels")
    if name == "template":
        f = jsonl(d / "t.jsonl", {"q": "x", "chosen": "a", "rejected": "b"})
        return "train", [f"data={f}", "prompt_template={q.__class__}"], re.escape(
            "prompt_template: '{q.__class__}' is not a plain field name")
    if name == "messages string":
        f = jsonl(d / "sft.jsonl", {"messages": "hello"})
        return "sft", [f"data={f}"], re.escape(f"{f}:1: field 'messages' must be a list")
    assert name == "long line"  # TETHER_MAX_ROW_BYTES=200 is set by the test
    long = {**GOOD, "prompt": "cat " * 100}
    f = jsonl(d / "long.jsonl", GOOD, long)
    return "train", [f"data={f}"], re.escape(f"{f}:2: the line is {len(json.dumps(long))} bytes, "
                                             "over the limit of 200 per row")


CLI_CASES = ["role", "surrogate", "deep", "template", "messages string", "long line"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_with_one_line_and_exit_2(case, tmp_path, llama_dir, capsys, monkeypatch):
    if case == "long line":
        monkeypatch.setenv("TETHER_MAX_ROW_BYTES", "200")
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


@pytest.mark.slow
def test_a_50_mb_line_is_refused_in_seconds_by_a_real_process(tmp_path, llama_dir):
    """`python -m tether train` on a 50 MB line: unguarded, the tokenizer took 16 GB. The child
    is capped at 2 GiB and a minute of CPU, so even unguarded code cannot take the machine."""
    data = jsonl(tmp_path / "huge.jsonl", GOOD, {**GOOD, "prompt": "the cat sat " * 4_400_000})
    size = len(data.read_text(encoding="utf-8").split("\n")[1].encode())
    assert size > 50_000_000

    def limits() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))

    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    env.pop("TETHER_MAX_ROW_BYTES", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "--quiet", "train", f"model={llama_dir}", f"data={data}",
         f"output_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, preexec_fn=limits,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == (
        f"tether train: error: {data}:2: the line is {size:,} bytes, over the limit of 4,194,304 "
        "per row; shorten the row, or raise the limit with the environment variable "
        "TETHER_MAX_ROW_BYTES=<bytes>\n"
    )
    assert not (tmp_path / "run" / "model").exists()
