"""f-divergence regularisers for margin objectives (f-DPO; Wang et al. 2023, arXiv 2309.16240).

DPO regularises the policy with the reverse KL to the reference. f-DPO swaps in any
f-divergence whose derivative f' is invertible: the implicit reward becomes β·f'(π/π_ref)
instead of β·log(π/π_ref), so each completion's log-ratio u = log πθ − log π_ref is mapped to a
*score* f'(e^u) before the margin is taken (Theorem 1 of the paper). The log Z(x) term only
cancels in the chosen − rejected difference, so scores apply to objectives of the margin alone
(dpo, robust, hinge, exo_pair, discopop, sigmoid_norm), as in TRL 1.16.

Scores (constants that cancel in the margin may differ from the paper's f'):

    reverse_kl        u                         f(t) = t log t: plain DPO
    forward_kl        1 − e^(−u)                f(t) = −log t
    js_divergence     log 2 + log σ(u)          Jensen–Shannon, f'(t) = log(2t / (1 + t))
    alpha_divergence  (e^((α−1)·u) − 1)/(α−1)   α = ``f_alpha``; α → 1 gives reverse_kl

``f_alpha`` follows TRL's ``f_alpha_divergence_coef``: the paper's α-divergence with its α equal
to 1 − ``f_alpha`` (the two agree at the default 0.5). The exponent (α−1)·u is clamped at 80
before exp, as TRL does, so a large log-ratio cannot overflow float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["F_DIVERGENCES", "margin", "score"]

Tensor = torch.Tensor


def _alpha(u: Tensor, alpha: float) -> Tensor:
    if abs(alpha - 1.0) < 1e-6:  # the limit (t^(α−1) − 1)/(α−1) → log t
        return u
    return torch.expm1(((alpha - 1.0) * u).clamp(max=80.0)) / (alpha - 1.0)


# name -> score(u, α) of a log-ratio u = log πθ − log π_ref
F_DIVERGENCES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": lambda u, _a: u,
    "forward_kl": lambda u, _a: -torch.expm1(-u),
    "js_divergence": lambda u, _a: math.log(2) + F.logsigmoid(u),
    "alpha_divergence": _alpha,
}


def score(u: Tensor, f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> Tensor:
    """f'(e^u) for log-ratios ``u`` (B,): the implicit reward / β under ``f_divergence``."""
    return F_DIVERGENCES[f_divergence](u, f_alpha)


def margin(
    pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor,
    f_divergence: str = "reverse_kl", f_alpha: float = 0.5,
) -> Tensor:
    """h = f'(πc/rc) − f'(πr/rr); with reverse KL h = (πc − rc) − (πr − rr), DPO's margin."""
    return score(pc - rc, f_divergence, f_alpha) - score(pr - rr, f_divergence, f_alpha)
