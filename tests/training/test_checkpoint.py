"""Reliability: exact resume after SIGKILL, SIGTERM stop, atomic and refused checkpoints,
numeric guards. Training runs are real subprocesses killed at real steps."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_pairs, write_jsonl
from tether.config import TrainConfig, load_config
from tether.errors import CheckpointError, TrainingError
from tether.io import file_sha256
from tether.losses import LOSS_SPECS, LOSSES, LossOutput, register
from tether.training import checkpoint as ckpt_module
from tether.training.checkpoint import latest_checkpoint
from tether.training.loop import train

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _args(tmp: Path, model: Path, out: str, *extra: str) -> list[str]:
    return [f"model={model}", f"data={tmp / 'pairs.jsonl'}", f"output_dir={tmp / out}",
            "lr=1e-3", "batch_size=4", "max_steps=24", f"cache_dir={tmp / 'cache'}",
            "progress=false", "save_every=1", *extra]


def _tether(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tether", "--quiet", "train", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.002)


def _metric_steps(run: Path) -> list[int]:
    return [r["step"] for r in _rows(run)]


def _rows(run: Path) -> list[dict]:
    """Metric rows of metrics.jsonl (health events, tether.tracking, left out)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(96))
    return tmp_path


@pytest.fixture
def reference_run(data: Path, llama_dir: Path) -> Path:
    proc = _tether(_args(data, llama_dir, "full"))
    assert proc.wait(timeout=120) == 0, proc.communicate()[1]
    return data / "full"


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [2, 5])
def test_sigkill_then_resume_is_bitwise_equal(data, llama_dir, reference_run, kill_after):
    proc = _tether(_args(data, llama_dir, "part"))
    _wait_for(data / "part" / "checkpoints" / f"step-{kill_after}", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (data / "part" / "model").exists()  # it really died mid-run
    resumed = _tether(_args(data, llama_dir, "part", "resume=true"))
    assert resumed.wait(timeout=120) == 0, resumed.communicate()[1]
    a = (reference_run / "model" / "model.safetensors").read_bytes()
    b = (data / "part" / "model" / "model.safetensors").read_bytes()
    assert a == b
    assert _metric_steps(data / "part") == list(range(1, 25))  # every step exactly once
    full, part = _rows(reference_run), _rows(data / "part")
    assert [r["loss"] for r in full] == [r["loss"] for r in part]


@pytest.mark.slow
def test_sigterm_finishes_step_checkpoints_and_resumes(data, llama_dir, reference_run):
    proc = _tether(_args(data, llama_dir, "term", "save_every=0"))
    _wait_for(data / "term" / "metrics.jsonl", proc)  # training has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143  # stopped, not finished: 128 + SIGTERM
    assert "resume=true" in err
    ckpt = latest_checkpoint(data / "term")
    assert ckpt is not None
    step = int(ckpt.name.split("-")[1])
    assert _metric_steps(data / "term")[-1] == step  # the checkpoint is the last logged step
    resumed = _tether(_args(data, llama_dir, "term", "save_every=0", "resume=true"))
    assert resumed.wait(timeout=120) == 0
    a = (reference_run / "model" / "model.safetensors").read_bytes()
    assert a == (data / "term" / "model" / "model.safetensors").read_bytes()


def _cfg(data: Path, model: Path, out: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, _args(data, model, out, *extra))


def test_half_written_checkpoint_is_never_picked(data, llama_dir, monkeypatch):
    train(_cfg(data, llama_dir, "run", "max_steps=2"))
    run = data / "run"
    assert latest_checkpoint(run).name == "step-2"
    # A save killed before its rename leaves only a temporary directory: resume ignores it.
    (run / "checkpoints" / ".tmp-step-3-999").mkdir()
    (run / "checkpoints" / ".tmp-step-3-999" / "model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(run).name == "step-2"


def test_disk_full_during_save_keeps_previous_checkpoint(data, llama_dir, monkeypatch):
    real = ckpt_module.save_file
    calls = {"n": 0}

    def flaky(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (two save_file calls) succeeds
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_module, "save_file", flaky)
    with pytest.raises(CheckpointError) as err:
        train(_cfg(data, llama_dir, "full_disk", "max_steps=3"))
    msg = str(err.value)
    assert "No space left on device" in msg and "step-1 is intact" in msg and "\n" not in msg
    run = data / "full_disk"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-1"]
    monkeypatch.setattr(ckpt_module, "save_file", real)
    train(_cfg(data, llama_dir, "full_disk", "max_steps=3", "resume=true"))  # it resumes
    assert _metric_steps(run) == [1, 2, 3]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tether-pickle-ran",))


def test_checkpoint_with_pickle_payload_is_refused(data, llama_dir):
    train(_cfg(data, llama_dir, "pickled", "max_steps=1"))
    ckpt = latest_checkpoint(data / "pickled")
    Path("/tmp/tether-pickle-ran").unlink(missing_ok=True)
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_Payload()))
    # A crafted checkpoint carries matching checksums: it is refused as a file format.
    state = json.loads((ckpt / "state.json").read_text())
    state["files"]["model.safetensors"] = file_sha256(ckpt / "model.safetensors")
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="only safetensors and JSON"):
        train(_cfg(data, llama_dir, "pickled", "max_steps=2", "resume=true"))
    assert not Path("/tmp/tether-pickle-ran").exists()


def test_resume_with_different_config_is_refused_naming_the_difference(data, llama_dir):
    train(_cfg(data, llama_dir, "diff", "max_steps=1"))
    with pytest.raises(CheckpointError, match=r"beta: checkpoint None vs now 0\.5"):
        train(_cfg(data, llama_dir, "diff", "max_steps=1", "resume=true", "beta=0.5"))


def test_resume_true_without_checkpoint_is_an_error(data, llama_dir):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(_cfg(data, llama_dir, "none", "resume=true"))


@pytest.fixture
def nan_loss():
    """A test objective: DPO, except non-finite on the steps listed in ``bad``."""
    state = {"calls": 0, "bad": set()}

    @register("nan_test")
    def nan_test(pc, pr, rc, rr, *, beta):
        state["calls"] += 1
        out = LOSSES["dpo"](pc, pr, rc, rr, beta=beta)
        if state["calls"] in state["bad"]:
            return LossOutput(out.losses * float("nan"), out.chosen_rewards, out.rejected_rewards)
        return out

    yield state
    del LOSSES["nan_test"], LOSS_SPECS["nan_test"]


def test_non_finite_step_is_skipped_and_counted(data, llama_dir, nan_loss):
    nan_loss["bad"] = {2}
    run = train(_cfg(data, llama_dir, "nan", "loss=nan_test", "max_steps=3", "save_every=0"))
    rows = _rows(run)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in _weights(run))


def _weights(run: Path):
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors")).values()


def test_too_many_bad_steps_abort(data, llama_dir, nan_loss):
    nan_loss["bad"] = set(range(1, 100))
    with pytest.raises(TrainingError, match="3 steps in a row"):
        train(_cfg(data, llama_dir, "nan2", "loss=nan_test", "max_bad_steps=3", "save_every=0"))
