"""A run directory stays trustworthy (issue 14): one writer at a time, an earlier run or the
input model is never silently replaced, a non-finite model is never saved, the final save is
one switch that a full disk or a kill cannot break, and a stopped run exits non-zero.

Concurrency, signals and the full disk are real: separate ``python -m tether`` processes, real
SIGTERM/SIGINT/SIGKILL, and a file-size limit (RLIMIT_FSIZE) that makes the kernel refuse the
write."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import make_pairs, read_metrics, write_jsonl
from tether.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
ERROR = "tether train: error: "


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32))


def _args(tmp: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [f"model={model}", f"data={data}", f"output_dir={tmp / 'run'}", "batch_size=4",
            "lr=1e-3", "max_steps=2", f"cache_dir={tmp / 'cache'}", "progress=false", *extra]


def _spawn(args: list[str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tether", "--quiet", "train", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)  # type: ignore[call-overload]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and lines[-1].startswith(ERROR) and "Traceback" not in err, err
    return lines[-1][len(ERROR):]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".tether.lock"}


# --------------------------------------------------------------------------- one writer


def test_second_run_into_a_busy_output_dir_is_refused(tmp_path, llama_dir, data, capsys):
    first = _spawn(_args(tmp_path, llama_dir, data, "max_steps=100000"))
    run = tmp_path / "run"
    _wait_for(run / "metrics.jsonl", first)  # the first run (another process) is training
    assert main(["train", *_args(tmp_path, llama_dir, data, "beta=0.5")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{ERROR}output_dir {run}: in use by another tether process (pid {first.pid}); wait "
        "for the other run to end, or choose another output_dir")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert "beta: 0.5" not in (run / "config.yaml").read_text()  # still the first run's
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, len(steps) + 1))  # every line of the first run, once


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_checkpoints_and_exits_non_zero(tmp_path, llama_dir, data, sig, code):
    proc = _spawn(_args(tmp_path, llama_dir, data, "max_steps=100000"))
    run = tmp_path / "run"
    _wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code  # `tether train && tether eval` stops here
    line = _error_line(err)
    found = re.fullmatch(rf"stopped by {sig.name} at step (\d+); checkpoint written\. Resume "
                         r"with the same command plus resume=true", line)
    assert found, line
    step = int(found.group(1))
    assert (run / "checkpoints" / f"step-{step}" / "model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(run)][-1] == step
    assert not (run / "model").exists()


# --------------------------------------------------------------------------- no silent replacement


def test_rerun_is_refused_keeping_the_run_and_overwrite_starts_over(
    tmp_path, llama_dir, data, capsys
):
    args = _args(tmp_path, llama_dir, data, "save_every=1")
    run = tmp_path / "run"
    assert main(["train", *args]) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", *args, "beta=0.5"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{ERROR}output_dir: {run} already holds a run (metrics.jsonl, model, checkpoints); "
        "resume=true continues it, overwrite=true replaces it, or choose another output_dir")
    assert _snapshot(run) == before  # config, metrics, model, checkpoints untouched
    # resume=auto continues the run it finds (max_steps may grow)
    assert main(["train", *args, "resume=auto", "max_steps=3"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    # overwrite=true: the earlier run's files go first, the old checkpoints with them
    assert main(["train", *args, "overwrite=true", "save_every=0", "beta=0.5"]) == 0
    assert not (run / "checkpoints").exists()
    assert "beta: 0.5" in (run / "config.yaml").read_text()
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def test_a_run_that_failed_in_its_setup_may_be_retried(tmp_path, llama_dir, data):
    run = tmp_path / "run"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": \n', encoding="utf-8")
    assert main(["train", *_args(tmp_path, llama_dir, bad)]) == 2
    assert (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    assert main(["train", *_args(tmp_path, llama_dir, data)]) == 0


def test_training_in_place_is_refused_even_with_overwrite(tmp_path, llama_dir, data, capsys):
    run = tmp_path / "run"
    assert main(["train", *_args(tmp_path, llama_dir, data)]) == 0
    before = _snapshot(run)
    for extra in ([], ["overwrite=true"], ["resume=auto"]):
        capsys.readouterr()
        code = main(["train", *_args(tmp_path, run / "model", data, *extra)])
        assert code == 2
        line = capsys.readouterr().err.splitlines()[-1]
        assert line.startswith(f"{ERROR}model: {run / 'model'} is inside output_dir {run}"), line
        assert "starting weights would be lost" in line
        assert _snapshot(run) == before


# --------------------------------------------------------------------------- non-finite weights


def test_lr_inf_saves_no_model(tmp_path, llama_dir, data):
    # lr=inf may also be refused by a range check; either way no model/ and exit code 2
    assert main(["train", *_args(tmp_path, llama_dir, data, "lr=inf")]) == 2
    assert not (tmp_path / "run" / "model").exists()


def test_non_finite_weights_are_never_saved(tmp_path, llama_dir, data, capsys):
    start = tmp_path / "nan-model"
    shutil.copytree(llama_dir, start)
    weights = load_file(str(start / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(start / "model.safetensors"), metadata={"format": "pt"})
    assert main(["train", *_args(tmp_path, start, data, "max_steps=1")]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"{ERROR}training ended with non-finite weights"), line
    assert "model/ was not written" in line
    assert not (tmp_path / "run" / "model").exists()


# --------------------------------------------------------------------------- the final save


def _file_size_limit() -> None:
    """In the child: writes past 100 kB fail with EFBIG, like a full disk (the model is 200 kB)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_failed_final_save_keeps_the_model_and_leaves_no_temporary_copy(
    tmp_path, llama_dir, data
):
    run = tmp_path / "run"
    assert main(["train", *_args(tmp_path, llama_dir, data, "save_every=2")]) == 0
    model = (run / "model" / "model.safetensors").read_bytes()
    proc = _spawn(_args(tmp_path, llama_dir, data, "resume=true", "max_steps=4"),
                  preexec_fn=_file_size_limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert (run / "model" / "model.safetensors").read_bytes() == model
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("model")) == ["model"]


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import torch
from tether.model.loading import load_model, load_tokenizer, save_model

out = Path(sys.argv[1])
model, tokenizer = load_model(str(out)), load_tokenizer(str(out))
with torch.no_grad():
    next(model.parameters()).add_(1.0)  # the new model differs from the saved one
rename = os.rename

def kill_before_switching_in(src, dst):
    if Path(dst) == out:  # model.tmp -> model: the old model is already moved aside
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)

os.rename = kill_before_switching_in
save_model(model, tokenizer, out)
"""


def test_a_save_killed_between_its_renames_is_finished_by_the_next_reader(
    tmp_path, llama_dir, data
):
    run = tmp_path / "run"
    assert main(["train", *_args(tmp_path, llama_dir, data)]) == 0
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(run / "model")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "model").exists()  # the state a kill leaves: no model/ at all
    new = (run / "model.tmp" / "model.safetensors").read_bytes()
    assert (run / "model.old").is_dir()
    code = main(["eval", f"model={run}", f"data={data}", "judge=rule",
                 "judge_rule=tether.eval.rules:shorter", "max_new_tokens=2", "max_prompts=1",
                 "progress=false", f"cache_dir={tmp_path / 'cache'}", "implicit_reward=off"])
    assert code == 0
    assert (run / "model" / "model.safetensors").read_bytes() == new
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("model")) == ["model"]
