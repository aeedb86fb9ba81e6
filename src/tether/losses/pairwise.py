"""Pairwise objectives against a reference model: dpo (and cDPO), robust, ipo, hinge.

Each is a pure function of four ``(B,)`` log-prob tensors. With h = (πc − rc) − (πr − rr) they
differ only in the function of β·h they minimise, which is what their docstrings show. dpo,
robust and hinge take an f-divergence (``f_divergence``, ``f_alpha``) that maps each log-ratio
to its score before the margin is taken (f-DPO, ``tether.losses.fdivergence``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.losses.base import LossOutput, register, rewards
from tether.losses.fdivergence import margin

__all__ = ["dpo", "hinge", "ipo", "robust"]

Tensor = torch.Tensor


def _output(
    losses: Tensor, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float
) -> LossOutput:
    return LossOutput(losses, rewards(pc, rc, beta), rewards(pr, rr, beta))


@register("dpo")
def dpo(
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
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7); conservative DPO when ε > 0.

        h = (πc − rc) − (πr − rr)
        loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)

    ε = ``label_smoothing`` is the assumed probability that a pair's labels are flipped
    (Mitchell 2023, "A note on DPO with noisy preferences"); ε = 0 is the paper's loss.
    ``f_divergence`` (f-DPO, ``tether.losses.fdivergence``) replaces each log-ratio in h by its
    f-divergence score; ``reverse_kl`` is the paper's DPO. Rewards: β·(π − r) of each
    completion (also under another f-divergence, as TRL logs them).
    """
    logps = (
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    h = margin(*logps, f_divergence, f_alpha)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )
    return _output(losses, *logps, beta=beta)


@register("robust")
def robust(
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
    """Robust DPO, rDPO (Chowdhury, Kini & Natarajan 2024, arXiv 2403.00409).

        loss = [ −(1 − ε)·log σ(β·h) + ε·log σ(−β·h) ] / (1 − 2ε),   0 <= ε < 0.5

    ε = ``label_smoothing`` is the known rate at which labels are flipped. Unlike cDPO this is
    an unbiased estimate of the clean-label DPO loss: its expectation over the flips equals DPO
    on the true labels. It is unbounded below (a pair pushed far past its margin keeps a slope
    of ε/(1 − 2ε)), so it always pushes h up; ε = 0 is exactly ``dpo``.
    Rewards: β·(π − r).
    """
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"label_smoothing: robust needs 0 <= label_smoothing < 0.5 (the flip rate), "
            f"got {label_smoothing}"
        )
    logps = (
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    h = margin(*logps, f_divergence, f_alpha)  # (B,)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return _output(losses, *logps, beta=beta)


@register("ipo")
def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17), β playing the paper's τ.

        loss = (h − 1/(2β))²

    A squared loss regresses h onto the fixed target 1/(2β) instead of pushing it to infinity,
    which is IPO's answer to DPO over-fitting deterministic preferences. At h = 1/(2β) both the
    loss and its gradient are zero.

    Two variants exist and tether has both: the paper's h uses log-probs summed over the
    completion (the default); with ``length_normalize=true`` the pipeline passes log-probs
    averaged per token, the variant several toolkits default to, which makes the target
    1/(2β) independent of completion length. This function computes the same formula on
    whatever it is given. Rewards: β·(π − r).
    """
    logps = (
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    h = margin(*logps)  # (B,)
    losses = (h - 1 / (2 * beta)) ** 2
    return _output(losses, *logps, beta=beta)


@register("hinge")
def hinge(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> LossOutput:
    """Hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF", arXiv 2305.10425) on the DPO margin.

        loss = max(0, 1 − β·h)

    SLiC's calibration loss is max(0, δ − log πθ(y_w|x) + log πθ(y_l|x)); measured against the
    reference (the normalised form of Liu et al. 2023, RSO, arXiv 2309.06657) and with δ = 1/β
    it becomes β·max(0, 1/β − h), which is this loss. Pairs already separated by the margin 1/β
    contribute no gradient. Rewards: β·(π − r).
    """
    logps = (
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    h = margin(*logps, f_divergence, f_alpha)  # (B,)
    losses = torch.relu(1 - beta * h)
    return _output(losses, *logps, beta=beta)
