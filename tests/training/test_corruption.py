"""Corrupted caches and checkpoints: an altered reference cache is scored again, an altered
checkpoint is refused with the file named, and a loop position that cannot be is refused.

Everything here is written by real training runs and then damaged on disk the way a bad disk,
a truncated copy or a hand edit would damage it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.errors import CheckpointError
from tether.model.loading import load_model
from tether.training.checkpoint import LoopState, latest_checkpoint, load_checkpoint
from tether.training.loop import train
from tether.training.reference import Precomputed
from tether.training.sharded_checkpoint import load_any_checkpoint, save_sharded_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")


def flip_bytes(path: Path, n: int = 400) -> None:
    """XOR ``n`` bytes of a safetensors file's tensor data (its header stays valid)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    assert len(raw) - start >= n, path
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- reference cache


def rows_of(tokenizer, n):
    records = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in make_pairs(n)]
    return tokenize_records(tokenizer, records, chat=False, max_length=64)[0]


def build(model, splits, tokenizer, cache_dir):
    return Precomputed.build(model, splits, pad_id=tokenizer.pad_token_id, batch_size=3, device=torch.device("cpu"),
                             chunk=4, cache_dir=cache_dir, settings={"dtype": "float32"},
                             progress=False)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _wrong_shape(path: Path) -> None:
    save_file({"sums": torch.zeros(2, 2)}, str(path))


