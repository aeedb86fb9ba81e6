"""Prefix sharing: the prompt is run once for both answers of a pair.

A plain batch runs ``prompt‖chosen`` and ``prompt‖rejected`` as two rows, so every prompt token
goes through the model twice. Here each pair is one sequence ``prompt‖chosen‖rejected`` with an
attention mask in which rejected tokens do not see chosen tokens, and position ids in which
rejected restarts right after the prompt (Wang & Hegde 2024, "Accelerating Direct Preference
Optimization with Prefix Sharing", arXiv 2410.20305). Every scored token then has exactly the
context and positions it has in the plain batch, so the log-probs are the same numbers, while a
192-token prompt with two 64-token answers costs 320 token positions instead of 512.

The scored tokens are listed explicitly (``source`` hidden state -> ``target`` token ->
``sequence``), because the first rejected token is predicted from the last *prompt* position,
not from the position just before it.

With ``pack`` several pairs share a row (each pair attends only to itself), which removes most
of the padding left when pair lengths differ.

Needs an attention implementation that takes a 4D mask: ``sdpa`` (boolean mask) or ``eager``
(additive mask). FlashAttention kernels take no custom mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tether.data.batching import PreferenceBatch, collate
from tether.data.tokenization import TokenizedPair
from tether.errors import ConfigError
from tether.model.logprobs import head_logps, head_transform, sequence_logps, split_head

__all__ = [
    "Batch",
    "SharedPrefixBatch",
    "batch_logps",
    "collate_shared",
    "make_batch",
    "shared_logps",
]

PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass
class SharedPrefixBatch:
    input_ids: Tensor  # (R, L) rows of prompt‖chosen‖rejected segments, right-padded
    allowed: Tensor  # (R, L, L) bool: query i may attend key j
    position_ids: Tensor  # (R, L) rejected positions restart after the prompt
    source: Tensor  # (N,) flat index into (R·L) of the hidden state predicting each scored token
    target: Tensor  # (N,) flat index into (R·L) of each scored token
    sequence: Tensor  # (N,) 0..2B-1: chosen of pair i -> i, rejected of pair i -> B + i
    index: Tensor  # (B,) row numbers in the dataset (keys of the reference cache)
    pairs: int  # B
    tokens: int  # non-padding tokens of the equivalent plain batch (P+C + P+R per pair)

    def to(self, device: torch.device) -> SharedPrefixBatch:
        return SharedPrefixBatch(
            self.input_ids.to(device), self.allowed.to(device), self.position_ids.to(device),
            self.source.to(device), self.target.to(device), self.sequence.to(device),
            self.index.to(device), self.pairs, self.tokens,
        )


Batch = PreferenceBatch | SharedPrefixBatch


def _bins(lengths: Sequence[int], width: int, pack: bool) -> list[list[int]]:
    """Pairs per row: one each, or first-fit decreasing into rows of ``width`` tokens."""
    if not pack:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def collate_shared(
    rows: Sequence[TokenizedPair], index: Sequence[int], pad_id: int, pack: bool = False
) -> SharedPrefixBatch:
    """One ``prompt‖chosen‖rejected`` sequence per pair (several per row with ``pack``)."""
    B = len(rows)
    lengths = [len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows]
    width = max(lengths)
    bins = _bins(lengths, width, pack)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(bins), width), dtype=torch.long)
    group = torch.full((len(bins), width), -1, dtype=torch.long)  # which pair; -1 = padding
    branch = torch.full((len(bins), width), -1, dtype=torch.long)
    source: list[int] = []
    target: list[int] = []
    sequence: list[int] = []
    for r, members in enumerate(bins):
        start = 0
        for i in members:
            p, c, j = rows[i].prompt, rows[i].chosen, rows[i].rejected
            P, C, R = len(p), len(c), len(j)
            end = start + P + C + R
            ids[r, start:end] = torch.tensor(p + c + j)
            pos[r, start:end] = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])
            group[r, start:end] = i
            branch[r, start:end] = torch.tensor([PROMPT] * P + [CHOSEN] * C + [REJECTED] * R)
            base = r * width + start
            # chosen token t is predicted from t - 1; rejected token 0 from the last prompt token
            source += [base + P + k - 1 for k in range(C)]
            source += [base + P - 1] + [base + P + C + k - 1 for k in range(1, R)]
            target += [base + P + k for k in range(C + R)]
            sequence += [i] * C + [B + i] * R
            start = end
    q, k = group[:, :, None], group[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (q == k) & (q >= 0) & causal
    allowed &= ~((branch[:, :, None] == REJECTED) & (branch[:, None, :] == CHOSEN))
    # Padding queries attend to themselves: a row with no key gives NaN, and 0 × NaN would
    # then leak into real tokens through the values of the next layer.
    allowed |= torch.eye(width, dtype=torch.bool)
    tokens = sum(2 * len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows)
    return SharedPrefixBatch(
        ids, allowed, pos, torch.tensor(source), torch.tensor(target), torch.tensor(sequence),
        torch.tensor(list(index)), B, tokens,
    )


def _attention_mask(model: nn.Module, allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """The 4D mask ``(R, 1, L, L)`` in the form the model's attention implementation takes."""
    unwrap = getattr(model, "get_base_model", None)  # PEFT
    inner = unwrap() if callable(unwrap) else model
    cfg = inner.config
    window = getattr(cfg, "sliding_window", None)
    if not getattr(cfg, "use_sliding_window", True):  # Qwen2 carries a window it does not use
        window = None
    if window and allowed.shape[-1] > window:
        # our 4D mask replaces the model's own, sliding window included
        raise ConfigError(
            f"prefix_sharing: a pair spans {allowed.shape[-1]} tokens, more than the model's "
            f"sliding window ({window}); set prefix_sharing=false for this model"
        )
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return allowed[:, None]
    if impl == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
    raise ConfigError(
        f"prefix_sharing: attention implementation '{impl}' takes no custom mask; load the model "
        "with attn_implementation='sdpa' or 'eager', or set prefix_sharing=false"
    )


