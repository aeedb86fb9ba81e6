"""AOT: alignment via optimal transport, objectives that sort log-ratios across the batch.

Melnyk et al. 2024 ("Distributional Preference Alignment of LLMs via Optimal Transport", arXiv
2406.05882) ask for *first-order stochastic dominance* of the chosen reward distribution over
the rejected one, not a margin on each pair. In one dimension the optimal transport plan
between two empirical distributions matches them in sorted order, so the loss compares the
i-th smallest of one sample with the i-th smallest of the other. Row i's loss therefore depends
on the whole batch: the per-row losses are those of the i-th sorted pair, not of pair i, and
the result changes with the batch size and composition (a batch of one is plain cDPO).
Rewards: β·(π − r) of each row's own completions, unsorted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.losses.base import LossOutput, register, rewards

__all__ = ["aot", "aot_unpaired"]

Tensor = torch.Tensor


def _smoothed_logistic(z: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@register("aot")
def aot(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """AOT on paired data (Melnyk et al. 2024, arXiv 2406.05882).

        ρ   = πc − πr       over the batch, sorted ascending     (the policy's log-odds)
        ρ0  = rc − rr       over the batch, sorted ascending     (the reference's)
        loss_i = −(1 − ε)·log σ(β·(ρ_(i) − ρ0_(i))) − ε·log σ(−β·(ρ_(i) − ρ0_(i)))

    The policy's distribution of chosen-over-rejected log-odds must dominate the reference's.
    ε = ``label_smoothing`` as in cDPO. Rewards: β·(π − r), per row, unsorted.
    """
    pc, pr, rc, rr = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps)
    rho = torch.sort(pc - pr).values  # (B,) ascending
    rho0 = torch.sort(rc - rr).values  # (B,)
    losses = _smoothed_logistic(beta * (rho - rho0), label_smoothing)
    return LossOutput(losses, rewards(pc, rc, beta), rewards(pr, rr, beta))


@register("aot_unpaired")
def aot_unpaired(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """AOT on unpaired data (Melnyk et al. 2024, arXiv 2406.05882).

        u_w = πc − rc, u_l = πr − rr   each sorted ascending over the batch, independently
        loss_i = −(1 − ε)·log σ(β·(u_w(i) − u_l(i))) − ε·log σ(−β·(u_w(i) − u_l(i)))

    The chosen completions' log-ratio distribution must dominate the rejected ones'; which
    rejected completion a chosen one came with does not matter, so the chosen and rejected
    halves may come from different prompts. Rewards: β·u per row, unsorted.
    """
    pc, pr, rc, rr = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps)
    u_w = torch.sort(pc - rc).values  # (B,)
    u_l = torch.sort(pr - rr).values  # (B,)
    losses = _smoothed_logistic(beta * (u_w - u_l), label_smoothing)
    return LossOutput(losses, rewards(pc, rc, beta), rewards(pr, rr, beta))
