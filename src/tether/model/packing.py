"""Padding-free batches: every sequence of a batch back to back in one row, no padding.

A plain batch pads each ``prompt‖completion`` sequence to the longest one, so a batch of one
1,000-token and seven 200-token sequences computes 8,000 positions for 2,400 tokens. A packed
batch is one row of the 2,400 tokens, with position ids that restart at 0 for every sequence
and no attention mask. transformers reads the packing from the position ids (a position that
does not follow its predecessor starts a new sequence): FlashAttention runs its variable-length
kernel over the sequences, FlexAttention builds a block-diagonal causal ``BlockMask``, and
sdpa/eager a dense block-diagonal mask (exact, but O(N²) in the row's length: use it to test,
not for speed). Every token then has exactly the context and positions it has in the padded
batch, so the log-probs are the same numbers (``tests/model/test_packing.py``).

The first token of each sequence is never a target, in both layouts: in the padded batch it has
no predecessor; here its predecessor is the previous sequence's last token, which must not
predict it. Rows with fewer completions than others (ranked data) contribute nothing for the
missing ones: their sums and counts stay 0, as in the padded batch.

Same idea as TRL's ``padding_free`` and transformers' ``DataCollatorWithFlattening``
(Kundu et al. 2024, "Enhancing Training Efficiency Using Packing with Flash Attention",
arXiv 2407.09105).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tether.data.batching import PreferenceBatch
from tether.data.tokenization import TokenizedPair

__all__ = ["PackedBatch", "collate_packed", "scorer_inputs"]


@dataclass
class PackedBatch:
    input_ids: Tensor  # (1, N) all sequences back to back: block j = every row's j-th completion
    position_ids: Tensor  # (1, N) 0, 1, ... restarting for each sequence
    completion_mask: Tensor  # (1, N) 1 on scored tokens (never a sequence's first token)
    sequence: Tensor  # (1, N) 0..K·B-1: sequence of row i's j-th completion = j·B + i
    index: Tensor  # (B,) row numbers in the dataset (keys of the reference cache)
    pairs: int  # B
    sequences: int  # K·B, as many as the padded batch has rows

    attention_mask: None = None  # the position ids say where sequences start

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device), self.position_ids.to(device),
            self.completion_mask.to(device), self.sequence.to(device), self.index.to(device),
            self.pairs, self.sequences,
        )

    @property
    def tokens(self) -> int:
        """Tokens in the batch: all real, none padding (the benchmarks' throughput unit)."""
        return int(self.input_ids.shape[1])


def collate_packed(rows: Sequence[TokenizedPair], index: Sequence[int]) -> PackedBatch:
    """The sequences ``collate`` would pad, in the same order, concatenated into one row."""
    k = max(len(r.completions) for r in rows)
    ids: list[int] = []
    pos: list[int] = []
    comp: list[int] = []
    seq: list[int] = []
    for j in range(k):
        for i, r in enumerate(rows):
            if j >= len(r.completions):
                continue  # ranked row with fewer answers: nothing to score, as when padded
            p, c = r.prompt, r.completions[j]
            n = len(p) + len(c)
            ids += p + c
            pos += range(n)
            comp += [0] * len(p) + [1] * len(c)
            comp[len(comp) - n] = 0  # the first token has no predecessor in its sequence
            seq += [j * len(rows) + i] * n
    return PackedBatch(
        torch.tensor([ids]), torch.tensor([pos]), torch.tensor([comp]), torch.tensor([seq]),
        torch.tensor(list(index)), len(rows), k * len(rows),
    )


def scorer_inputs(batch: PreferenceBatch | PackedBatch) -> dict[str, Any]:
    """The keyword arguments of ``sequence_logps`` / ``SequenceLogProbs`` for a plain batch,
    padded or packed."""
    inputs: dict[str, Any] = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "completion_mask": batch.completion_mask,
    }
    if isinstance(batch, PackedBatch):
        inputs.update(position_ids=batch.position_ids, sequence=batch.sequence,
                      sequences=batch.sequences)
    return inputs
