"""Tokenized rows -> padded batches, and the order in which the loop visits them.

A ``PreferenceBatch`` stacks the chosen sequences of B pairs above their rejected sequences,
``(2B, T)``, so the policy scores both in one forward pass. SFT rows give ``(B, T)``.

The order is decided per optimizer step: each epoch is shuffled with the seed, rows of similar
length are grouped (sorted within windows of 50 steps) to cut padding, and each step's rows
are then split into ``grad_accum`` micro-batches. So batch 8 × accumulation 1 and batch 4 ×
accumulation 2 see the same rows in the same step, and the position (epoch, step) alone says
where a resumed run continues.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tether.data.tokenization import TokenizedPair

__all__ = ["PreferenceBatch", "collate", "step_batches"]

GROUP_WINDOW = 50  # steps whose rows are length-sorted together


@dataclass
class PreferenceBatch:
    input_ids: Tensor  # (2B, T) chosen rows then rejected rows; (B, T) for SFT; (K·B, T) ranked
    attention_mask: Tensor  # (2B, T)
    completion_mask: Tensor  # (2B, T) 1 on tokens whose log-prob is scored
    index: Tensor  # (B,) row numbers in the dataset (keys of the reference cache)
    pairs: int  # B

    def to(self, device: torch.device) -> PreferenceBatch:
        return PreferenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            self.index.to(device),
            self.pairs,
        )

    @property
    def tokens(self) -> int:
        """Non-padding tokens (the throughput unit of the benchmarks)."""
        return int(self.attention_mask.sum())


def collate(rows: Sequence[TokenizedPair], index: Sequence[int], pad_id: int) -> PreferenceBatch:
    """Right-pad prompt+chosen (then prompt+rejected, for pairs) into one batch.

    In general the j-th completion of every row forms block j, so K completions per row give
    ``(K·B, T)``; ranked rows with fewer than K responses get empty (unscored) completions.
    """
    k = max(len(r.completions) for r in rows)
    seqs = [
        (r.prompt, r.completions[j] if j < len(r.completions) else [])
        for j in range(k)
        for r in rows
    ]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        attn[i, :n] = 1
        mask = rows[i].chosen_mask if i < len(rows) else None  # block 0: the chosen rows
        comp[i, len(p) : n] = torch.tensor(mask) if mask is not None else 1
    return PreferenceBatch(ids, attn, comp, torch.tensor(list(index)), len(rows))


def step_batches(
    lengths: Sequence[int],
    rows_per_step: int,
    epoch: int,
    seed: int,
    group_by_length: bool = True,
) -> list[list[int]]:
    """Row indices for each optimizer step of one epoch (the last partial step is dropped
    unless the epoch has fewer rows than one step)."""
    order = list(range(len(lengths)))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    if group_by_length:
        window = rows_per_step * GROUP_WINDOW
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lambda i: -lengths[i])
        ]
    steps = [order[s : s + rows_per_step] for s in range(0, len(order), rows_per_step)]
    if len(steps) > 1 and len(steps[-1]) < rows_per_step:
        steps.pop()
    if group_by_length:  # sorted windows would otherwise put the longest steps first
        random.Random(seed * 100_003 + epoch + 1).shuffle(steps)
    return steps


def micro_batches(step: list[int], grad_accum: int) -> Iterator[list[int]]:
    size = -(-len(step) // grad_accum)
    for s in range(0, len(step), size):
        yield step[s : s + size]