def _wrong_values(path: Path) -> None:
    """A valid file, same shape and metadata, other numbers: only a checksum can tell."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    sums = load_file(str(path))["sums"]
    save_file({"sums": sums * 0 + 100.0}, str(path), metadata=metadata)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _wrong_shape, _wrong_values])
def test_damaged_reference_cache_is_scored_again(llama_dir, tokenizer, tmp_path, caplog,
                                                 damage):
    policy = load_model(str(llama_dir))
    rows = rows_of(tokenizer, 6)
    first = build(policy, {"train": rows}, tokenizer, tmp_path)
    (path,) = tmp_path.glob("ref-*.safetensors")
    damage(path)
    with caplog.at_level(logging.WARNING, logger="tether"):
        again = build(policy, {"train": rows}, tokenizer, tmp_path)
    assert again.cache_hits == 0
    assert torch.equal(again.table["train"], first.table["train"])
    assert str(path) in caplog.text and "scoring again" in caplog.text
    healed = build(policy, {"train": rows}, tokenizer, tmp_path)  # the entry was rewritten
    assert healed.cache_hits == 1 and torch.equal(healed.table["train"], first.table["train"])


def test_reference_cache_with_wrong_values_does_not_reach_the_loss(llama_dir, tmp_path):
    """The issue's symptom: a valid cache file with other numbers gave a first loss of 112."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    cfg = train_config(tmp_path, model=str(llama_dir), data=str(data), max_steps=1)
    train(cfg)
    (path,) = (tmp_path / "cache").rglob("ref-*.safetensors")
    _wrong_values(path)
    run = train(dataclasses.replace(cfg, overwrite=True))  # the same run again, same cache
    # policy == reference at step 1: every pair's loss is exactly log 2
    assert read_metrics(run)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama_dir) -> Path:
    """A run of 2 steps with a checkpoint after each (step-1, step-2)."""
    root = tmp_path_factory.mktemp("corrupt")
    data = write_jsonl(root / "pairs.jsonl", make_pairs(16))
    train(train_config(root, model=str(llama_dir), data=str(data), save_every=1,
                       keep_checkpoints=5))
    return root


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run's directory (a test may damage it); the data stays
    where it was trained from, since its path is part of what a resume must match."""
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path


def _resume(root: Path, llama_dir: Path, trained: Path, **extra: object) -> Path:
    return train(train_config(root, model=str(llama_dir), data=str(trained / "pairs.jsonl"),
                              save_every=1, keep_checkpoints=5, resume=True, **extra))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors",
                                  "rng.safetensors"])
def test_checkpoint_with_flipped_bytes_is_refused_naming_the_file(run, llama_dir, trained,
                                                                   name):
    bad = run / "run" / "checkpoints" / "step-2" / name
    flip_bytes(bad)
    with pytest.raises(CheckpointError) as err:
        _resume(run, llama_dir, trained, max_steps=3)
    msg = str(err.value)
    assert f"{bad}: corrupted" in msg and "resume from step-1" in msg and "\n" not in msg
    assert not (run / "run" / "model.tmp").exists()


def test_following_the_advice_resumes_from_the_earlier_checkpoint(run, llama_dir, trained):
    flip_bytes(run / "run" / "checkpoints" / "step-2" / "model.safetensors")
    shutil.rmtree(run / "run" / "checkpoints" / "step-2")
    _resume(run, llama_dir, trained, max_steps=3)
    assert [r["step"] for r in read_metrics(run / "run")] == [1, 2, 3]


def _edit_state(run: Path, step: str, edit) -> Path:
    state = run / "run" / "checkpoints" / step / "state.json"
    meta = json.loads(state.read_text())
    edit(meta["loop"])
    state.write_text(json.dumps(meta))
    return state


@pytest.mark.parametrize("edit, expected", [
    (lambda loop: loop.update(step=-5), "step=-5"),
    (lambda loop: loop.update(step_in_epoch=-1), "step_in_epoch=-1"),
    (lambda loop: loop.update(tokens="many"), "tokens='many'"),
    (lambda loop: loop.update(epoch=True), "epoch=True"),
    (lambda loop: loop.pop("metrics_lines"), "must have exactly the keys"),
    (lambda loop: loop.update(step=7), "holds step 7, but the directory is step-2"),
])
def test_hand_edited_loop_state_is_refused(run, llama_dir, trained, edit, expected):
    state = _edit_state(run, "step-2", edit)
    with pytest.raises(CheckpointError) as err:
        _resume(run, llama_dir, trained, max_steps=3)
    assert str(err.value).startswith(f"{state}:") and expected in str(err.value)


def test_loop_state_checks_its_fields():
    good = {"step": 3, "epoch": 0, "step_in_epoch": 3, "metrics_lines": 3, "tokens": 90,
            "bad_steps": 0, "skipped_steps": 0}
    assert LoopState.from_saved(good, "s.json") == LoopState(**good)
    with pytest.raises(CheckpointError, match=r"s\.json: loop position bad_steps=1\.5"):
        LoopState.from_saved({**good, "bad_steps": 1.5}, "s.json")
    with pytest.raises(CheckpointError, match="must have exactly the keys"):
        LoopState.from_saved({**good, "extra": 1}, "s.json")
    with pytest.raises(CheckpointError, match="got list"):
        LoopState.from_saved([], "s.json")


def test_corrupted_checkpoint_is_one_line_and_exit_2_from_the_cli(run, llama_dir, trained):
    bad = run / "run" / "checkpoints" / "step-2" / "optimizer.safetensors"
    flip_bytes(bad)
    before = (run / "run" / "metrics.jsonl").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "--quiet", "train", f"model={llama_dir}",
         f"data={trained / 'pairs.jsonl'}", f"output_dir={run / 'run'}",
         f"cache_dir={trained / 'cache'}", "batch_size=4", "max_steps=3", "lr=1e-3",
         "progress=false", "device=cpu", "save_every=1", "keep_checkpoints=5", "resume=true"],
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tether train: error: ") and f"{bad}: corrupted" in last
    assert (run / "run" / "metrics.jsonl").read_bytes() == before  # nothing written is lost


def test_sharded_checkpoint_with_a_flipped_shard_is_refused(llama_dir, tmp_path):
    """A DCP checkpoint (torchrun's format), written and read in one plain process."""
    model = load_model(str(llama_dir))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    state = LoopState(step=1, step_in_epoch=1, metrics_lines=1)
    path = save_sharded_checkpoint(tmp_path, model, opt, sched, state, {"k": 1}, keep=2)
    assert latest_checkpoint(tmp_path) == path
    assert load_any_checkpoint(path, model, opt, sched, {"k": 1}) == state  # sound: resumes
    (shard,) = path.glob("*.distcp")
    flip_bytes_raw(shard)
    with pytest.raises(CheckpointError, match=f"{shard}: corrupted"):
        load_any_checkpoint(path, model, opt, sched, {"k": 1})


def flip_bytes_raw(path: Path, n: int = 400) -> None:
    """XOR ``n`` bytes in the middle of any file."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    for i in range(mid, mid + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_single_process_loader_verifies_too(run, llama_dir):
    """``load_checkpoint`` itself (not only the loop's resume) refuses a damaged file."""
    path = run / "run" / "checkpoints" / "step-1"
    flip_bytes(path / "model.safetensors")
    model = load_model(str(llama_dir))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    fingerprint = json.loads((path / "state.json").read_text())["fingerprint"]
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupted.*start again"):
        load_checkpoint(path, model, opt, sched, fingerprint)
