"""Each health detector on a history built to trigger it, and on one that must not."""

from __future__ import annotations

from tether.data.tokenization import TokenizedPair
from tether.tracking import data_lengths
from tether.tracking.health import (
    dead_signal,
    detect,
    kl_runaway,
    length_bias,
    likelihood_displacement,
    reward_overfitting,
)


def rows(n: int, **series) -> list[dict]:
    """``n`` train rows; each keyword is a function of the step giving that metric."""
    return [{"step": s, "loss": 0.5, **{k.replace("__", "/"): f(s) for k, f in series.items()}}
            for s in range(1, n + 1)]


def test_likelihood_displacement():
    # chosen log-prob falls 0.2 nats a step (-20 -> -26) while the margin grows
    bad = rows(30, logps__chosen=lambda s: -20 - 0.2 * s, rewards__margins=lambda s: 0.05 * s)
    w = likelihood_displacement(bad)
    assert w is not None and w.name == "likelihood_displacement" and w.step == 30
    assert "2410.08847" in w.why and "nll_weight" in w.suggest
    # healthy: chosen rises with the margin
    assert likelihood_displacement(rows(30, logps__chosen=lambda s: -20 + 0.1 * s,
                                        rewards__margins=lambda s: 0.05 * s)) is None
    # falls, but the margin shrinks too (not the displacement pattern)
    assert likelihood_displacement(rows(30, logps__chosen=lambda s: -20 - 0.2 * s,
                                        rewards__margins=lambda s: -0.05 * s)) is None


def test_reward_overfitting():
    train = rows(20, rewards__accuracies=lambda s: 1.0)
    evals = [{"step": s, "eval/rewards/accuracies": a} for s, a in ((5, 0.7), (10, 0.72),
                                                                    (15, 0.66), (20, 0.6))]
    w = reward_overfitting(train + evals)
    assert w is not None and "eval 0.60" in w.message
    rising = [{"step": s, "eval/rewards/accuracies": a} for s, a in ((5, 0.7), (10, 0.8),
                                                                     (15, 0.85), (20, 0.9))]
    assert reward_overfitting(train + rising) is None
    # eval falls but train is nowhere near 1: not over-fitting
    assert reward_overfitting(rows(20, rewards__accuracies=lambda s: 0.7) + evals) is None


def test_kl_runaway():
    growing = rows(10, rewards__chosen=lambda s: 0.8 * s, rewards__rejected=lambda s: -0.9 * s)
    w = kl_runaway(growing)
    assert w is not None and "beta" in w.suggest
    assert kl_runaway(rows(10, rewards__chosen=lambda s: 0.1 * s,
                           rewards__rejected=lambda s: -0.1 * s)) is None
    # large but shrinking back: not a runaway
    assert kl_runaway(rows(10, rewards__chosen=lambda s: 9.0 - 0.3 * s,
                           rewards__rejected=lambda s: -1.0)) is None
    # KTO logs its own kl: that is used
    assert kl_runaway(rows(10, kl=lambda s: float(s), rewards__chosen=lambda s: 0.0)) is not None


def test_dead_signal():
    flat = rows(20, rewards__margins=lambda s: 0.0, rewards__accuracies=lambda s: 0.0)
    w = dead_signal(flat)
    assert w is not None and w.step == 20
    # during warm-up only: not yet
    assert dead_signal(rows(10, rewards__margins=lambda s: 0.0)) is None
    assert dead_signal(rows(20, rewards__margins=lambda s: 0.01 * s,
                            rewards__accuracies=lambda s: 0.8)) is None


def test_length_bias_from_the_data():
    def pair(c: int, r: int) -> TokenizedPair:
        return TokenizedPair([1, 2], [5] * c, [6] * r)

    longer = data_lengths([pair(10, 5)] * 8 + [pair(5, 6)] * 2, max_length=64)
    assert longer["pairs"]["chosen_longer_fraction"] == 0.8
    w = length_bias(longer["pairs"])
    assert w is not None and w.name == "length_exploitation" and "length_normalize" in w.suggest
    balanced = data_lengths([pair(10, 5), pair(5, 10)] * 5, max_length=64)
    assert length_bias(balanced["pairs"]) is None
    assert sum(balanced["train"]["prompt + chosen"]["counts"]) == 10


def test_each_warning_fires_once():
    fired: set[str] = set()
    history = rows(20, rewards__margins=lambda s: 0.0, rewards__accuracies=lambda s: 0.0)
    assert [w.name for w in detect(history, fired)] == ["dead_signal"]
    history += rows(25, rewards__margins=lambda s: 0.0)[20:]
    assert detect(history, fired) == []
