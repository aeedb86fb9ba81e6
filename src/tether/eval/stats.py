"""Win-rate statistics a reviewer can check: counts, intervals, length control, order bias.

Every pair of answers (policy vs reference, one prompt, one sample) ends as an ``Outcome`` seen
from the policy's side. Ties count 0.5; ``unparsed`` pairs (the judge failed or could not be
read) are excluded and counted, never scored as losses.

Intervals:

- Bootstrap over prompts (percentile, seeded): prompts are the sampling unit, so the several
  samples of one prompt are resampled together and the interval is not made narrower by them.
- Wilson score interval on the decisive pairs (wins / (wins + losses)), Wilson (1927).
- Length-controlled win-rate: a logistic regression of the preference on the normalised length
  difference, read at zero difference (the idea of AlpacaEval's length control, Dubois et al.
  2024, reduced to its core), with its own bootstrap interval over prompts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "SCORES",
    "Counts",
    "LengthControl",
    "Outcome",
    "bootstrap_win_rate",
    "count_outcomes",
    "fit_logistic",
    "length_controlled_win_rate",
    "length_summary",
    "order_agreement",
    "resample_weights",
    "sigmoid",
    "wilson_interval",
    "win_rate",
]

Outcome = Literal["win", "tie", "loss", "unparsed"]
SCORES: dict[str, float] = {"win": 1.0, "tie": 0.5, "loss": 0.0}
Z95 = 1.959963984540054  # two-sided 95% normal quantile
_CHUNK = 256  # bootstrap resamples processed at once (bounds memory on large evaluations)


@dataclass(frozen=True)
class Counts:
    wins: int
    ties: int
    losses: int
    unparsed: int

    @property
    def n(self) -> int:
        """Pairs that count: wins + ties + losses (unparsed excluded)."""
        return self.wins + self.ties + self.losses

    @property
    def total(self) -> int:
        return self.n + self.unparsed


def count_outcomes(outcomes: Sequence[str]) -> Counts:
    bad = set(outcomes) - {"win", "tie", "loss", "unparsed"}
    if bad:
        raise ValueError(f"unknown outcomes {sorted(bad)}")  # internal: callers map verdicts
    return Counts(*(sum(o == k for o in outcomes) for k in ("win", "tie", "loss", "unparsed")))


def win_rate(outcomes: Sequence[str]) -> float:
    """Mean score with wins 1, ties 0.5, losses 0 over parsed pairs; NaN when there are none."""
    scores = [SCORES[o] for o in outcomes if o != "unparsed"]
    return sum(scores) / len(scores) if scores else math.nan


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (NaN, NaN) when n is 0.

    center = (p + z²/2n) / (1 + z²/n),  half = z/(1 + z²/n) · sqrt(p(1−p)/n + z²/4n²).
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x|
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def resample_weights(
    groups: Sequence[int] | np.ndarray, n_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap over groups (prompts) as count weights.

    Returns ``(counts, index)``: ``counts`` is (R, G), how often each of the G distinct groups is
    drawn in each of R resamples of G groups with replacement; ``index`` maps each item to its
    group column, so ``counts[:, index]`` is the (R, N) weight of every item.
    """
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(index.max()) + 1 if len(index) else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / max(n_groups, 1)), size=n_resamples)
    return counts.astype(np.float64), index


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    low, high = np.quantile(values, [0.025, 0.975])
    return (float(low), float(high))


def bootstrap_win_rate(
    scores: Sequence[float], groups: Sequence[int], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean score, resampling prompts (``groups``) with replacement.

    ``scores`` are the parsed pairs only (1 / 0.5 / 0); the same seed gives the same interval.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return (math.nan, math.nan)
    counts, index = resample_weights(groups, n_resamples, seed)
    # Per-group sums make each resample a (R, G) @ (G,) product instead of an (R, N) matrix.
    group_sum = np.bincount(index, weights=s)
    group_n = np.bincount(index).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = (counts @ group_sum) / (counts @ group_n)
    return _percentile_interval(rates)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float = 1e-3, iters: int = 100
) -> np.ndarray:
    """Weighted logistic regression for R weightings at once, by Newton's method.

    ``x`` (N, K) features (include a column of ones for the intercept), ``y`` (N,) targets in
    [0, 1] (fractional targets are fine: a tie is y = 0.5), ``weights`` (R, N). Minimises
    Σ w·[−y log p − (1−y) log(1−p)] + l2/2 ‖θ‖² and returns θ (R, K). The small ridge keeps θ
    finite when the data are separable (e.g. every pair a win); it is negligible otherwise.
    """
    r, k = weights.shape[0], x.shape[1]
    theta = np.zeros((r, k))
    eye = l2 * np.eye(k)
    for _ in range(iters):
        p = sigmoid(theta @ x.T)  # (R, N)
        grad = (weights * (p - y)) @ x + l2 * theta  # (R, K)
        hess = (x.T * (weights * p * (1 - p))[:, None, :]) @ x + eye  # (R, K, K)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        # Damped: a full Newton step from far away can overshoot on nearly separable data.
        step = np.clip(step, -5.0, 5.0)
        theta -= step
        if np.abs(step).max() < 1e-9:
            break
    return theta


