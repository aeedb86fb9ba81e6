"""The CLI: every user mistake is one line on stderr and exit code 2; success writes a run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_metrics
from tether.cli import main
from tether.config import TrainConfig, load_config

GOOD = {"prompt": "the cat sat", "chosen": " yes please", "rejected": " no"}
SRC = Path(__file__).resolve().parents[2] / "src"


def jsonl(path: Path, *lines: str | dict) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def quiet(tmp_path: Path) -> list[str]:
    return [f"output_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", "progress=false"]


def malformed_inputs(tmp_path: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (arguments after `train`, regex the error line must match after 'error: ')."""
    d = tmp_path
    bad_utf8 = d / "utf8.jsonl"
    bad_utf8.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9", "chosen": "a"}\n')
    cases = {
        "malformed JSON line": (
            jsonl(d / "m.jsonl", GOOD, GOOD, '{"prompt": "x", "chosen": '),
            r"{f}:3: malformed JSON \(Expecting value at column \d+\)",
        ),
        "wrong type": (
            jsonl(d / "t.jsonl", GOOD, {**GOOD, "rejected": 7}),
            r"{f}:2: field 'rejected' must be a string or a list of messages, got int",
        ),
        "missing field": (
            jsonl(d / "f.jsonl", {"prompt": "p", "chosen": "c"}),
            r"{f}:1: missing field 'rejected'; expected prompt/chosen/rejected",
        ),
        "empty text": (
            jsonl(d / "e.jsonl", GOOD, GOOD, {**GOOD, "chosen": "   "}),
            r"{f}:3: field 'chosen' is empty",
        ),
        "invalid UTF-8": (bad_utf8, r"{f}:2: invalid UTF-8 \(byte 0xe9\); re-encode"),
        "all pairs identical": (
            jsonl(d / "same.jsonl", {**GOOD, "rejected": GOOD["chosen"]}),
            r"{f}: no usable pairs left \(all 1 have chosen == rejected\)",
        ),
    }
    out = {k: ([f"model={model}", f"data={f}"], msg.replace("{f}", _re(f)))
           for k, (f, msg) in cases.items()}
    long = jsonl(d / "long.jsonl", {**GOOD, "prompt": "the cat sat on the mat " * 10})
    good = jsonl(d / "good.jsonl", GOOD)
    missing_model = d / "no-such-model"
    out.update({
        "all prompts longer than max_length": (
            [f"model={model}", f"data={long}", "max_length=12"],
            _re(long) + r": no rows left after truncation \(1 dropped: prompts longer than "
            r"max_length=12\)",
        ),
        "unknown config key": (
            [f"model={model}", f"data={good}", "betta=0.5"],
            r"overrides: unknown key 'betta' \(did you mean 'beta'\?\)$",
        ),
        "wrong value type": (
            [f"model={model}", f"data={good}", "batch_size=eight"],
            r"overrides: batch_size: expected an integer, got 'eight'$",
        ),
        "beta <= 0": (
            [f"model={model}", f"data={good}", "beta=-0.1"],
            r"overrides: beta: must be > 0, got -0.1$",
        ),
        "model path does not exist": (
            [f"model={missing_model}", f"data={good}"],
            r"model: '" + _re(missing_model) + r"' does not exist",
        ),
        "data file does not exist": (
            [f"model={model}", f"data={d / 'nope.jsonl'}"],
            _re(d / "nope.jsonl") + r": file not found",
        ),
    })
    return out


def _re(path: Path) -> str:
    return re.escape(str(path))


CASES = [
    "malformed JSON line", "wrong type", "missing field", "empty text", "invalid UTF-8",
    "all pairs identical", "all prompts longer than max_length", "unknown config key",
    "wrong value type", "beta <= 0", "model path does not exist", "data file does not exist",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_is_one_line_and_exit_2(case, tmp_path, llama_dir, capsys):
    args, pattern = malformed_inputs(tmp_path, llama_dir)[case]
    code = main(["train", *args, *quiet(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = "tether train: error: "
    assert lines[0].startswith(prefix)
    assert re.match(pattern, lines[0][len(prefix):]), lines[0]
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.slow
def test_real_process_exit_code_and_single_stderr_line(tmp_path, llama_dir):
    """`python -m tether` in fresh processes: exit code 2, one stderr line, no traceback."""
    cases = malformed_inputs(tmp_path, llama_dir)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = {}
    for case in ("malformed JSON line", "all prompts longer than max_length"):
        args, _ = cases[case]
        # --quiet: the info lines that precede an error (data summary, truncation audit) are
        # not the error; without them stderr must be exactly the error.
        # each its own output_dir: two runs into one directory are refused (one writer)
        cmd = [sys.executable, "-m", "tether", "--quiet", "train", *args, *quiet(tmp_path),
               f"output_dir={tmp_path / case.replace(' ', '-')}"]
        procs[case] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env, cwd=tmp_path)
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, err)
        assert "Traceback" not in err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("tether train: error: ")
        assert out == ""


def test_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in ("model", "data", "eval_data", "output_dir", "loss", "beta", "label_smoothing",
                "lr", "batch_size", "grad_accum", "max_steps", "epochs", "warmup_steps",
                "max_length", "max_prompt_length", "seed", "reference", "dtype"):
        assert f"\n  {key} " in out, key
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_train_from_yaml_with_overrides(tmp_path, llama_dir, pairs_file, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {llama_dir}\ndata: {pairs_file}\nbeta: 0.5\nmax_steps: 5\nbatch_size: 4\n",
        encoding="utf-8",
    )
    code = main(["train", str(config), "max_steps=2", "lr=1e-3", *quiet(tmp_path)])
    assert code == 0
    run = tmp_path / "run"
    assert f"run directory: {run}" in capsys.readouterr().out
    cfg = load_config(TrainConfig, run / "config.yaml")
    assert (cfg.beta, cfg.max_steps, cfg.lr, cfg.batch_size) == (0.5, 2, 1e-3, 4)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert (run / "model" / "model.safetensors").exists()


def test_sft_command(tmp_path, llama_dir):
    data = jsonl(tmp_path / "sft.jsonl", {"prompt": "the cat", "completion": " sat"},
                 {"prompt": "a dog", "completion": " ran"})
    assert main(["sft", f"model={llama_dir}", f"data={data}", "max_steps=1", "batch_size=2",
                 *quiet(tmp_path)]) == 0
    assert load_config(TrainConfig, tmp_path / "run" / "config.yaml").loss == "sft"
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_debug_shows_the_traceback_that_plain_runs_hide():
    import subprocess
    import sys
    from pathlib import Path

    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    args = [sys.executable, "-m", "tether", "train", "model=m", "data=d.jsonl", "bta=1"]
    plain = subprocess.run(args, capture_output=True, text=True, env=env)
    debug = subprocess.run([*args[:3], "--debug", *args[3:]], capture_output=True, text=True,
                           env=env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "unknown key 'bta' (did you mean 'beta'?)" in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
