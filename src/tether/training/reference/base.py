"""What every reference strategy is: a callable from a batch to reference log-prob sums."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from tether.data.batching import PreferenceBatch

__all__ = ["RefSums", "Reference", "split_blocks"]

# (the first completion block (B,), the other blocks ((K-1)·B,)): for pairs and KTO rows
# (chosen, rejected); for ranked rows the best response and the rest, block by block.
RefSums = tuple[Tensor, Tensor]


class Reference(Protocol):
    def __call__(self, batch: PreferenceBatch, split: str) -> RefSums:
        """Reference log-prob sums of the batch's completions, split as ``RefSums`` (a
        shared-prefix batch only reaches references that read by row: ``Precomputed``)."""
        ...


def split_blocks(sums: Tensor, rows: int) -> RefSums:
    """``(K·B,)`` sums, block j = every row's j-th completion -> ``RefSums``."""
    return sums[:rows].clone(), sums[rows:].clone()
