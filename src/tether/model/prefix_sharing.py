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

The mask is given in the form the model's attention implementation takes: a dense ``(R, 1, L, L)``
boolean mask for ``sdpa``, an additive one for ``eager``, or a FlexAttention ``BlockMask`` for
``flex_attention`` (``tether.model.flex``), which skips the blocks no query sees (the chosen
answer for rejected queries, other pairs, padding) instead of reading an L×L mask. FlashAttention
kernels take no custom mask. The rule of who sees whom is written once (``_visible``) and used by
both forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tether.data.batching import PreferenceBatch, collate
from tether.data.tokenization import TokenizedPair
from tether.errors import ConfigError
from tether.model.flex import block_mask
from tether.model.logprobs import head_logps, head_transform, sequence_logps, split_head
from tether.model.packing import PackedBatch, collate_packed, scorer_inputs

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
    group: Tensor  # (R, L) which pair each position belongs to; -1 = padding
    branch: Tensor  # (R, L) PROMPT, CHOSEN or REJECTED (-1 = padding)
    position_ids: Tensor  # (R, L) rejected positions restart after the prompt
    source: Tensor  # (N,) flat index into (R·L) of the hidden state predicting each scored token
    target: Tensor  # (N,) flat index into (R·L) of each scored token
    sequence: Tensor  # (N,) 0..2B-1: chosen of pair i -> i, rejected of pair i -> B + i
    index: Tensor  # (B,) row numbers in the dataset (keys of the reference cache)
    pairs: int  # B
    tokens: int  # non-padding tokens of the equivalent plain batch (P+C + P+R per pair)

    def to(self, device: torch.device) -> SharedPrefixBatch:
        return SharedPrefixBatch(
            self.input_ids.to(device), self.group.to(device), self.branch.to(device),
            self.position_ids.to(device), self.source.to(device), self.target.to(device),
            self.sequence.to(device), self.index.to(device), self.pairs, self.tokens,
        )

    @property
    def allowed(self) -> Tensor:
        """``(R, L, L)`` bool: query i may attend key j (the dense form of the mask)."""
        q = torch.arange(self.group.shape[1], device=self.group.device)
        g, b = self.group, self.branch
        return _visible(g[:, :, None], g[:, None, :], b[:, :, None], b[:, None, :],
                        q[:, None], q[None, :])


def _visible(
    group_q: Tensor, group_k: Tensor, branch_q: Tensor, branch_k: Tensor, q: Tensor, k: Tensor
) -> Tensor:
    """Whether query q may attend key k: same pair, causal, and a rejected token never sees a
    chosen one. Padding queries see themselves: a row with no key gives NaN in a dense softmax,
    and 0 × NaN would then leak into real tokens through the values of the next layer. Works
    elementwise, so it serves the dense mask (broadcast) and FlexAttention's ``mask_mod``."""
    rejected_sees_chosen = (branch_q == REJECTED) & (branch_k == CHOSEN)
    same = (group_q == group_k) & (group_q >= 0) & (q >= k) & ~rejected_sees_chosen
    return same | (q == k)


Batch = PreferenceBatch | SharedPrefixBatch | PackedBatch


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
    rows: Sequence[TokenizedPair],
    index: Sequence[int],
    pad_id: int,
    pack: bool = False,
    width: int | None = None,
) -> SharedPrefixBatch:
    """One ``prompt‖chosen‖rejected`` sequence per pair (several per row with ``pack``, in rows
    of ``width`` tokens: by default the longest pair's)."""
    B = len(rows)
    lengths = [len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows]
    width = max(max(lengths), width or 0)
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
    tokens = sum(2 * len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows)
    return SharedPrefixBatch(
        ids, group, branch, pos, torch.tensor(source), torch.tensor(target),
        torch.tensor(sequence), torch.tensor(list(index)), B, tokens,
    )


def _attention_mask(model: nn.Module, batch: SharedPrefixBatch, dtype: torch.dtype) -> Any:
    """The mask in the form the model's attention implementation takes: ``(R, 1, L, L)`` dense
    for sdpa and eager, a ``BlockMask`` for flex_attention."""
    unwrap = getattr(model, "get_base_model", None)  # PEFT
    inner = unwrap() if callable(unwrap) else model
    cfg = inner.config
    window = getattr(cfg, "sliding_window", None)
    if not getattr(cfg, "use_sliding_window", True):  # Qwen2 carries a window it does not use
        window = None
    width = batch.input_ids.shape[1]
    if window and width > window:
        # our mask replaces the model's own, sliding window included
        raise ConfigError(
            f"prefix_sharing: a pair spans {width} tokens, more than the model's "
            f"sliding window ({window}); set prefix_sharing=false for this model"
        )
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl == "flex_attention":
        g, b = batch.group, batch.branch

        def mask_mod(r: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return _visible(g[r, q], g[r, k], b[r, q], b[r, k], q, k)

        return block_mask(mask_mod, rows=g.shape[0], width=width, device=g.device)
    if impl == "sdpa":
        return batch.allowed[:, None]
    if impl == "eager":
        allowed = batch.allowed
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
    raise ConfigError(
        f"prefix_sharing: attention implementation '{impl}' takes no custom mask; set "
        "attn_implementation to auto, sdpa, eager or flex_attention, or prefix_sharing=false"
    )


def shared_logps(model: nn.Module, batch: SharedPrefixBatch, chunk: int) -> tuple[Tensor, Tensor]:
    """Completion log-prob sums ``(2B,)`` fp32 (chosen then rejected) and token counts ``(2B,)``."""
    body, head = split_head(model)
    mask = _attention_mask(model, batch, head.weight.dtype)
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
    rows: Sequence[TokenizedPair],
    index: Sequence[int],
    pad_id: int,
    prefix_sharing: bool,
    packing: bool = False,
) -> Batch:
    """The loop's batch: shared-prefix when asked for and the rows are pairs (several pairs a
    row with ``packing``), else plain rows: padded, or back to back with ``packing``."""
    if prefix_sharing and rows[0].rejected:
        if not packing:
            return collate_shared(rows, index, pad_id)
        # one row holding every pair: no padding at all (a flex BlockMask skips the blocks
        # between pairs; a dense mask would be quadratic in the whole row)
        total = sum(len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows)
        return collate_shared(rows, index, pad_id, pack=True, width=total)
    if packing:
        return collate_packed(rows, index)
    return collate(rows, index, pad_id)


def batch_logps(model: nn.Module, batch: Batch, chunk: int) -> tuple[Tensor, Tensor]:
    """Per-sequence completion log-prob sums and token counts of any kind of batch."""
    if isinstance(batch, SharedPrefixBatch):
        return shared_logps(model, batch, chunk)
    return sequence_logps(model, chunk=chunk, **scorer_inputs(batch))
