"""Loss mixtures: a weighted sum of pairwise objectives on the same batch (MPO).

Wang et al. 2024 ("Enhancing the Reasoning Ability of Multimodal Large Language Models via
Mixed Preference Optimization", arXiv 2411.10442) train on

    loss = w_p·L_dpo + w_q·L_bco_pair + w_g·L_sft,     (0.8, 0.2, 1.0) in the paper

the preference, quality and generation terms. Any pairwise objectives mix the same way:
``loss=mixture mixture=dpo,bco_pair,sft loss_weights=0.8,0.2,1.0``. ``LossConfig`` binds
each term to its own keys (β, ε, τ, ...) and hands the bound terms to ``mixture``, which stays
a pure function of the log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from tether.losses.base import LossOutput, LossSpec, register

__all__ = ["PAIR_TERMS", "LossTerm", "chosen_token_nll", "mixture"]

Tensor = torch.Tensor


class LossTerm(NamedTuple):
    """One term of a mixture: its name, weight, and the objective bound to its keys, called
    with the four log-prob tensors and ``chosen_lengths`` / ``rejected_lengths``."""

    name: str
    weight: float
    fn: Callable[..., LossOutput]


def chosen_token_nll(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor | None = None,
) -> LossOutput:
    """The ``sft`` term of a mixture: NLL of the batch's chosen tokens over their number.

        mean_i loss_i = −Σ_i πc_i / Σ_i |yc_i|,   so   loss_i = −πc_i · B / Σ_j |yc_j|

    A token-level mean over the whole batch (TRL's ``sft`` loss type on pairs), written as
    per-row losses whose mean it is. No reward.
    """
    n = chosen_lengths.sum().clamp(min=1).to(policy_chosen_logps.dtype)
    losses = -policy_chosen_logps * policy_chosen_logps.shape[0] / n  # (B,)
    zeros = torch.zeros_like(losses).detach()
    return LossOutput(losses, zeros, zeros)


# Terms whose registered objective trains on another data shape, in their form on pairs.
PAIR_TERMS: dict[str, Callable[..., LossOutput]] = {"sft": chosen_token_nll}


@register("mixture", LossSpec(token_mean=True))
def mixture(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    loss_terms: Sequence[LossTerm] = (),
) -> LossOutput:
    """A weighted sum of pairwise objectives (MPO; Wang et al. 2024, arXiv 2411.10442, Eq. 1).

        loss_i = Σ_k w_k · loss_k,i

    so the batch mean is Σ_k w_k · mean(loss_k), TRL's ``loss_type=[...]`` with
    ``loss_weights``. Each term sees the summed log-probs and averages them itself where its
    definition says so. Rewards: those of the first term (list an objective with rewards
    first). Metrics: ``loss/<term>``, each term's unweighted mean loss, and each term's own
    metrics as ``<term>/<metric>``.
    """
    if not loss_terms:
        raise ValueError("mixture: no terms (set mixture=[...])")  # LossConfig checks this
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps)
    lengths = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    outs = [term.fn(*logps, **lengths) for term in loss_terms]
    losses = sum((t.weight * o.losses for t, o in zip(loss_terms, outs, strict=True)),
                 torch.zeros_like(policy_chosen_logps))
    metrics: dict[str, Tensor] = {}
    for term, out in zip(loss_terms, outs, strict=True):
        metrics[f"loss/{term.name}"] = out.losses.detach().mean()
        metrics.update({f"{term.name}/{k}": v for k, v in out.metrics.items()})
    return LossOutput(losses, outs[0].chosen_rewards, outs[0].rejected_rewards, metrics)
