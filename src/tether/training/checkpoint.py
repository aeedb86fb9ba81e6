"""Resumable checkpoints, written atomically, verified and read without unpickling anything.

``checkpoints/step-N/`` holds the policy weights and the optimizer state (safetensors), the
scheduler, RNG states and the loop position (JSON). It is built in a temporary directory,
every file fsynced, then renamed into place: a checkpoint directory that exists is complete,
so a kill during a save leaves only a ``.tmp-*`` directory that resume ignores (and the next
save removes). The last ``keep_checkpoints`` are kept.

``state.json`` records the SHA-256 of every other file; resuming re-hashes them and refuses a
checkpoint whose bytes changed (a flipped bit, a truncated copy) with the file named, and
refuses a loop position that cannot be (a negative step, a step other than the directory's).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from tether.errors import CheckpointError
from tether.io import atomic_write, file_sha256, write_text

__all__ = [
    "LoopState", "checkpoint_failed", "checkpoint_paths", "latest_checkpoint", "load_checkpoint",
    "optimizer_state_by_name", "prepare_checkpoint", "prune_checkpoints", "publish_checkpoint",
    "read_state", "resume_from", "save_checkpoint", "write_state",
]

STEP_DIR = re.compile(r"^step-(\d+)$")

log = logging.getLogger("tether")


@dataclass
class LoopState:
    """Where the loop is: enough to continue as if it had never stopped."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0  # steps of ``epoch`` already done
    metrics_lines: int = 0  # lines of metrics.jsonl written up to this step
    tokens: int = 0
    bad_steps: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0  # all non-finite steps so far

    @classmethod
    def from_saved(cls, raw: Any, where: str) -> LoopState:
        """The state ``state.json`` holds, every field a non-negative integer (a hand-edited
        step -5 would run negative steps); ``where`` names the file in the error."""
        names = [f.name for f in fields(cls)]
        if not isinstance(raw, dict) or set(raw) != set(names):
            raise CheckpointError(
                f"{where}: 'loop' must have exactly the keys {', '.join(names)}, got "
                f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}; the file was "
                "edited or is not tether's"
            )
        bad = [f"{k}={raw[k]!r}" for k in names
               if type(raw[k]) is not int or raw[k] < 0]  # bool is not a count
        if bad:
            raise CheckpointError(
                f"{where}: loop position {', '.join(bad)} is not a non-negative integer; "
                "the file was edited or is corrupted: delete this checkpoint to resume from "
                "an earlier one"
            )
        return cls(**raw)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state: Any = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].copy())}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    meta: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], *np_state[2:]]
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: Any) -> None:
    torch.set_rng_state(tensors["torch"])
    for k, v in tensors.items():
        if k.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state(v, int(k[4:]))
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["numpy_keys"].numpy(), *n[1:]))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {
        f"{pid}.{k}": v.detach().contiguous()
        for pid, st in sd["state"].items()
        for k, v in st.items()
        if isinstance(v, torch.Tensor)
    }
    scalars = {
        str(pid): {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
        for pid, st in sd["state"].items()
    }
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- atomic steps
# Shared by the single-process and the sharded (DCP) checkpoint: a directory is built under a
# temporary name, every file fsynced, then renamed into place, then old ones are pruned.


def checkpoint_paths(run_dir: Path, step: int, suffix: str = "") -> tuple[Path, Path]:
    """(final, temporary) directory of the checkpoint of step ``step``."""
    root = run_dir / "checkpoints"
    return root / f"step-{step}", root / f".tmp-step-{step}{suffix}"


def prepare_checkpoint(tmp: Path) -> None:
    """Create ``tmp`` after removing the leftovers of saves that were killed half-way."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    for stale in tmp.parent.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()


def write_state(tmp: Path, meta: dict[str, Any]) -> None:
    """The RNG states (safetensors), then ``state.json``: ``meta``, the RNG's JSON half and
    the SHA-256 of every other file in ``tmp`` (so it is written last)."""
    rng_tensors, rng_meta = _rng_state()
    atomic_write(tmp / "rng.safetensors", lambda f: save_file(rng_tensors, str(f)))
    files = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())
             if f.is_file() and f.name != "state.json"}
    write_text(tmp / "state.json",
               json.dumps({**meta, "rng": rng_meta, "files": files}, default=_jsonable))


def publish_checkpoint(tmp: Path, final: Path) -> None:
    """fsync every file of ``tmp`` and ``tmp`` itself, then rename it to ``final`` (replacing a
    previous save of the same step: a run resumed and stopped again)."""
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(final.parent)


def checkpoint_failed(final: Path, tmp: Path | None, error: BaseException) -> CheckpointError:
    """Remove the half-written ``tmp`` (if this process owns it); the one-line error names the
    checkpoint still intact."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    prev = latest_checkpoint(final.parent.parent)
    kept = f"; {prev.name} is intact" if prev else ""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return CheckpointError(
        f"{final}: cannot write checkpoint ({reason.splitlines()[0] if reason else error!r})"
        f"{kept}; free disk space and resume with resume=true"
    )


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints (all of them when ``keep`` <= 0)."""
    for old in sorted(_complete(run_dir / "checkpoints"), key=_step)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: LoopState,
    fingerprint: dict[str, Any],
    keep: int,
    export: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune old ones; returns its path.
    ``export(dir)`` adds files to the checkpoint before it is published (the model's config
    and tokenizer: ``tether.model.export``)."""
    final, tmp = checkpoint_paths(run_dir, state.step, f"-{os.getpid()}")
    try:
        prepare_checkpoint(tmp)
        atomic_write(tmp / "model.safetensors", lambda f: save_model(model, str(f)))
        if export is not None:
            export(tmp)
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        atomic_write(tmp / "optimizer.safetensors", lambda f: save_file(opt_tensors, str(f)))
        write_state(tmp, {"loop": state.__dict__, "scheduler": scheduler.state_dict(),
                          "optimizer": opt_meta, "fingerprint": fingerprint})
        publish_checkpoint(tmp, final)
    except OSError as e:
        raise checkpoint_failed(final, tmp, e) from None
    prune_checkpoints(run_dir, keep)
    return final


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def _step(p: Path) -> int:
    m = STEP_DIR.match(p.name)
    return int(m.group(1)) if m else -1


def _complete(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    found = _complete(root)
    return max(found, key=_step) if found else None


def read_state(path: Path, fingerprint: dict[str, Any], verify: bool = True) -> dict[str, Any]:
    """``state.json`` of a checkpoint, after checking it belongs to this run (same config and
    data: ``fingerprint``; a CheckpointError names every difference), that its loop position
    is sound and (``verify``) that every file still has the checksum it was written with."""
    try:
        meta: dict[str, Any] = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/state.json: unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}/state.json: not a tether checkpoint state (an object)")
    saved = meta.get("fingerprint", {})
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {fingerprint[k]!r}"
            for k in fingerprint if saved.get(k) != fingerprint[k]]
    if diff:
        raise CheckpointError(
            f"{path}: refusing to resume a different run ({'; '.join(diff)}); use the same "
            "config or a new output_dir"
        )
    loop = LoopState.from_saved(meta.get("loop"), f"{path}/state.json")
    if loop.step != _step(path):
        raise CheckpointError(
            f"{path}/state.json: holds step {loop.step}, but the directory is "
            f"{path.name}; the file was edited or moved: {_fallback(path)}"
        )
    if verify:
        verify_files(path, meta)
    return meta


