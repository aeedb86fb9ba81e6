"""More objectives of the DPO margin h = (πc − rc) − (πr − rr): exo_pair, discopop,
sigmoid_norm, dpop (DPO-Positive) and rdpo (length-regularised).

Each is a pure function of four ``(B,)`` log-prob tensors (plus token counts where the paper
needs them). exo_pair, discopop and sigmoid_norm take an f-divergence like dpo
(``tether.losses.fdivergence``); their rewards are β·(π − r) of each completion, as TRL logs
them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.losses.base import LossOutput, LossSpec, register, rewards
from tether.losses.fdivergence import margin, score

__all__ = ["discopop", "dpop", "exo_pair", "rdpo", "sigmoid_norm"]

Tensor = torch.Tensor
EXO_EPSILON = 1e-3  # EXO's label smoothing ε (Ji et al. 2024), used when the run sets none


def _output(losses: Tensor, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor,
            beta: float) -> LossOutput:
    return LossOutput(losses, rewards(pc, rc, beta), rewards(pr, rr, beta))


@register("exo_pair")
def exo_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """EXO, pairwise form (Ji et al. 2024, "Towards Efficient Exact Optimization of Language
    Model Alignment", arXiv 2402.00856, Eq. 16 with K = 2).

        q = (σ(β·h), σ(−β·h))            the policy's implicit preference over the pair
        p = (1 − ε, ε)                   the labels, smoothed by ε
        loss = KL(q ‖ p) = Σ_k q_k·(log q_k − log p_k)

    Where DPO minimises the forward KL(p ‖ q) (mode-covering), EXO minimises the reverse one
    (mode-seeking). ε = ``label_smoothing`` must be > 0 (log ε): left at 0, the config's
    default, it is the paper's 1e-3 (TRL refuses 0 instead). At h = 0, q = (½, ½) and the loss
    is −log 2 − ½·log(ε(1 − ε)).
    Rewards: β·(π − r).
    """
    eps = label_smoothing or EXO_EPSILON
    if not 0 < eps < 1:
        raise ConfigError(f"label_smoothing: exo_pair needs 0 < ε < 1 (the paper uses 1e-3), "
                          f"got {label_smoothing}")
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps)
    z = beta * margin(*logps, f_divergence, f_alpha)  # (B,)
    log_pw, log_pl = math.log1p(-eps), math.log(eps)
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - log_pw)
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - log_pl))
    return _output(losses, *logps, beta=beta)


@register("discopop")
def discopop(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    discopop_tau: float = 0.05,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """DiscoPOP, the log-ratio modulated loss (Chan et al. 2024, "Discovering Preference
    Optimization Algorithms with and for Large Language Models", arXiv 2406.08414, Eq. 5).

        ρ = β·h,   m = σ(ρ/τ)
        loss = (1 − m)·(−log σ(ρ)) + m·exp(−ρ)

    A blend of the logistic (DPO) and exponential losses, the exponential one weighing more as
    the margin grows. τ = ``discopop_tau`` = 0.05, the paper's value. The loss is not convex:
    with τ = 0.05 it has a bump at ρ = 0, its slope positive for ρ in about (−0.12, 0.08), so
    at policy == reference a pair's margin first moves *down* to the local minimum near
    ρ ≈ −0.12 unless other pairs pull the policy past it (τ >= ~0.6 removes the bump).
    Rewards: β·(π − r).
    """
    if discopop_tau <= 0:
        raise ConfigError(f"discopop_tau: must be > 0, got {discopop_tau}")
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps)
    rho = beta * margin(*logps, f_divergence, f_alpha)  # (B,)
    m = torch.sigmoid(rho / discopop_tau)
    losses = (1 - m) * -F.logsigmoid(rho) + m * torch.exp(-rho)
    return _output(losses, *logps, beta=beta)


@register("sigmoid_norm", LossSpec(token_mean=True))
def sigmoid_norm(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """DPO on per-token-mean log-ratios (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7, with
    each completion's log-ratio divided by its token count, as TRL's ``sigmoid_norm``).

        h = f'(πc/rc)/|yc| − f'(πr/rr)/|yr|      (summed log-probs; f' = score)
        loss = −log σ(β·h)

    With the reverse KL this is ``dpo`` with ``length_normalize=true``; under another
    f-divergence the score is taken of the summed log-ratio, then averaged, as TRL does.
    Rewards: β·(π − r) of the summed log-probs (as TRL logs them).
    """
    uc = policy_chosen_logps - reference_chosen_logps
    ur = policy_rejected_logps - reference_rejected_logps
    nc = chosen_lengths.clamp(min=1).to(uc.dtype)
    nr = rejected_lengths.clamp(min=1).to(ur.dtype)
    h = score(uc, f_divergence, f_alpha) / nc - score(ur, f_divergence, f_alpha) / nr  # (B,)
    losses = -F.logsigmoid(beta * h)
    return LossOutput(losses, (beta * uc).detach(), (beta * ur).detach())


@register("dpop")
def dpop(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    dpop_lambda: float = 50.0,
) -> LossOutput:
    """DPO-Positive, DPOP (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference
    Optimisation with DPO-Positive", arXiv 2402.13228, Eq. 3).

        loss = −log σ( β·( h − λ·max(0, rc − πc) ) )

    DPO can raise the margin while *lowering* the chosen completion's likelihood (both
    log-probs fall, the rejected one faster). The penalty is zero while πc >= rc and grows as
    the policy's chosen log-prob drops below the reference's. λ = ``dpop_lambda`` = 50, the
    paper's setting. Rewards: β·(π − r). Metric ``dpop_penalty``: mean max(0, rc − πc).
    """
    pc, pr, rc, rr = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps)
    penalty = torch.relu(rc - pc)  # (B,)
    losses = -F.logsigmoid(beta * (margin(pc, pr, rc, rr) - dpop_lambda * penalty))
    out = _output(losses, pc, pr, rc, rr, beta=beta)
    return LossOutput(out.losses, out.chosen_rewards, out.rejected_rewards,
                      {"dpop_penalty": penalty.detach().mean()})


@register("rdpo")
def rdpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    rdpo_alpha: float = 0.01,
) -> LossOutput:
    """R-DPO, length-regularised DPO (Park, Rafailov, Ermon & Finn 2024, "Disentangling Length
    from Quality in Direct Preference Optimization", arXiv 2403.19159, Eq. 9).

        loss = −log σ( β·h + α·(|yw| − |yl|) )

    |y| is the completion's token count. The length term credits a longer chosen completion
    with part of the margin up front, so the policy gains less by growing its answers (DPO's
    verbosity exploit); α = ``rdpo_alpha`` = 0.01 (the paper sweeps α per β; 0 is DPO).
    Rewards: β·(π − r).
    """
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps)
    length_gap = (chosen_lengths - rejected_lengths).to(policy_chosen_logps.dtype)  # (B,)
    losses = -F.logsigmoid(beta * margin(*logps) + rdpo_alpha * length_gap)
    return _output(losses, *logps, beta=beta)