@dataclass(frozen=True)
class LengthControl:
    """Win-rate read from the fitted preference at zero length difference."""

    win_rate: float
    ci95: tuple[float, float]
    slope: float  # log-odds change per standard deviation of the length difference
    scale: float  # the standard deviation used to normalise (tokens)


def length_controlled_win_rate(
    scores: Sequence[float],
    policy_lengths: Sequence[float],
    reference_lengths: Sequence[float],
    groups: Sequence[int],
    n_resamples: int = 2000,
    seed: int = 0,
) -> LengthControl:
    """σ(intercept) of logit P(policy preferred) = a + b·d, d = (len_policy − len_ref) / sd.

    ``scores`` are parsed pairs only (1 / 0.5 / 0). Reading the fit at d = 0 answers "how often
    would the policy win if its answers were as long as the reference's". The scale only
    conditions the fit: the intercept does not depend on it.
    """
    y = np.asarray(scores, dtype=np.float64)
    if y.size == 0:
        return LengthControl(math.nan, (math.nan, math.nan), math.nan, math.nan)
    diff = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(reference_lengths, float)
    scale = float(diff.std()) or 1.0
    x = np.stack([np.ones_like(diff), diff / scale], axis=1)  # (N, 2)
    theta = fit_logistic(x, y, np.ones((1, y.size)))[0]
    counts, index = resample_weights(groups, n_resamples, seed)
    boot = [
        sigmoid(fit_logistic(x, y, chunk[:, index])[:, 0])
        for chunk in np.array_split(counts, max(1, math.ceil(n_resamples / _CHUNK)))
    ]
    return LengthControl(
        win_rate=float(sigmoid(theta[:1])[0]),
        ci95=_percentile_interval(np.concatenate(boot)),
        slope=float(theta[1]),
        scale=scale,
    )


def length_summary(
    policy_lengths: Sequence[float], reference_lengths: Sequence[float], warn_ratio: float = 1.5
) -> dict:
    """Mean and median answer lengths for both sides; a warning when the policy's are much longer.

    Judges, human and model, favour longer answers; a win-rate bought with length is flagged.
    """
    pol = np.asarray(policy_lengths, dtype=np.float64)
    ref = np.asarray(reference_lengths, dtype=np.float64)
    if pol.size == 0 or ref.size == 0:
        return {"policy": None, "reference": None, "ratio": None, "warning": None}
    ratio = float(pol.mean() / ref.mean()) if ref.mean() > 0 else math.inf
    warning = None
    if ratio >= warn_ratio:
        warning = (
            f"the policy's answers are {ratio:.2f}x as long as the reference's on average "
            f"(threshold {warn_ratio}); judges favour length: read lc_win_rate"
        )
    return {
        "policy": {"mean": float(pol.mean()), "median": float(np.median(pol))},
        "reference": {"mean": float(ref.mean()), "median": float(np.median(ref))},
        "ratio": ratio,
        "warning": warning,
    }


