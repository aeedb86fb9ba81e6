"""Callbacks: user code the loop calls at five points, and early stopping on an eval metric.

A callback is any object with some of the ``Callback`` methods (those it lacks are skipped):

- ``on_train_begin(info)``: before the first step; ``info`` has ``total_steps`` and
  ``output_dir``
- ``on_log(step, metrics)``: after each metrics.jsonl line of training metrics
- ``on_evaluate(step, metrics)``: after each evaluation (``eval/loss``, ``eval/rewards/...``)
- ``on_save(step, path)``: after a checkpoint or the final model is written
- ``on_step_end(step)``: after every optimizer step; return ``True`` to stop training (the run
  then ends as if it had reached its last step: final evaluation, model saved)

The loop holds one ``Callbacks`` made at set-up, so it calls each point once whatever the
number of callbacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["Callback", "Callbacks", "EarlyStopping"]

log = logging.getLogger("tether")


class Callback(Protocol):
    def on_train_begin(self, info: Mapping[str, Any]) -> None: ...
    def on_log(self, step: int, metrics: Mapping[str, Any]) -> None: ...
    def on_evaluate(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def on_save(self, step: int, path: Path) -> None: ...
    def on_step_end(self, step: int) -> bool | None: ...


class Callbacks:
    """Every callback's method for each point, looked up once."""

    def __init__(self, callbacks: Sequence[Any] = ()) -> None:
        def methods(name: str) -> list[Any]:
            return [getattr(c, name) for c in callbacks if callable(getattr(c, name, None))]

        self._begin, self._log = methods("on_train_begin"), methods("on_log")
        self._evaluate, self._save = methods("on_evaluate"), methods("on_save")
        self._step_end = methods("on_step_end")

    def train_begin(self, info: Mapping[str, Any]) -> None:
        for f in self._begin:
            f(info)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for f in self._log:
            f(step, metrics)

    def evaluate(self, step: int, metrics: Mapping[str, float]) -> None:
        for f in self._evaluate:
            f(step, metrics)

    def save(self, step: int, path: Path) -> None:
        for f in self._save:
            f(step, path)

    def step_end(self, step: int) -> bool:
        """Whether any callback asks to stop (every one is called)."""
        return any([bool(f(step)) for f in self._step_end])


class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    evaluations in a row (TRL's ``EarlyStoppingCallback``; ``metric_for_best_model``,
    ``early_stopping_patience``, ``early_stopping_threshold``). Needs ``eval_every``."""

    def __init__(self, metric: str = "eval/loss", patience: int = 1,
                 mode: Literal["min", "max"] = "min", min_delta: float = 0.0) -> None:
        if patience < 1 or min_delta < 0 or mode not in ("min", "max"):
            from tether.errors import ConfigError

            raise ConfigError("EarlyStopping: patience >= 1, min_delta >= 0, mode min or max")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0
        self.stopped_at: int | None = None

    def on_evaluate(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            from tether.errors import ConfigError

            raise ConfigError(f"EarlyStopping: no metric '{self.metric}' in the evaluation; "
                              f"valid: {', '.join(sorted(metrics))}")
        value = metrics[self.metric]
        gain = self.best - value if self.mode == "min" else value - self.best
        if gain > self.min_delta:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1

    def on_step_end(self, step: int) -> bool:
        if self.bad_evals >= self.patience and self.stopped_at is None:
            self.stopped_at = step
            log.info("early stopping at step %d: %s has not improved on %.4g for %d evaluations",
                     step, self.metric, self.best, self.bad_evals)
        return self.stopped_at is not None
