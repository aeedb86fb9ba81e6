"""The callback points and early stopping, without a model (issue 15, item 1)."""

from __future__ import annotations

import pytest

from tether.errors import ConfigError
from tether.training.callbacks import Callbacks, EarlyStopping


class Stopper:
    def __init__(self, at: int) -> None:
        self.at, self.seen = at, []

    def on_step_end(self, step):
        self.seen.append(step)
        return step >= self.at


class OnlyLogs:  # a callback may define only the points it needs
    def __init__(self) -> None:
        self.rows = []

    def on_log(self, step, metrics):
        self.rows.append((step, metrics["loss"]))


def test_every_callback_is_called_even_after_one_asks_to_stop():
    first, second, logs = Stopper(1), Stopper(5), OnlyLogs()
    cbs = Callbacks([first, second, logs])
    assert cbs.step_end(1) is True
    assert first.seen == [1] and second.seen == [1]
    cbs.log(1, {"loss": 0.5})
    cbs.evaluate(1, {"eval/loss": 0.5})  # no callback has on_evaluate: nothing happens
    assert logs.rows == [(1, 0.5)]
    assert Callbacks().step_end(3) is False


def test_early_stopping_counts_evaluations_without_improvement():
    stop = EarlyStopping("eval/rewards/accuracies", patience=2, mode="max", min_delta=0.01)
    for step, acc in ((1, 0.5), (2, 0.6), (3, 0.605), (4, 0.7)):  # 0.605: gain under min_delta
        stop.on_evaluate(step, {"eval/rewards/accuracies": acc})
        assert stop.on_step_end(step) is False
    assert stop.best == 0.7
    for step, acc in ((5, 0.69), (6, 0.7)):
        stop.on_evaluate(step, {"eval/rewards/accuracies": acc})
    assert stop.on_step_end(7) is True and stop.stopped_at == 7
    assert stop.on_step_end(8) is True and stop.stopped_at == 7


def test_early_stopping_names_a_missing_metric():
    with pytest.raises(ConfigError, match="no metric 'eval/los' in the evaluation; valid: eval/loss"):
        EarlyStopping("eval/los").on_evaluate(1, {"eval/loss": 0.3})
    with pytest.raises(ConfigError, match="patience >= 1"):
        EarlyStopping(patience=0)
