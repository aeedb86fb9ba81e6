"""Implicit-reward accuracy on held-out pairs: does the policy rank chosen above rejected?

DPO's policy defines a reward r(x, y) = β (log πθ(y|x) − log π_ref(y|x)) (Rafailov et al. 2023,
eq. 5). Accuracy is the share of pairs with r(chosen) > r(rejected) (an exact tie counts 0.5),
with a Wilson interval; the margin is the mean of r(chosen) − r(rejected). No generation, no
judge: a cheap check that training moved the model the intended way on unseen pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tether.data.batching import collate
from tether.data.tokenization import TokenizedPair
from tether.eval.stats import wilson_interval
from tether.model.logprobs import sequence_logps

__all__ = ["implicit_reward_stats", "pair_logps"]


@torch.no_grad()
def pair_logps(
    model: Any, rows: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the chosen and the rejected answer, each ``(N,)`` fp32."""
    device = next(model.parameters()).device
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        batch = collate(part, range(start, start + len(part)), pad_id).to(device)
        logps, _ = sequence_logps(
            model, batch.input_ids, batch.attention_mask, batch.completion_mask, chunk
        )  # (2B,) chosen rows then rejected rows
        chosen.append(logps[: batch.pairs].cpu())
        rejected.append(logps[batch.pairs :].cpu())
    return torch.cat(chosen), torch.cat(rejected)


def implicit_reward_stats(
    policy: tuple[torch.Tensor, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor],
    beta: float,
) -> dict:
    """Accuracy (ties 0.5), its Wilson 95% interval, and the mean and sd of the reward margin."""
    chosen_reward = beta * (policy[0] - reference[0])  # (N,)
    rejected_reward = beta * (policy[1] - reference[1])  # (N,)
    margin = (chosen_reward - rejected_reward).double()
    n = int(margin.numel())
    if n == 0:
        return {"n": 0, "accuracy": None, "wilson95": None, "margin_mean": None, "beta": beta}
    correct = float((margin > 0).sum()) + 0.5 * float((margin == 0).sum())
    return {
        "n": n,
        "accuracy": correct / n,
        "wilson95": list(wilson_interval(correct, n)),
        "margin_mean": float(margin.mean()),
        "margin_std": float(margin.std()) if n > 1 else 0.0,
        "chosen_reward_mean": float(chosen_reward.double().mean()),
        "rejected_reward_mean": float(rejected_reward.double().mean()),
        "beta": beta,
    }
