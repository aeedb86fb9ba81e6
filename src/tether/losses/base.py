"""The loss registry: ``LossOutput``, ``LossSpec``, ``LOSSES``, ``register``, ``call_loss``.

Notation follows the papers: ``policy_chosen_logps`` = log πθ(y_w|x), ``reference_chosen_logps``
= log π_ref(y_w|x), each a ``(B,)`` tensor summed over completion tokens (or averaged per token
when the run sets ``length_normalize``). h = (πc − rc) − (πr − rr) is the difference of the
implicit rewards / β.

A loss is chosen by name through ``LOSSES``; ``LOSS_SPECS`` says what each one needs (a
reference model or not, which data shape, its own default β) so the training setup, not the
loop, decides. Every loss returns a ``LossOutput``; its rewards are what the loss's paper calls
the reward (β·(policy − reference) for the reference-based ones), always detached.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "LOSSES",
    "LOSS_SPECS",
    "DataShape",
    "LossOutput",
    "LossSpec",
    "call_loss",
    "register",
]

Tensor = torch.Tensor
# a name in tether.shapes.SHAPES: pairs, completions, unpaired, ranked, or one registered later
DataShape = str


@dataclass(frozen=True)
class LossOutput:
    """Per-example losses and rewards; rewards and metrics carry no gradient.

    Pairwise objectives: all three are ``(B,)``. Unpaired (KTO): ``losses`` is ``(B,)``,
    ``chosen_rewards`` / ``rejected_rewards`` hold the rewards of the desirable / undesirable
    rows only (so their lengths differ). Ranked: ``losses`` is ``(B,)``, the rewards are those of
    each row's best and worst response. ``metrics`` holds extra per-objective scalars (KTO's
    reference point, ORPO's log odds ratio, the NLL term, ...), each a 0-d tensor.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossSpec:
    """What an objective needs from the pipeline."""

    needs_reference: bool = True
    # pairs: (prompt, chosen, rejected); completions: SFT rows; unpaired: KTO rows
    # (prompt, completion, label); ranked: k responses with a ranking or scores.
    data: DataShape = "pairs"
    # β used when the user sets none: 0.1 for the DPO family, SimPO's paper uses 2.0.
    default_beta: float = 0.1
    # The objective is defined on token-mean log-probs: it takes summed log-probs plus token
    # counts and averages itself, so ``length_normalize`` has nothing left to do.
    token_mean: bool = False
    # The objective already contains an NLL term (ORPO, RRHF, SFT): ``nll_weight`` would count
    # it twice.
    includes_nll: bool = False


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


def rewards(policy: Tensor, reference: Tensor | None, beta: float) -> Tensor:
    """The implicit reward β·(log πθ − log π_ref) (β·log πθ without a reference), detached."""
    if reference is None:
        return (beta * policy).detach()
    return (beta * (policy - reference)).detach()


def token_mean(logps: Tensor, lengths: Tensor) -> Tensor:
    """Summed log-probs → mean per completion token; empty completions count as one token."""
    return logps / lengths.clamp(min=1).to(logps.dtype)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012, "Accurately computing
    log(1 − exp(−|a|))"): expm1 near 0, log1p far from it."""
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )
