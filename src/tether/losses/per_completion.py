"""Objectives on each completion's own log-ratio, not only the margin: nca_pair, bco_pair,
sppo_hard, apo_zero, apo_down and cal_dpo.

With u_w = πc − rc and u_l = πr − rr (log πθ − log π_ref of the chosen and the rejected
completion), DPO only sees u_w − u_l, so both log-probs may fall together. These objectives
also pin the level of each: push u_w up and u_l down (nca, bco, apo_zero), regress them onto
±1/(2β) (sppo_hard, cal_dpo), or push both down (apo_down). Rewards: β·u of each completion.
No f-divergence: the log Z(x) term cancels only in the margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.losses.base import LossOutput, register

__all__ = ["apo_down", "apo_zero", "bco_pair", "cal_dpo", "nca_pair", "sppo_hard"]

Tensor = torch.Tensor


def _ratios(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    return pc - rc, pr - rr  # u_w, u_l (B,)


def _output(losses: Tensor, u_w: Tensor, u_l: Tensor, beta: float) -> LossOutput:
    return LossOutput(losses, (beta * u_w).detach(), (beta * u_l).detach())


@register("nca_pair")
def nca_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """NCA, pairwise form (Chen et al. 2024, "Noise Contrastive Alignment of Language Models
    with Explicit Rewards", arXiv 2402.05369; the K = 2 case with binary preferences).

        loss = −log σ(β·u_w) − ½·log σ(−β·u_w) − ½·log σ(−β·u_l)

    NCA scores each completion against the reference on its own (noise-contrastive
    estimation), so the chosen completion's likelihood rises in absolute terms instead of only
    relative to the rejected one. Rewards: β·u.
    """
    u_w, u_l = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
    losses = (-F.logsigmoid(beta * u_w) - 0.5 * F.logsigmoid(-beta * u_w)
              - 0.5 * F.logsigmoid(-beta * u_l))
    return _output(losses, u_w, u_l, beta)


@register("bco_pair")
def bco_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment", arXiv 2404.04656), in TRL 1.16's form.

        loss = −log σ(β·u_w − δ) − log σ(−(β·u_l − δ)),   δ = 0

    BCO trains the implicit reward β·u as a binary classifier (chosen: 1, rejected: 0). The
    paper shifts both rewards by δ, a running mean of past rewards across batches; TRL 1.16's
    ``bco_pair`` drops that running mean (δ = 0, no state kept between steps) and so does this
    function, which keeps it a pure function of the batch and equal to TRL. Rewards: β·u.
    """
    u_w, u_l = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
    losses = -F.logsigmoid(beta * u_w) - F.logsigmoid(-beta * u_l)
    return _output(losses, u_w, u_l, beta)


@register("sppo_hard")
def sppo_hard(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """SPPO with hard win probabilities (Wu et al. 2024, "Self-Play Preference Optimization for
    Language Model Alignment", arXiv 2405.00675, Eq. 4.7 with P(y_w ≻ y_l) = 1).

        loss = (u_w − 1/(2β))² + (u_l + 1/(2β))²

    SPPO regresses each log-ratio onto β⁻¹·(P(win) − ½); with the winner's probability set to 1
    and the loser's to 0 the targets are ±1/(2β). The paper estimates soft probabilities with a
    preference model (PairRM) outside the trainer; the hard form needs only pairs. Rewards: β·u.
    """
    u_w, u_l = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
    losses = (u_w - 0.5 / beta) ** 2 + (u_l + 0.5 / beta) ** 2
    return _output(losses, u_w, u_l, beta)


@register("apo_zero")
def apo_zero(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", arXiv 2408.06266, Eq. 7).

        loss = (1 − σ(β·u_w)) + σ(β·u_l)

    Anchored to the reference: raise the chosen likelihood and lower the rejected one, each on
    its own. For data whose chosen answers are better than the model's own. Rewards: β·u.
    """
    u_w, u_l = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
    losses = (1 - torch.sigmoid(beta * u_w)) + torch.sigmoid(beta * u_l)
    return _output(losses, u_w, u_l, beta)


@register("apo_down")
def apo_down(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 8).

        loss = σ(β·u_w) + (1 − σ(β·(u_w − u_l)))

    Lower the chosen likelihood and the rejected one more: for data whose chosen answers are
    still worse than the model's own. Rewards: β·u.
    """
    u_w, u_l = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
    losses = torch.sigmoid(beta * u_w) + (1 - torch.sigmoid(beta * (u_w - u_l)))
    return _output(losses, u_w, u_l, beta)


@register("cal_dpo")
def cal_dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """Cal-DPO (Xiao, Yuan, Zhu, Li & Honavar 2024, "Cal-DPO: Calibrated Direct Preference
    Optimization for Language Model Alignment", arXiv 2412.14516).

        loss = −log σ(u_w − u_l) + (u_w − 1/(2β))² + (u_l + 1/(2β))²

    A contrastive term on the margin plus a calibration term that regresses each implicit
    reward onto the scale of a ±½ ground-truth reward (the second part is ``sppo_hard``), so
    the chosen log-ratio must end up positive rather than merely above the rejected one.
    Rewards: β·u.
    """
    u_w, u_l = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
    calibration = (u_w - 0.5 / beta) ** 2 + (u_l + 0.5 / beta) ** 2
    losses = -F.logsigmoid(u_w - u_l) + calibration
    return _output(losses, u_w, u_l, beta)
