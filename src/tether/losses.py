"""Preference objectives as pure functions of per-sequence log-probs, and their registry.

Notation follows the papers: ``policy_chosen_logps`` = log πθ(y_w|x), ``reference_chosen_logps``
= log π_ref(y_w|x), each a ``(B,)`` tensor summed over completion tokens (or averaged when the
run asks for it). h = (πc − rc) − (πr − rr) is the difference of the implicit rewards / β.

A loss is chosen by name through ``LOSSES``; ``LOSS_SPECS`` says what each one needs (a
reference model or not, which data shape) so the training setup, not the loop, decides.
Every loss returns a ``LossOutput`` whose rewards are β·(policy − reference), detached.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "LOSS_SPECS", "LossOutput", "LossSpec", "call_loss", "dpo", "register", "sft"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class LossOutput:
    """Per-example losses and implicit rewards, all ``(B,)``; rewards carry no gradient."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


@dataclass(frozen=True)
class LossSpec:
    """What an objective needs from the pipeline."""

    needs_reference: bool = True
    # pairs: (prompt, chosen, rejected); completions: SFT rows; unpaired: KTO rows;
    # ranked: k responses with a ranking or scores.
    data: Literal["pairs", "completions", "unpaired", "ranked"] = "pairs"


LossFn = Callable[..., LossOutput]
LOSSES: dict[str, LossFn] = {}
LOSS_SPECS: dict[str, LossSpec] = {}


def register(name: str, spec: LossSpec | None = None) -> Callable[[LossFn], LossFn]:
    """Add a loss to ``LOSSES`` under ``name`` (a decorator)."""

    def add(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        LOSS_SPECS[name] = spec or LossSpec()
        return fn

    return add


def call_loss(name: str, *args: Tensor | None, **available: Any) -> LossOutput:
    """Call ``LOSSES[name]`` with the positional log-probs and the keyword arguments it declares.

    The loop offers everything it knows (``beta``, ``label_smoothing``, token counts, ...); each
    loss takes what its signature names, so no loss needs a catch-all ``**kwargs``.
    """
    fn = LOSSES[name]
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in available.items() if k in params}
    return fn(*args, **kwargs)


def _rewards(policy: Tensor, reference: Tensor | None, beta: float) -> Tensor:
    if reference is None:
        return (beta * policy).detach()
    return (beta * (policy - reference)).detach()


@register("dpo")
def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7); conservative DPO when ε > 0.

        h = (πc − rc) − (πr − rr)
        loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)

    ε = ``label_smoothing`` is the assumed probability that a pair's labels are flipped
    (Mitchell 2023, "A note on DPO with noisy preferences"); ε = 0 is the paper's loss.
    """
    h = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )
    return LossOutput(
        losses,
        _rewards(policy_chosen_logps, reference_chosen_logps, beta),
        _rewards(policy_rejected_logps, reference_rejected_logps, beta),
    )


@register("sft", LossSpec(needs_reference=False, data="completions"))
def sft(policy_logps: Tensor, token_counts: Tensor) -> LossOutput:
    """Supervised fine-tuning: token-mean negative log-likelihood of each completion.

        loss_i = −Σ_t log πθ(y_t | x, y_<t) / |y_i|

    ``policy_logps`` are per-sequence sums ``(B,)`` and ``token_counts`` their token counts.
    Prompt tokens never enter: log-probs are taken over completion tokens only. No reward.
    """
    losses = -policy_logps / token_counts.clamp(min=1)
    zeros = torch.zeros_like(policy_logps).detach()
    return LossOutput(losses, zeros, zeros)
