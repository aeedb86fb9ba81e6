"""TR-DPO's reference: a copy of the policy that follows it during training.

Gorbatovski et al. 2024, *Learn Your Reference Model for Real Good Alignment* (TR-DPO), arXiv
2404.09656: every τ optimizer steps (``ref_model_sync_steps``) the reference's
parameters become

    θ_ref ← α·θ + (1 − α)·θ_ref        (soft update; α = ``ref_model_mixup_alpha``)

and α = 1 is the hard update θ_ref ← θ. TRL 1.16 (``sync_ref_model``) applies the same rule at
the end of every step whose number is a multiple of τ, with one α for both forms.

The strategy is a ``Reference`` (it scores batches with its model, like ``FrozenCopy``) plus
``after_step``, which the loop calls once per optimizer step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from tether.errors import ConfigError
from tether.model.prefix_sharing import Batch
from tether.training.reference.base import Reference, RefSums
from tether.training.reference.frozen import FrozenCopy, ScorerReference

__all__ = ["SyncedCopy", "no_sync", "synced_reference"]

log = logging.getLogger("tether")


class SyncedCopy:
    """A per-batch reference whose ``model`` is moved toward ``policy`` every ``every`` steps."""

    def __init__(self, inner: Reference, model: nn.Module, policy: nn.Module, every: int,
                 alpha: float) -> None:
        ref_params, policy_params = list(model.parameters()), list(policy.parameters())
        shapes = [p.shape for p in ref_params] == [p.shape for p in policy_params]
        if not shapes:  # a reference_model of another architecture
            raise ConfigError(
                "ref_model_sync_steps: the reference_model's parameters differ from the "
                "policy's, so TR-DPO cannot move one toward the other; use a reference_model "
                "of the policy's architecture or none"
            )
        self.inner, self.every, self.alpha = inner, every, alpha
        self.pairs = list(zip(ref_params, policy_params, strict=True))
        log.info("reference: synced to the policy every %d steps, α=%g (TR-DPO)", every, alpha)

    def __call__(self, batch: Batch, split: str) -> RefSums:
        return self.inner(batch, split)  # type: ignore[arg-type]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (counted from 1): θ_ref ← α·θ + (1 − α)·θ_ref when
        ``step`` is a multiple of τ."""
        if step % self.every:
            return
        for ref, p in self.pairs:
            if self.alpha == 1.0:
                ref.copy_(p)
            else:
                ref.lerp_(p.to(ref.dtype), self.alpha)  # ref + α(p − ref)


def no_sync(step: int) -> None:
    """The ``after_step`` of every fixed reference."""


def synced_reference(
    reference: Reference | None, policy: nn.Module, every: int, alpha: float
) -> tuple[Reference | None, Callable[[int], None]]:
    """``reference`` made to follow ``policy`` when ``every`` > 0 (TR-DPO), and the hook the
    loop calls after each optimizer step (``no_sync`` for a fixed reference)."""
    if every == 0 or reference is None:
        return reference, no_sync
    model: nn.Module
    if isinstance(reference, FrozenCopy):
        model = reference.model
    elif isinstance(reference, ScorerReference):  # reference_model: a model of its own
        model = reference.scorer.model  # type: ignore[assignment]  # a SequenceLogProbs
    else:  # internal: TrainConfig and reference_kind leave only the two above
        raise TypeError(f"TR-DPO cannot move a {type(reference).__name__} reference")
    synced = SyncedCopy(reference, model, policy, every, alpha)
    return synced, synced.after_step
