"""Objectives without a reference model: simpo, orpo, simper and sft.

They take log-probs summed over completion tokens plus the token counts and average per token
themselves, because their papers define them on mean-token log-probs. The reference tensors of
the pairwise signature are accepted (so one call site serves every pairwise loss) and ignored;
the pipeline passes ``None`` and never computes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.losses.base import LossOutput, LossSpec, log1mexp, register, token_mean

__all__ = ["log_odds", "orpo", "sft", "simper", "simpo"]

Tensor = torch.Tensor


@register(
    "simpo", LossSpec(needs_reference=False, default_beta=2.0, token_mean=True)
)
def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> LossOutput:
    """SimPO (Meng, Xia & Chen 2024, arXiv 2405.14734): no reference model.

        loss = −log σ( β·πc/|yc| − β·πr/|yr| − γ )

    πc, πr summed log-probs, |y| completion tokens (``chosen_lengths``, ``rejected_lengths``).
    The reward is the paper's length-normalised r(x, y) = β·log πθ(y|x)/|y|, and γ is the target
    reward margin the chosen reward must clear. Defaults β = 2.0, γ = 1.0 (γ/β = 0.5) come from
    the settings the authors released; β = 2.0 is SimPO's own default, used when the run does
    not set β (``LossSpec.default_beta``).
    """
    chosen_rewards = beta * token_mean(policy_chosen_logps, chosen_lengths)  # (B,)
    rejected_rewards = beta * token_mean(policy_rejected_logps, rejected_lengths)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return LossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


def log_odds(p: Tensor) -> Tensor:
    """log odds(y|x) = log( P / (1 − P) ) = p − log(1 − exp(p)) for p = log P < 0.

    ``log1mexp`` keeps it accurate when P → 1 (p → 0⁻), where the naive log(1 − exp(p)) loses
    every digit; p is clamped just below 0 because a completion with P = 1 has infinite odds.
    """
    p = p.clamp(max=-torch.finfo(p.dtype).eps)
    return p - log1mexp(p)


@register("orpo", LossSpec(needs_reference=False, token_mean=True, includes_nll=True))
def orpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    orpo_lambda: float = 0.1,
) -> LossOutput:
    """ORPO (Hong, Lee & Thorne 2024, arXiv 2403.07691): SFT and preference in one loss.

        pc = πc/|yc|,  pr = πr/|yr|                       (mean-token log-probs)
        log odds(p) = p − log(1 − exp(p))
        loss = −pc − λ·log σ( log odds(pc) − log odds(pr) )

    The first term is the NLL of the chosen completion (so no separate SFT stage and no
    reference model); the second raises the odds ratio of chosen over rejected. λ =
    ``orpo_lambda`` = 0.1 is the paper's setting. ORPO has no β. Rewards: the log odds of each
    completion, so the logged margin is the paper's log odds ratio. Metrics: ``nll`` (the first
    term) and ``log_odds_ratio``.
    """
    pc = token_mean(policy_chosen_logps, chosen_lengths)  # (B,)
    pr = token_mean(policy_rejected_logps, rejected_lengths)  # (B,)
    odds_c, odds_r = log_odds(pc), log_odds(pr)
    ratio = odds_c - odds_r  # (B,)
    nll = -pc
    losses = nll - orpo_lambda * F.logsigmoid(ratio)
    metrics = {"nll": nll.detach().mean(), "log_odds_ratio": ratio.detach().mean()}
    return LossOutput(losses, odds_c.detach(), odds_r.detach(), metrics)


@register(
    "sft",
    LossSpec(needs_reference=False, data="completions", token_mean=True, includes_nll=True),
)
def sft(policy_logps: Tensor, token_counts: Tensor) -> LossOutput:
    """Supervised fine-tuning: token-mean negative log-likelihood of each completion.

        loss_i = −Σ_t log πθ(y_t | x, y_<t) / |y_i|

    ``policy_logps`` are per-sequence sums ``(B,)`` and ``token_counts`` their token counts.
    Prompt tokens never enter: log-probs are taken over completion tokens only. No reward.
    """
    losses = -token_mean(policy_logps, token_counts)
    zeros = torch.zeros_like(policy_logps).detach()
    return LossOutput(losses, zeros, zeros)


@register("simper", LossSpec(needs_reference=False, token_mean=True))
def simper(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> LossOutput:
    """SimPER (Xiao et al. 2025, "SimPER: A Minimalist Approach to Preference Alignment without
    Hyperparameters", arXiv 2502.00883): inverse perplexity, no reference, no hyperparameter.

        loss = −exp(πc/|yc|) + exp(πr/|yr|)

    exp of the mean-token log-prob is the completion's inverse perplexity, in (0, 1]; the loss
    raises the chosen one's and lowers the rejected one's, each bounded, so neither is pushed
    to ±∞ and no β or margin is needed. Rewards: the inverse perplexities.
    """
    inv_ppl_c = torch.exp(token_mean(policy_chosen_logps, chosen_lengths))  # (B,)
    inv_ppl_r = torch.exp(token_mean(policy_rejected_logps, rejected_lengths))  # (B,)
    losses = -inv_ppl_c + inv_ppl_r
    return LossOutput(losses, inv_ppl_c.detach(), inv_ppl_r.detach())