def verify_files(path: Path, meta: dict[str, Any]) -> None:
    """Every file ``state.json`` lists has the SHA-256 it was written with, else a
    CheckpointError naming the file. Checkpoints of an older tether list none (warned)."""
    files = meta.get("files")
    if not isinstance(files, dict):
        log.warning("%s: no checksums (written by an older tether); not verified", path)
        return
    for name, want in sorted(files.items()):
        try:
            got = file_sha256(path / name)
        except OSError as e:
            raise CheckpointError(f"{path}/{name}: unreadable ({e.strerror or e}); "
                                  f"{_fallback(path)}") from None
        if got != want:
            raise CheckpointError(
                f"{path}/{name}: corrupted (SHA-256 {got[:12]}…, written as {want[:12]}…); "
                f"{_fallback(path)}"
            )


def _fallback(path: Path) -> str:
    """How to go on without the checkpoint at ``path``."""
    earlier = [p for p in _complete(path.parent) if _step(p) < _step(path)]
    if earlier:
        return f"delete {path} to resume from {max(earlier, key=_step).name}"
    return "delete it and start again with resume=false"


def optimizer_state_by_name(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], names: list[str]
) -> dict[str, Any]:
    """The optimizer state that ``save_checkpoint`` wrote (keyed by parameter index), keyed by
    parameter name instead: the layout torch.distributed's ``set_state_dict`` takes.
    ``names``: the trainable parameters' names in the optimizer's order."""
    state: dict[str, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(names[int(pid)], {})[name] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(names[int(pid)], {}).update(sc)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
) -> LoopState:
    """Restore everything ``save_checkpoint`` wrote, after checking it belongs to this run.

    Only safetensors and JSON are read: a file carrying a pickle payload fails to parse and
    is refused, it is never unpickled.
    """
    meta = read_state(path, fingerprint)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}/model.safetensors: weights do not match the model "
                f"(missing {len(missing)}, unexpected {len(unexpected)})"
            )
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        _load_optimizer(optimizer, opt_tensors, meta["optimizer"])
        _set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a valid tether checkpoint ({type(e).__name__}: {str(e).splitlines()[0]});"
            " only safetensors and JSON are accepted"
        ) from None
    scheduler.load_state_dict(meta["scheduler"])
    return LoopState(**meta["loop"])  # checked by read_state


def resume_from(resume: bool | str, run_dir: Path) -> Path | None:
    """The checkpoint ``resume`` asks for: the newest (true/auto), one named by path, or none."""
    if resume in (True, "auto"):
        return latest_checkpoint(run_dir)
    if not resume:
        return None
    path = Path(str(resume)).expanduser()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"resume: {path} is not a checkpoint (no state.json); pass "
                              "true, auto or a checkpoints/step-N directory")
    return path.resolve()
