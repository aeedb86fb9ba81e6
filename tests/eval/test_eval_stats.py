from __future__ import annotations

import math

import numpy as np
import pytest

from tether.eval.stats import (
    bootstrap_win_rate,
    count_outcomes,
    fit_logistic,
    length_controlled_win_rate,
    length_summary,
    order_agreement,
    sigmoid,
    wilson_interval,
    win_rate,
)


def test_counts_and_ties_count_half():
    outcomes = ["win", "win", "tie", "loss", "unparsed"]
    c = count_outcomes(outcomes)
    assert (c.wins, c.ties, c.losses, c.unparsed, c.n, c.total) == (2, 1, 1, 1, 4, 5)
    # (1 + 1 + 0.5 + 0) / 4: the unparsed pair is excluded, not a loss
    assert win_rate(outcomes) == pytest.approx(0.625)
    assert math.isnan(win_rate(["unparsed"]))


def test_wilson_hand_computed():
    # 8 successes of 10, z = 1.96: p = 0.8, z² = 3.8416, z²/n = 0.38416, denom = 1.38416
    # center = (0.8 + 0.19208) / 1.38416 = 0.716738
    # half = 1.96 / 1.38416 · sqrt(0.8·0.2/10 + 3.8416/400) = 1.416023 · sqrt(0.025604) = 0.226581
    # -> (0.490157, 0.943319)
    low, high = wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.490157, abs=1e-6)
    assert high == pytest.approx(0.943319, abs=1e-6)
    # 0 of 5: center = half = (3.8416/10) / 1.76832 = 0.217246 -> (0, 0.434491)
    low, high = wilson_interval(0, 5, z=1.96)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.434491, abs=1e-6)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bootstrap_reproducible_and_seed_dependent():
    rng = np.random.default_rng(1)
    scores = rng.choice([0.0, 0.5, 1.0], size=200, p=[0.3, 0.2, 0.5])
    groups = np.arange(200)
    a = bootstrap_win_rate(scores, groups, 2000, seed=7)
    b = bootstrap_win_rate(scores, groups, 2000, seed=7)
    c = bootstrap_win_rate(scores, groups, 2000, seed=8)
    assert a == b
    assert a != c
    assert a[0] < scores.mean() < a[1]


def test_bootstrap_width_matches_normal_approximation():
    # 240 wins and 160 losses: se = sqrt(0.6·0.4/400) = 0.024495, 95% width ≈ 2·1.96·se = 0.0960
    scores = np.array([1.0] * 240 + [0.0] * 160)
    low, high = bootstrap_win_rate(scores, np.arange(400), 4000, seed=0)
    assert high - low == pytest.approx(0.0960, rel=0.1)
    assert bootstrap_win_rate([1.0] * 30, list(range(30)), 2000, seed=0) == (1.0, 1.0)


def test_bootstrap_resamples_prompts_not_samples():
    # Two identical samples per prompt carry no more information than one: resampling prompts
    # gives exactly the interval of the one-sample data; resampling items would narrow it.
    rng = np.random.default_rng(2)
    one = rng.choice([0.0, 1.0], size=60)
    two = np.repeat(one, 2)
    assert bootstrap_win_rate(two, np.repeat(np.arange(60), 2), 2000, seed=3) == pytest.approx(
        bootstrap_win_rate(one, np.arange(60), 2000, seed=3)
    )
    naive = bootstrap_win_rate(two, np.arange(120), 2000, seed=3)
    assert naive[1] - naive[0] < 0.8 * (
        np.subtract(*bootstrap_win_rate(one, np.arange(60), 2000, seed=3)[::-1])
    )


def test_fit_logistic_intercept_only_is_logit_of_mean():
    y = np.array([1.0, 1.0, 1.0, 0.0, 0.5])  # mean 0.7
    theta = fit_logistic(np.ones((5, 1)), y, np.ones((1, 5)), l2=0.0)
    assert theta[0, 0] == pytest.approx(math.log(0.7 / 0.3), abs=1e-8)
    # weights act as repeats: weighting the loss twice equals duplicating it
    w = np.array([[1.0, 1.0, 1.0, 2.0, 1.0]])
    theta = fit_logistic(np.ones((5, 1)), y, w, l2=0.0)
    assert theta[0, 0] == pytest.approx(math.log(3.5 / 2.5), abs=1e-8)


def _planted(n: int, intercept: float, slope: float, seed: int):
    rng = np.random.default_rng(seed)
    ref = rng.integers(20, 60, size=n).astype(float)
    pol = ref + rng.normal(30, 20, size=n)  # the policy is ~30 tokens longer, sd 20
    d = (pol - ref) / (pol - ref).std()
    p = sigmoid(intercept + slope * d)
    return (rng.random(n) < p).astype(float), pol, ref


def test_length_control_recovers_planted_effect():
    # Truth: no preference at equal length (intercept 0), strong preference for length.
    scores, pol, ref = _planted(1200, intercept=0.0, slope=1.5, seed=0)
    assert scores.mean() > 0.75  # the raw win-rate is inflated by length
    lc = length_controlled_win_rate(scores, pol, ref, np.arange(1200), 2000, seed=0)
    assert lc.win_rate == pytest.approx(0.5, abs=0.05)
    assert lc.ci95[0] < 0.5 < lc.ci95[1]
    assert lc.slope == pytest.approx(1.5, abs=0.3)
    # A real quality effect (intercept 1 -> σ(1) = 0.731) survives length control.
    scores, pol, ref = _planted(1200, intercept=1.0, slope=1.0, seed=1)
    lc = length_controlled_win_rate(scores, pol, ref, np.arange(1200), 2000, seed=0)
    assert lc.win_rate == pytest.approx(1 / (1 + math.exp(-1)), abs=0.05)
    assert lc.ci95[0] < lc.win_rate < lc.ci95[1]


def test_length_control_without_length_difference_is_the_win_rate():
    scores = [1.0] * 7 + [0.0] * 3
    lc = length_controlled_win_rate(scores, [10] * 10, [10] * 10, list(range(10)), 2000, seed=0)
    assert lc.win_rate == pytest.approx(0.7, abs=1e-3)


def test_length_summary_and_warning():
    s = length_summary([10, 20, 60], [10, 10, 20], warn_ratio=1.5)
    assert s["policy"] == {"mean": 30.0, "median": 20.0}
    assert s["reference"] == {"mean": pytest.approx(40 / 3), "median": 10.0}
    assert s["ratio"] == pytest.approx(2.25)
    assert "2.25x" in s["warning"]
    assert length_summary([10, 12], [10, 10], warn_ratio=1.5)["warning"] is None


def test_order_agreement_hand_computed():
    pairs = [("win", "win"), ("win", "loss"), ("tie", "tie"), ("loss", "win"), ("unparsed", "win")]
    out = order_agreement(pairs)
    # 4 pairs with both orders parsed, 2 of them flip
    assert out["order_flip_rate"] == pytest.approx(0.5)
    assert out["n_both_orders"] == 4
    # first shown chosen: (win,·) twice + (·,loss) once = 3 of 6 decisive verdicts
    assert out["first_position_rate"] == pytest.approx(0.5)
    assert order_agreement([("unparsed", "win")])["order_flip_rate"] is None