def shared_logps(model: nn.Module, batch: SharedPrefixBatch, chunk: int) -> tuple[Tensor, Tensor]:
    """Completion log-prob sums ``(2B,)`` fp32 (chosen then rejected) and token counts ``(2B,)``."""
    body, head = split_head(model)
    mask = _attention_mask(model, batch.allowed, head.weight.dtype)
    hidden = body(
        input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state  # (R, L, H)
    h = hidden.reshape(-1, hidden.shape[-1])[batch.source]  # (N, H)
    targets = batch.input_ids.reshape(-1)[batch.target]  # (N,)
    token_logps = head_logps(head, h, targets, chunk, transform=head_transform(model))  # (N,) fp32
    n = 2 * batch.pairs
    sums = torch.zeros(n, dtype=torch.float32, device=h.device).index_add(
        0, batch.sequence, token_logps
    )
    return sums, torch.bincount(batch.sequence, minlength=n)


def make_batch(
    rows: Sequence[TokenizedPair], index: Sequence[int], pad_id: int, prefix_sharing: bool
) -> Batch:
    """The loop's batch: shared-prefix when asked for and the rows are pairs, else plain."""
    if prefix_sharing and rows[0].rejected:
        return collate_shared(rows, index, pad_id)
    return collate(rows, index, pad_id)


def batch_logps(model: nn.Module, batch: Batch, chunk: int) -> tuple[Tensor, Tensor]:
    """Per-sequence completion log-prob sums and token counts of either kind of batch."""
    if isinstance(batch, SharedPrefixBatch):
        return shared_logps(model, batch, chunk)
    return sequence_logps(
        model, batch.input_ids, batch.attention_mask, batch.completion_mask, chunk
    )
