"""Ranked and graded preferences: k responses per prompt with a ranking or scores.

Rows look like ``{prompt, responses: [...], ranking: [...]}`` (each response's rank, 1 = best,
ties allowed) or ``{..., scores: [...]}`` (higher = better). Two ways to train on them:

- expand each row into preference pairs (``expand_ranking``: all pairs, best-vs-rest or
  best-vs-worst, optionally weighted by the score gap) and use any pairwise objective;
- train on the whole ranking: ``plackett_luce`` (DPO paper, Appendix A.3) or ``rrhf``.

The ranked losses take ``(B, K)`` log-prob tensors whose responses are sorted best first
(``ranking_order``), with ``response_mask`` marking the real responses of rows that have fewer
than K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch

from tether.losses.base import LossOutput, LossSpec, register, rewards, token_mean

__all__ = [
    "RankMode",
    "RankedPair",
    "expand_ranking",
    "plackett_luce",
    "ranking_order",
    "rrhf",
    "scores_from_ranking",
]

Tensor = torch.Tensor
RankMode = Literal["all", "best_vs_rest", "best_vs_worst"]


class RankedPair(NamedTuple):
    """One preference pair taken from a ranked row: indices into its responses, and a weight."""

    chosen: int
    rejected: int
    weight: float


def scores_from_ranking(ranking: Sequence[int]) -> list[float]:
    """Ranks (1 = best) as scores (higher = better), so both row kinds share one code path."""
    return [-float(r) for r in ranking]


def ranking_order(scores: Sequence[float]) -> list[int]:
    """Response indices best first; ties keep their order in the row (a stable sort)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


# Candidate (better, worse) index pairs for each mode, given the indices best first.
_CANDIDATES: dict[str, Callable[[list[int]], list[tuple[int, int]]]] = {
    "all": lambda o: [(o[a], o[b]) for a in range(len(o)) for b in range(a + 1, len(o))],
    "best_vs_rest": lambda o: [(o[0], j) for j in o[1:]],
    "best_vs_worst": lambda o: [(o[0], o[-1])],
}


def expand_ranking(
    scores: Sequence[float], mode: RankMode = "all", weight_by_gap: bool = False
) -> list[RankedPair]:
    """Preference pairs of one ranked row, as indices into its responses.

    ``all`` gives every pair with different scores, k(k−1)/2 for a strict ranking (as
    InstructGPT's reward model uses its rankings, Ouyang et al. 2022); ``best_vs_rest`` the
    best response against each worse one; ``best_vs_worst`` one pair per row. Tied responses
    are never paired, so a row whose scores are all equal gives no pair. With
    ``weight_by_gap`` a pair's weight is its score gap over the row's score range (the
    best-vs-worst pair weighs 1), so near-ties count less; otherwise every weight is 1.
    """
    if len(scores) < 2:
        raise ValueError(f"a ranked row needs at least 2 responses, got {len(scores)}")
    order = ranking_order(scores)
    spread = scores[order[0]] - scores[order[-1]]
    pairs = []
    for c, r in _CANDIDATES[mode](order):
        gap = scores[c] - scores[r]
        if gap > 0:
            pairs.append(RankedPair(c, r, gap / spread if weight_by_gap else 1.0))
    return pairs


def _mask(like: Tensor, response_mask: Tensor | None) -> Tensor:
    if response_mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    return response_mask.to(torch.bool)


