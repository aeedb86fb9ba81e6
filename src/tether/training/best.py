"""``keep_best``: the checkpoint with the best eval metric is never pruned and becomes ``model/``.

The rule for "best" (TRL's ``load_best_model_at_end`` with ``metric_for_best_model``): a metric
whose last name part contains ``loss`` (``eval/loss``, ``eval/sft_loss``) is better lower; every
other metric (``eval/rewards/accuracies``, ``eval/rewards/margins``, ...) is better higher.

A checkpoint is a candidate when the metric was measured at its step (``save_every`` is a
multiple of ``eval_every``, checked in the config). The best step is recorded in
``checkpoints/best.json`` so a resumed run keeps it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import ConfigError
from tether.io import write_json

__all__ = ["BestCheckpoint", "greater_is_better", "prune_keeping"]

_STEP = re.compile(r"^step-(\d+)$")


def greater_is_better(metric: str) -> bool:
    """False for a loss (lower is better), True for every other metric."""
    return "loss" not in metric.rsplit("/", 1)[-1]


@dataclass
class BestCheckpoint:
    """Which checkpoint has the best ``metric`` so far."""

    metric: str
    run_dir: Path
    step: int | None = None  # the best checkpoint's step
    value: float | None = None
    latest: tuple[int, float] | None = None  # (step, value) of the newest evaluation

    @property
    def file(self) -> Path:
        return self.run_dir / "checkpoints" / "best.json"

    @property
    def path(self) -> Path | None:
        """The best checkpoint's directory, when there is one."""
        if self.step is None:
            return None
        path = self.run_dir / "checkpoints" / f"step-{self.step}"
        return path if path.is_dir() else None

    @classmethod
    def for_run(cls, metric: str | None, run_dir: Path, distributed: bool, resumed_step: int
                ) -> BestCheckpoint | None:
        """The run's record (None without keep_best); ``resumed_step`` 0 on a fresh run."""
        if metric is None:
            return None
        if distributed:
            raise ConfigError("keep_best: single-process runs only for now (sharded "
                              "checkpoints are not models); drop keep_best under torchrun")
        return cls.open(run_dir, metric, resumed_step or None)

    @classmethod
    def open(cls, run_dir: Path, metric: str, resumed_step: int | None) -> BestCheckpoint:
        """A fresh record, or the one a resumed run left, if it is not after the resumed step
        (those checkpoints are about to be redone)."""
        best = cls(metric, run_dir)
        if resumed_step is None or not best.file.is_file():
            return best
        saved = json.loads(best.file.read_text(encoding="utf-8"))
        if saved.get("metric") == metric and saved.get("step", math.inf) <= resumed_step:
            best.step, best.value = int(saved["step"]), float(saved["value"])
        return best

    def observe(self, step: int, metrics: dict[str, Any]) -> None:
        """Note this evaluation's value of the metric."""
        if self.metric not in metrics:
            names = ", ".join(sorted(k for k in metrics if k != "step"))
            raise ConfigError(f"keep_best: no metric '{self.metric}' in the evaluation; "
                              f"choose one of {names}")
        value = metrics[self.metric]
        self.latest = (step, float(value)) if value is not None else None

    def checkpointed(self, step: int) -> None:
        """A checkpoint of ``step`` was written: it becomes the best if its value is."""
        if self.latest is None or self.latest[0] != step or not math.isfinite(self.latest[1]):
            return
        value = self.latest[1]
        better = self.value is None or (
            value > self.value if greater_is_better(self.metric) else value < self.value)
        if better:
            self.step, self.value = step, value
            write_json(self.file, {"metric": self.metric, "step": step, "value": value,
                                   "greater_is_better": greater_is_better(self.metric)})


def prune_keeping(run_dir: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest ``keep`` checkpoints and the best one."""
    root = run_dir / "checkpoints"
    steps = sorted(int(m.group(1)) for p in root.iterdir()
                   if p.is_dir() and (m := _STEP.match(p.name)))
    for step in steps[:-keep]:
        if step != best_step:
            shutil.rmtree(root / f"step-{step}", ignore_errors=True)
