"""Exit codes a script can trust (issue 14): an evaluation without a single verdict fails,
``--debug`` keeps code 2, ``--quiet`` works after the subcommand, ``tether --version``, and
``tether pairs`` never writes over its own input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_pairs, write_jsonl
from tether import __version__
from tether.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _tether(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tether", *args], env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_debug_adds_the_traceback_but_keeps_exit_code_2():
    args = ["train", "model=m", "data=d.jsonl", "bta=1"]
    plain, debug = _tether(*args), _tether("--debug", *args)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    line = "tether train: error: overrides: unknown key 'bta' (did you mean 'beta'?)"
    assert plain.stderr.strip() == line and debug.stderr.strip().endswith(line)


def test_quiet_and_debug_work_after_the_subcommand(tmp_path, llama_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_pairs(1)[0]) + '\n{"prompt": ', encoding="utf-8")
    args = [f"model={llama_dir}", f"data={bad}", f"output_dir={tmp_path / 'run'}",
            "progress=false"]
    done = _tether("train", "--quiet", "--debug", *args)
    assert done.returncode == 2
    assert " INFO " not in done.stderr and "rows kept" not in done.stderr  # --quiet took effect
    assert "Traceback" in done.stderr  # so did --debug
    assert done.stderr.splitlines()[-1].startswith(f"tether train: error: {bad}:2: malformed")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"tether {__version__}\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_eval_without_a_single_verdict_fails_and_keeps_the_results(
    tmp_path, llama_dir, gpt2_dir, capsys
):
    data = write_jsonl(tmp_path / "heldout.jsonl", make_pairs(6))
    common = [f"model={gpt2_dir}", f"reference={llama_dir}", f"data={data}",
              f"output_dir={tmp_path / 'ev'}", f"cache_dir={tmp_path / 'cache'}",
              "max_new_tokens=4", "progress=false", "implicit_reward=off"]
    assert main(["eval", *common, "judge=rule", "judge_rule=tether.eval.rules:shorter"]) == 0
    results = tmp_path / "ev" / "eval" / "results.json"
    before = results.read_bytes()
    assert json.loads(before)["n"] == 6
    capsys.readouterr()
    # Every call fails: the judge's server is down (connection refused, no retries).
    code = main(["eval", *common, "judge=openai", "judge_model=judge", "judge_retries=0",
                 f"judge_url=http://127.0.0.1:{_closed_port()}/v1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines()[-1].startswith("tether eval: error: no verdicts: none of the ")
    assert "win-rate" not in out
    assert results.read_bytes() == before  # the earlier results are not replaced


def test_pairs_refuses_to_write_over_its_input(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    before = data.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    for output in (data, link):
        assert main(["pairs", f"data={data}", f"output={output}"]) == 2
        line = capsys.readouterr().err.strip()
        assert f"output: {output} is the input data file" in line and "\n" not in line
    assert data.read_bytes() == before
    assert main(["pairs", f"data={data}", f"output={tmp_path / 'out.jsonl'}"]) == 0