def _last(mask: Tensor) -> Tensor:
    """Index of each row's last real response (the worst, as responses are sorted)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).amax(dim=-1)  # (B,)


def _ranking_accuracy(values: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """Fraction of the (better, worse) pairs of real responses whose values agree."""
    valid = mask[:, :, None] & mask[:, None, :]  # (B, K, K)
    better = (scores[:, :, None] > scores[:, None, :]) & valid
    agree = (values[:, :, None] > values[:, None, :]) & better
    return (agree.sum() / better.sum().clamp(min=1)).to(values.dtype).detach()


def _pick(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(-1, index[:, None]).squeeze(-1)  # (B,)


@register("plackett_luce", LossSpec(needs_reference=True, data="ranked"))
def plackett_luce(
    policy_logps: Tensor,
    reference_logps: Tensor,
    *,
    beta: float,
    response_mask: Tensor | None = None,
) -> LossOutput:
    """Plackett–Luce DPO (Rafailov et al. 2023, arXiv 2305.18290, Appendix A.3).

        ρ_k  = log πθ(y_k|x) − log π_ref(y_k|x)        responses sorted best first, (B, K)
        loss = −log Π_k  exp(β·ρ_k) / Σ_{j>=k} exp(β·ρ_j)
             = −Σ_k [ β·ρ_k − logsumexp_{j>=k} β·ρ_j ]

    The DPO paper's objective for a full ranking τ of K responses: the likelihood that the
    policy's implicit rewards pick the best, then the best of the rest, and so on. For K = 2 it
    is −log σ(β·(ρ_1 − ρ_2)), i.e. ``dpo``. ``response_mask`` (B, K) marks real responses of
    rows with fewer than K; masked ones drop out of every sum. Tied responses are ordered as
    given (Plackett–Luce needs a strict order).

    Rewards: β·ρ of each row's best (chosen) and worst (rejected) response. Metrics:
    ``ranking_accuracy``, the fraction of ordered pairs whose rewards are in ranking order.
    """
    mask = _mask(policy_logps, response_mask)  # (B, K)
    rho = beta * (policy_logps - reference_logps)  # (B, K)
    # Masked responses get a huge finite negative reward rather than −inf: exp() of it is 0,
    # and unlike −inf it keeps the gradient of logcumsumexp free of NaNs.
    low = torch.finfo(rho.dtype).min / 4
    rho = rho.masked_fill(~mask, low)
    tail = torch.logcumsumexp(rho.flip(-1), dim=-1).flip(-1)  # (B, K): logsumexp_{j>=k}
    losses = -torch.where(mask, rho - tail, torch.zeros_like(rho)).sum(-1)  # (B,)
    reward = rewards(policy_logps, reference_logps, beta)  # (B, K)
    order_scores = -torch.arange(mask.shape[-1], device=mask.device, dtype=reward.dtype)
    accuracy = _ranking_accuracy(reward, order_scores.expand_as(reward), mask)
    return LossOutput(
        losses,
        reward[:, 0],
        _pick(reward, _last(mask)),
        {"ranking_accuracy": accuracy},
    )


@register(
    "rrhf",
    LossSpec(needs_reference=False, data="ranked", token_mean=True, includes_nll=True),
)
def rrhf(
    policy_logps: Tensor,
    reference_logps: Tensor | None = None,
    *,
    response_lengths: Tensor,
    response_scores: Tensor,
    response_mask: Tensor | None = None,
) -> LossOutput:
    """RRHF (Yuan et al. 2023, arXiv 2304.05302): rank responses, no reference model.

        p_i    = log πθ(y_i|x) / |y_i|                       mean-token log-prob, (B, K)
        L_rank = Σ_{s_i < s_j} max(0, p_i − p_j)             every worse/better pair
        L_ft   = −p_{i*},  i* = argmax_i s_i                 NLL of the best response
        loss   = L_rank + L_ft

    s = ``response_scores`` (B, K), higher = better (ranks become scores with
    ``scores_from_ranking``); ``response_lengths`` the token counts. The paper writes L_ft as
    a sum over the best response's tokens; tether averages it per token (the authors' released
    code also takes a mean), like p_i, so the two terms share a scale whatever the length.
    The reference tensor is accepted and ignored. Pairs of tied responses do not enter.

    Rewards: p of each row's best and worst response. Metrics: ``nll`` (L_ft) and
    ``ranking_accuracy``.
    """
    mask = _mask(policy_logps, response_mask)  # (B, K)
    p = token_mean(policy_logps, response_lengths)  # (B, K)
    valid = mask[:, :, None] & mask[:, None, :]  # (B, K, K)
    worse = (response_scores[:, :, None] < response_scores[:, None, :]) & valid  # i worse than j
    rank = (torch.relu(p[:, :, None] - p[:, None, :]) * worse).sum(dim=(1, 2))  # (B,)
    masked_scores = response_scores.masked_fill(~mask, float("-inf"))
    best = masked_scores.argmax(dim=-1)  # (B,) first best on ties
    worst = response_scores.masked_fill(~mask, float("inf")).argmin(dim=-1)
    nll = -_pick(p, best)  # (B,)
    metrics = {
        "nll": nll.detach().mean(),
        "ranking_accuracy": _ranking_accuracy(p.detach(), response_scores, mask),
    }
    return LossOutput(rank + nll, _pick(p, best).detach(), _pick(p, worst).detach(), metrics)