def order_agreement(pairs: Sequence[tuple[str, str]]) -> dict:
    """How often a judge changes its mind when the two answers swap places.

    ``pairs`` holds, per pair judged in both orders, the outcome (policy's side) from the order
    with the policy shown first and from the order with it shown second. Pairs with an unparsed
    order are left out. ``first_position_rate`` is the share of decisive verdicts that picked
    whichever answer was shown first (0.5 for a judge without position bias).
    """
    parsed = [(a, b) for a, b in pairs if "unparsed" not in (a, b)]
    if not parsed:
        return {"order_flip_rate": None, "first_position_rate": None, "n_both_orders": 0}
    flips = sum(a != b for a, b in parsed)
    # policy first: a win means "first" was chosen; policy second: a loss means "first" was chosen
    first = sum(a == "win" for a, _ in parsed) + sum(b == "loss" for _, b in parsed)
    decisive = sum(a != "tie" for a, _ in parsed) + sum(b != "tie" for _, b in parsed)
    return {
        "order_flip_rate": flips / len(parsed),
        "first_position_rate": first / decisive if decisive else None,
        "n_both_orders": len(parsed),
    }


# Markdown features of style control (Arena-Hard's "style control", Li et al. 2024): what a
# judge may reward besides the content. Each is a count per answer.
STYLE_FEATURES = {
    "length": None,  # tokens, given by the caller
    "headers": re.compile(r"^\s{0,3}#{1,6}\s", re.M),
    "list_items": re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.M),
    "bold": re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__"),
    "code_blocks": re.compile(r"^\s*```", re.M),
}


def style_counts(text: str, tokens: float) -> dict[str, float]:
    out = {"length": float(tokens)}
    for name, pattern in STYLE_FEATURES.items():
        if pattern is not None:
            n = len(pattern.findall(text))
            out[name] = float(n // 2 if name == "code_blocks" else n)  # fences open and close
    return out


@dataclass(frozen=True)
class StyleControl:
    """Win-rate at zero style difference, and each feature's coefficient."""

    win_rate: float
    ci95: tuple[float, float]
    coefficients: dict[str, float]  # log-odds per standard deviation of the feature difference


def style_controlled_win_rate(
    scores: Sequence[float],
    policy_style: Sequence[dict[str, float]],
    reference_style: Sequence[dict[str, float]],
    groups: Sequence[int],
    n_resamples: int = 2000,
    seed: int = 0,
) -> StyleControl:
    """σ(a) of logit P(policy preferred) = a + Σ_k b_k·d_k, d_k the normalised difference
    (f_policy − f_reference) / (f_policy + f_reference) of feature k (0 when both are 0),
    scaled to unit standard deviation. Features that never differ are left out. As
    ``length_controlled_win_rate``, with markdown features beside the length."""
    y = np.asarray(scores, dtype=np.float64)
    if y.size == 0:
        return StyleControl(math.nan, (math.nan, math.nan), {})
    cols, names = [np.ones_like(y)], []
    for name in STYLE_FEATURES:
        p = np.asarray([s[name] for s in policy_style], dtype=np.float64)
        r = np.asarray([s[name] for s in reference_style], dtype=np.float64)
        total = p + r
        d = np.divide(p - r, total, out=np.zeros_like(total), where=total > 0)
        sd = float(d.std())
        if sd > 0:
            cols.append(d / sd)
            names.append(name)
    x = np.stack(cols, axis=1)  # (N, 1 + K)
    theta = fit_logistic(x, y, np.ones((1, y.size)))[0]
    counts, index = resample_weights(groups, n_resamples, seed)
    boot = [
        sigmoid(fit_logistic(x, y, chunk[:, index])[:, 0])
        for chunk in np.array_split(counts, max(1, math.ceil(n_resamples / _CHUNK)))
    ]
    return StyleControl(
        win_rate=float(sigmoid(theta[:1])[0]),
        ci95=_percentile_interval(np.concatenate(boot)),
        coefficients={n: float(t) for n, t in zip(names, theta[1:], strict=True)},
    )


def group_win_rates(
    scores: Sequence[float], groups: Sequence[int], labels: Sequence[str],
    n_resamples: int = 2000, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Win-rate and its bootstrap interval per label (a ``group`` field of the data); a label
    whose whole interval lies below 0.5 is flagged as a regression."""
    out: dict[str, dict[str, Any]] = {}
    for label in sorted(set(labels)):
        idx = [k for k, lab in enumerate(labels) if lab == label]
        s = [scores[k] for k in idx]
        ci = bootstrap_win_rate(s, [groups[k] for k in idx], n_resamples, seed)
        out[label] = {"win_rate": float(np.mean(s)), "ci95": list(ci), "n": len(s),
                      "regression": bool(ci[1] < 0.5)}
    return out
