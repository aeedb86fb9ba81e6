"""Where a one-line error is promised: outputs that cannot be written (a file in the way, a
read-only location, a full disk), damaged or pickled model weights and a hostile chat template.

Each case is a real ``python -m tether`` process: it must exit 2 with one ``tether <command>:
error:`` line naming the path, print no traceback, and lose nothing already written. Read-only
places and full disks are real tmpfs mounts where the test may mount (root); elsewhere a
read-only directory is a chmod, and a full disk is ``tether.io``'s ``TETHER_FAULT_ENOSPC`` hook.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_pairs, write_jsonl
from tether.training.checkpoint import latest_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tether(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tether", "--quiet", *args],
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True, text=True, timeout=180,
    )


def one_line_error(proc: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """The error line, after checking exit code 2, no traceback, and every needle in it."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"tether {command}: error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


def _mount(where: Path, options: str) -> bool:
    """A tmpfs at ``where``; False where this process may not mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be written to: a read-only tmpfs (root), else a chmod 555."""
    d = tmp_path / "readonly"
    if _mount(d, "ro,size=64k"):
        yield d
        _umount(d)
        return
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere, and this root may not mount a read-only tmpfs")
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


def _train_args(tmp: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["train", f"model={model}", f"data={tmp / 'pairs.jsonl'}", f"output_dir={out}",
            f"cache_dir={tmp / 'cache'}", "batch_size=4", "lr=1e-3", "progress=false",
            "device=cpu", *extra]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    return tmp_path


# --------------------------------------------------------------------------- outputs


def test_output_dir_that_is_a_file(data, llama_dir):
    taken = data / "notes.txt"
    taken.write_text("keep me\n")
    proc = tether(*_train_args(data, llama_dir, taken, "max_steps=1"))
    one_line_error(proc, "train", f"output_dir: {taken} is a file", "choose another output_dir")
    assert taken.read_text() == "keep me\n"


def test_train_into_a_read_only_place(data, llama_dir, readonly):
    proc = tether(*_train_args(data, llama_dir, readonly / "run", "max_steps=1"))
    one_line_error(proc, "train", str(readonly / "run"), "output_dir")


def test_eval_into_a_read_only_place(data, llama_dir, readonly):
    proc = tether("eval", f"model={llama_dir}", f"reference={llama_dir}",
                  f"data={data / 'pairs.jsonl'}", f"output_dir={readonly / 'ev'}",
                  f"cache_dir={data / 'cache'}", "judge=rule",
                  "judge_rule=tether.eval.rules:shorter", "progress=false", "device=cpu")
    one_line_error(proc, "eval", str(readonly / "ev"), "output_dir")


def test_pairs_into_a_read_only_place(data, readonly):
    proc = tether("pairs", f"data={data / 'pairs.jsonl'}", f"output={readonly / 'out.jsonl'}")
    one_line_error(proc, "pairs", str(readonly), "output")


def test_label_db_and_export_in_a_read_only_place(data, readonly):
    items = write_jsonl(data / "items.jsonl", make_pairs(3))
    proc = tether("label", "--items", str(items), "--db", str(readonly / "label.db"),
                  "--export", str(data / "prefs.jsonl"))
    one_line_error(proc, "label", str(readonly), "--db")
    db = data / "label.db"
    made = tether("label", "--items", str(items), "--db", str(db), "--export",
                  str(data / "prefs.jsonl"))
    assert made.returncode == 0, made.stderr
    before = db.read_bytes()
    proc = tether("label", "--db", str(db), "--export", str(readonly / "prefs.jsonl"))
    one_line_error(proc, "label", str(readonly / "prefs.jsonl"))
    assert db.read_bytes() == before  # the votes are untouched


def _disk(tmp_path: Path, model: Path, how: str) -> tuple[Path, dict[str, str]]:
    """A run directory where the second checkpoint does not fit: a tmpfs a little larger than
    one checkpoint (about three times the weights), or the fault hook at ``step-2``."""
    if how == "hook":
        return tmp_path / "run", {"TETHER_FAULT_ENOSPC": "step-2"}
    small = tmp_path / "small"
    weights = (model / "model.safetensors").stat().st_size
    if not _mount(small, f"size={(9 * weights) // 2 + 64 * 1024}"):
        pytest.skip("this process may not mount a tmpfs (the hook case covers the code)")
    return small / "run", {}


@pytest.mark.parametrize("how", ["tmpfs", "hook"])
def test_disk_full_while_checkpointing(data, llama_dir, how):
    out, env = _disk(data, llama_dir, how)
    try:
        proc = tether(*_train_args(data, llama_dir, out, "max_steps=3", "save_every=1",
                                   "keep_checkpoints=3"), env=env)
        one_line_error(proc, "train", f"{out / 'checkpoints' / 'step-2'}: cannot write",
                       "No space left on device", "step-1 is intact", "resume=true")
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]  # no leftovers
        assert (out / "config.yaml").is_file()
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "event" not in r] == [1, 2]  # health events aside
        if how == "tmpfs":  # room again: the run resumes from what was kept
            subprocess.run(["mount", "-o", "remount,size=16m", str(out.parent)], check=True)
            again = tether(*_train_args(data, llama_dir, out, "max_steps=3", "save_every=1",
                                        "keep_checkpoints=3", "resume=true"))
            assert again.returncode == 0, again.stderr[-3000:]
            assert latest_checkpoint(out).name == "step-3"
    finally:
        if how == "tmpfs":
            _umount(out.parent)


# --------------------------------------------------------------------------- models


def test_truncated_safetensors_weights(data, llama_dir, tmp_path):
    model = tmp_path / "truncated"
    shutil.copytree(llama_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    proc = tether(*_train_args(data, model, tmp_path / "run", "max_steps=1"))
    one_line_error(proc, "train", f"model: cannot load '{model}'", "damaged or incomplete")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tether-model-pickle-ran",))


def test_pickle_only_model_is_refused_never_unpickled(data, llama_dir, tmp_path):
    model = tmp_path / "pickled"
    shutil.copytree(llama_dir, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    Path("/tmp/tether-model-pickle-ran").unlink(missing_ok=True)
    proc = tether(*_train_args(data, model, tmp_path / "run", "max_steps=1"))
    one_line_error(proc, "train", f"model: cannot load '{model}'", "never pickle")
    assert not Path("/tmp/tether-model-pickle-ran").exists()


def test_hostile_chat_template_is_one_line(data, llama_dir, tmp_path):
    model = tmp_path / "hostile"
    shutil.copytree(llama_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{{ ''.__class__.__mro__[1].__subclasses__() }}"
                               "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
            for r in make_pairs(8)]
    write_jsonl(data / "pairs.jsonl", rows)
    proc = tether(*_train_args(data, model, tmp_path / "run", "max_steps=1"))
    one_line_error(proc, "train", "chat template failed", "SecurityError", "chat_template=off")
