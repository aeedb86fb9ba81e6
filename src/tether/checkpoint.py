"""Resumable checkpoints, written atomically, read without unpickling anything.

``checkpoints/step-N/`` holds the policy weights and the optimizer state (safetensors), the
scheduler, RNG states and the loop position (JSON). It is built in a temporary directory,
every file fsynced, then renamed into place: a checkpoint directory that exists is complete,
so a kill during a save leaves only a ``.tmp-*`` directory that resume ignores (and the next
save removes). The last ``keep_checkpoints`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from tether.errors import CheckpointError

__all__ = ["LoopState", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

STEP_DIR = re.compile(r"^step-(\d+)$")


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


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: LoopState,
    fingerprint: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune old ones; returns its path."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}-{os.getpid()}"
    try:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        meta = {
            "loop": state.__dict__,
            "scheduler": scheduler.state_dict(),
            "optimizer": opt_meta,
            "rng": rng_meta,
            "fingerprint": fingerprint,
        }
        (tmp / "state.json").write_text(json.dumps(meta, default=_jsonable), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # a re-save of the same step (resumed and stopped again)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(run_dir)
        kept = f"; {prev.name} is intact" if prev else ""
        raise CheckpointError(
            f"{final}: cannot write checkpoint ({e.strerror or e}){kept}; free disk space and "
            "resume with resume=true"
        ) from None
    for old in sorted(_complete(root), key=_step)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
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
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/state.json: unreadable ({e})") from None
    saved = meta.get("fingerprint", {})
    diff = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {fingerprint[k]!r}"
        for k in fingerprint
        if saved.get(k) != fingerprint[k]
    ]
    if diff:
        raise CheckpointError(
            f"{path}: refusing to resume a different run ({'; '.join(diff)}); use the same "
            "config or a new output_dir"
        )
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
    return LoopState(**meta["loop"])
