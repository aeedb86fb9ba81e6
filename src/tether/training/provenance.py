"""``run.json``: where, when, with what and by which command a run ran, and how fast.

Written when the run starts (``finished: null``) and again when it ends, with the end-of-run
summary: train runtime, samples/s, tokens/s, peak memory and where the model is. No token or
other environment variable is recorded; the command line is ``sys.argv`` as typed.
"""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tether.io import write_json

__all__ = ["RunRecord", "command_line", "summary_line", "versions"]

_PACKAGES = ("tether", "torch", "transformers", "peft", "safetensors", "huggingface_hub",
             "datasets")


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages a run depends on (None: absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    return out


def command_line() -> str:
    """The command as typed (``tether train ...``), or the Python program that called train."""
    args = list(sys.argv)
    if args and Path(args[0]).name in ("tether", "__main__.py"):
        args[0] = "tether"
    return shlex.join(args)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): the CUDA allocator's peak, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib / 2**20, "process rss"


@dataclass
class RunRecord:
    """run.json of one run directory; ``start`` writes it, ``finish`` completes it."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)
    _clock: float = 0.0

    @classmethod
    def start(cls, run_dir: Path, write: bool = True) -> RunRecord:
        rec = cls(run_dir / "run.json", {
            "started": _now(), "finished": None, "host": socket.gethostname(),
            "command": command_line(), "versions": versions(),
        }, time.perf_counter())
        if write:
            write_json(rec.path, rec.record)
        return rec

    def finish(self, *, steps: int, samples: int, tokens: int, device: torch.device,
               model_dir: Path | None, completed: bool) -> dict[str, Any]:
        """Add the summary and the end time; returns the summary."""
        runtime = time.perf_counter() - self._clock
        memory, kind = peak_memory_gb(device)
        summary = {
            "completed": completed, "steps": steps, "train_runtime_s": round(runtime, 3),
            "samples_per_s": samples / runtime if runtime > 0 else None,
            "tokens_per_s": tokens / runtime if runtime > 0 else None,
            "peak_memory_gb": round(memory, 3), "peak_memory_kind": kind,
            "model": str(model_dir) if model_dir is not None else None,
        }
        self.record.update({"finished": _now(), "summary": summary})
        write_json(self.path, self.record)
        return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    rate = summary["samples_per_s"] or 0.0
    tokens = summary["tokens_per_s"] or 0.0
    where = summary["model"] or "not written (stopped early; resume=true to finish)"
    return (f"trained {summary['steps']} steps in {summary['train_runtime_s']:.1f} s: "
            f"{rate:.2f} samples/s, {tokens:.0f} tokens/s, peak memory "
            f"{summary['peak_memory_gb']:.2f} GiB ({summary['peak_memory_kind']}); "
            f"model: {where}")
