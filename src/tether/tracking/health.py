"""Training-health warnings: pure functions over the logged metric history.

Each detector takes the rows of ``metrics.jsonl`` (train rows carry ``loss``; eval rows carry
``eval/...`` keys) and returns a ``HealthWarning`` when its pattern holds, else None. They
see only numbers the loop already logs, so ``tether report`` can run them after the fact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DETECTORS", "HealthWarning", "detect", "length_bias"]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class HealthWarning:
    name: str
    step: int
    message: str  # what was seen, with numbers
    why: str  # the paper or the reason it matters
    suggest: str  # what to try

    def event(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` line for it."""
        return {"step": self.step, "event": "health", **asdict(self)}

    def line(self) -> str:
        return f"{self.name} (step {self.step}): {self.message}. Why: {self.why}. " \
               f"Try: {self.suggest}"


def _series(history: Sequence[Row], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in history
            if "event" not in r and isinstance(r.get(key), (int, float))]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _thirds(values: list[float]) -> tuple[float, float, float]:
    n = len(values) // 3
    return _mean(values[:n]), _mean(values[n : len(values) - n]), _mean(values[-n:])


def likelihood_displacement(history: Sequence[Row], min_points: int = 9,
                            drop: float = 1.0) -> HealthWarning | None:
    """The chosen answer's log-prob falls steadily (by ``drop`` nats per sequence, each third
    of the run below the last) while the reward margin grows."""
    chosen, margin = _series(history, "logps/chosen"), _series(history, "rewards/margins")
    if len(chosen) < min_points or len(margin) < min_points:
        return None
    c0, c1, c2 = _thirds([v for _, v in chosen])
    m0, _, m2 = _thirds([v for _, v in margin])
    if not (c0 > c1 > c2 and c0 - c2 >= drop and m2 > m0):
        return None
    return HealthWarning(
        "likelihood_displacement", chosen[-1][0],
        f"log p(chosen) fell from {c0:.2f} to {c2:.2f} nats while the margin rose from "
        f"{m0:.3f} to {m2:.3f}",
        "DPO can raise the margin by pushing both answers down, moving mass to unrelated "
        "text (Razin et al. 2024, arXiv 2410.08847; Pal et al. 2024, DPOP, arXiv 2402.13228)",
        "nll_weight=0.1-1 (an SFT term on the chosen answer), loss=dpop, or a smaller lr",
    )


def reward_overfitting(history: Sequence[Row], min_eval: int = 3, high: float = 0.95,
                       gap: float = 0.15) -> HealthWarning | None:
    """Train reward accuracy near 1 while eval accuracy stalls or falls, well below it."""
    train = _series(history, "rewards/accuracies")
    evals = _series(history, "eval/rewards/accuracies")
    if len(evals) < min_eval or len(train) < 3:
        return None
    recent = _mean([v for _, v in train[-5:]])
    best, last = max(v for _, v in evals[:-1]), evals[-1][1]
    if recent < high or last > best or recent - last < gap:
        return None
    return HealthWarning(
        "reward_overfitting", evals[-1][0],
        f"train reward accuracy {recent:.2f}, eval {last:.2f} (best so far {best:.2f})",
        "the implicit reward memorises the training pairs and stops generalising "
        "(Azar et al. 2024, IPO, arXiv 2310.12036: DPO over-fits near-deterministic preferences)",
        "fewer epochs, a larger beta, loss=ipo, or label_smoothing=0.1",
    )


def kl_runaway(history: Sequence[Row], limit: float = 5.0,
               min_points: int = 3) -> HealthWarning | None:
    """The implicit reward β·log(π/π_ref) (or KTO's ``kl``) keeps growing past ``limit``:
    a reward of 5 already gives a pair weight σ(-5) < 1% in DPO's gradient."""
    key = "kl" if _series(history, "kl") else "rewards/chosen"
    pts = [(s, abs(v)) for s, v in _series(history, key)]
    rej = {s: abs(v) for s, v in _series(history, "rewards/rejected")}
    pts = [(s, max(v, rej.get(s, 0.0))) for s, v in pts]
    if len(pts) < min_points:
        return None
    last = _mean([v for _, v in pts[-3:]])
    first = _mean([v for _, v in pts[:3]])
    if last < limit or last <= first:
        return None
    return HealthWarning(
        "kl_runaway", pts[-1][0],
        f"|{key}| grew from {first:.2f} to {last:.2f} (limit {limit:g}, in units of "
        "beta x nats per sequence)",
        "the policy is far from the reference: rewards this large saturate the loss and "
        "the KL penalty that beta stands for no longer holds it (Rafailov et al. 2023, "
        "arXiv 2305.18290, Eq. 3)",
        "a larger beta, a smaller lr, fewer steps, or TR-DPO's reference updates",
    )


def dead_signal(history: Sequence[Row], warmup: int = 10, points: int = 5,
                eps: float = 1e-3) -> HealthWarning | None:
    """After warm-up, reward margins stay at 0 and accuracies at chance (0.5, or 0 for ties)."""
    margin = [(s, v) for s, v in _series(history, "rewards/margins") if s > warmup]
    acc = {s: v for s, v in _series(history, "rewards/accuracies")}
    if len(margin) < points:
        return None
    tail = margin[-points:]
    if any(abs(v) > eps for _, v in tail) or any(acc.get(s, 0.5) > 0.6 for s, _ in tail):
        return None
    return HealthWarning(
        "dead_signal", tail[-1][0],
        f"reward margins within ±{eps:g} and accuracies at chance for the last {points} logs "
        f"after step {warmup}",
        "the policy is not moving away from the reference: no learning signal reaches it",
        "a larger lr (DPO commonly 5e-7..5e-6 for full weights, 1e-5..1e-4 for LoRA), check "
        "that chosen and rejected differ, or reference=none/copy to rule out a stale cache",
    )


def length_bias(stats: Mapping[str, Any], fraction: float = 0.7,
                ratio: float = 1.2) -> HealthWarning | None:
    """Chosen answers systematically longer than rejected ones in the training data (at load
    time), or the policy's answers drifting longer than the reference's (``tether eval``)."""
    frac, r = stats.get("chosen_longer_fraction"), stats.get("length_ratio")
    if frac is None or r is None or frac < fraction or r < ratio:
        return None
    return HealthWarning(
        "length_exploitation", int(stats.get("step", 0)),
        f"{stats.get('what', 'chosen')} is longer in {100 * frac:.0f}% of pairs, "
        f"{r:.2f}x the tokens on average",
        "DPO learns length when length predicts preference (Park et al. 2024, R-DPO, "
        "arXiv 2403.19159; LD-DPO, Liu et al. 2024, arXiv 2409.06411)",
        "length_normalize=true (or loss=simpo), loss=rdpo (rdpo_alpha), and read the "
        "length-controlled win-rate of tether eval",
    )


DETECTORS: dict[str, Callable[[Sequence[Row]], HealthWarning | None]] = {
    "likelihood_displacement": likelihood_displacement,
    "reward_overfitting": reward_overfitting,
    "kl_runaway": kl_runaway,
    "dead_signal": dead_signal,
}


def detect(history: Sequence[Row], fired: set[str]) -> list[HealthWarning]:
    """The warnings that hold now and have not fired yet (adds them to ``fired``)."""
    out = []
    for name, fn in DETECTORS.items():
        if name in fired:
            continue
        w = fn(history)
        if w is not None:
            fired.add(name)
            out.append(w)
    return out
