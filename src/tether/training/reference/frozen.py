"""References scored batch by batch: a frozen copy, a frozen model's scorer, LoRA adapters off."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tether.data.batching import PreferenceBatch
from tether.model.logprobs import SequenceLogProbs
from tether.model.lora import reference_weights
from tether.model.packing import PackedBatch, scorer_inputs
from tether.model.prefix_sharing import Batch, batch_logps
from tether.training.distributed import Dist, shard_module
from tether.training.reference.base import RefSums, split_blocks

__all__ = ["FrozenCopy", "LoraReference", "ScorerReference", "frozen_copy", "frozen_scorer"]


class FrozenCopy:
    """A frozen copy of the policy at its start, in the policy's own dtype and device."""

    def __init__(self, policy: nn.Module, chunk: int, autocast: bool = False) -> None:
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self.chunk = chunk
        self.autocast = autocast

    @torch.inference_mode()
    def __call__(self, batch: Batch, split: str) -> RefSums:
        dev = batch.input_ids.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            sums, _ = batch_logps(self.model, batch, self.chunk)
        return split_blocks(sums, batch.pairs)


class ScorerReference:
    """A frozen reference scored by its own ``SequenceLogProbs`` module (sharded under FSDP)."""

    def __init__(self, scorer: nn.Module, autocast: bool = False) -> None:
        self.scorer = scorer
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, batch: PreferenceBatch | PackedBatch, split: str) -> RefSums:
        dev = batch.input_ids.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            sums, _ = self.scorer(**scorer_inputs(batch))
        return split_blocks(sums, batch.pairs)


class LoraReference:
    """The reference from the policy's own weights: one copy of the base in memory.

    ``scorer`` is the module whose forward gives ``(sums, counts)`` for the policy (a
    ``SequenceLogProbs``, FSDP-sharded or not; never the DDP wrapper, whose forward would
    prepare a gradient all-reduce for a pass that has no backward).
    """

    def __init__(self, model: Any, scorer: nn.Module, autocast: bool = False) -> None:
        self.model = model
        self.scorer = scorer
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, batch: PreferenceBatch | PackedBatch, split: str) -> RefSums:
        dev = batch.input_ids.device
        was_training = self.model.training
        self.model.eval()  # a reference adapter with dropout must not drop
        try:
            with reference_weights(self.model), torch.autocast(
                dev.type, dtype=torch.bfloat16, enabled=self.autocast
            ):
                # [0]: the policy's scorer also returns WPO's sums in a WPO run
                sums = self.scorer(**scorer_inputs(batch))[0]
        finally:
            self.model.train(was_training)
        return split_blocks(sums, batch.pairs)


def frozen_scorer(model: nn.Module, d: Dist, device: torch.device, chunk: int) -> nn.Module:
    """``SequenceLogProbs`` of a frozen model: whole on every rank, or FSDP-sharded (1/N of
    the model per rank; its forward gathers one layer at a time, like the policy's)."""
    scorer = SequenceLogProbs(model.eval().requires_grad_(False), chunk)
    if d.mode == "fsdp":
        shard_module(scorer, d, device, autocast=False)  # frozen: no gradients to reduce
    return scorer


def frozen_copy(
    policy: nn.Module, d: Dist, device: torch.device, chunk: int, autocast: bool
) -> FrozenCopy | ScorerReference:
    """A frozen copy of the policy as it starts (call before ``wrap_policy``: FSDP shards in
    place). Under FSDP the copy is sharded too, so it costs 1/N of a model per rank."""
    if d.mode != "fsdp":
        return FrozenCopy(policy, chunk, autocast)
    return ScorerReference(frozen_scorer(copy.deepcopy(policy), d, device, chunk), autocast)
