"""KTO: an objective for unpaired data, each row one completion labelled desirable or not.

Rows look like ``{prompt, completion, label: true|false}``; a preference pair splits into one
desirable and one undesirable row (``split_pair``). KTO's reference point needs the log-probs of
*mismatched* prompt/completion pairs, built from the same batch by ``mismatched_indices``.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from tether.losses.base import LossOutput, LossSpec, register

__all__ = ["kto", "mismatched_indices", "split_pair"]

Tensor = torch.Tensor
T = TypeVar("T")


def mismatched_indices(n: int) -> list[int]:
    """Completion index to pair with prompt i for KTO's reference point: i + 1 (mod n).

    A rotation by one never pairs a prompt with its own completion when n >= 2 (a reversal
    would, for the middle row of an odd batch). With n = 1 there is nothing to mismatch and the
    row is paired with itself; the pipeline asks for batches of at least two.
    """
    return [(i + 1) % n for i in range(n)] if n > 0 else []


def split_pair(prompt: T, chosen: T, rejected: T) -> list[tuple[T, T, bool]]:
    """A preference pair as two unpaired KTO rows: (prompt, chosen, True), (prompt, rejected,
    False), as the KTO paper does to compare against DPO on the same data."""
    return [(prompt, chosen, True), (prompt, rejected, False)]


@register("kto", LossSpec(needs_reference=True, data="unpaired"))
def kto(
    policy_logps: Tensor,
    reference_logps: Tensor,
    policy_kl_logps: Tensor,
    reference_kl_logps: Tensor,
    labels: Tensor,
    *,
    beta: float,
    kto_desirable_weight: float = 1.0,
    kto_undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO (Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela 2024, arXiv 2402.01306).

        r   = log πθ(y|x) − log π_ref(y|x)                  (B,) the labelled rows
        z0  = max(0, mean_i[ log πθ(y'_i|x_i) − log π_ref(y'_i|x_i) ])   mismatched pairs
        loss = λD·(1 − σ(β·(r − z0)))   if the row is desirable (label true)
               λU·(1 − σ(β·(z0 − r)))   if undesirable

    z0 is the batch estimate of KL(πθ ‖ π_ref), KTO's reference point; y'_i is another row's
    completion (``mismatched_indices``), so ``policy_kl_logps`` / ``reference_kl_logps`` are
    (B,) log-probs of those pairs. z0 is detached: it sets the point gains and losses are
    measured from, and no gradient flows through it. λD = ``kto_desirable_weight``, λU =
    ``kto_undesirable_weight`` (both 1 by default); the paper advises λD·n_D / (λU·n_U) in
    [1, 4/3] when the counts n_D, n_U of the two kinds differ.

    Rewards: β·r, split by label (``chosen_rewards`` the desirable rows, ``rejected_rewards``
    the undesirable ones). Metrics: ``kl`` = z0.
    """
    labels = labels.to(torch.bool)
    r = policy_logps - reference_logps  # (B,)
    z0 = (policy_kl_logps - reference_kl_logps).mean().clamp(min=0).detach()  # ()
    desirable = kto_desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    undesirable = kto_undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(labels, desirable, undesirable)  # (B,)
    reward = (beta * r).detach()
    return LossOutput(losses, reward[labels], reward[~labels], {"kl": z0})
