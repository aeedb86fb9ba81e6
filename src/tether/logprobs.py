"""Per-sequence log-probs of completion tokens without materialising (B, T, V) logits.

The model's body gives hidden states ``(B, T, H)``; only the positions that predict a
completion token go through the LM head, in chunks of ``chunk`` tokens, with the log-softmax in
fp32. The backward pass recomputes each chunk's logits instead of storing them, so peak logit
memory is ``chunk × V`` floats whatever the batch and sequence length. With ~64-token answers
to ~192-token prompts this also skips three quarters of the LM head's work.

d log p(t) / d logits = onehot(t) − softmax(logits), which is all the backward needs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SequenceLogProbs", "head_logps", "sequence_logps", "split_head"]


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log softmax(h W^T + b)[target] for N selected positions, chunk by chunk."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,  # (N, H)
        weight: Tensor,  # (V, H)
        bias: Tensor | None,  # (V,)
        targets: Tensor,  # (N,)
        chunk: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        w = weight.to(compute_dtype)
        for s in range(0, hidden.shape[0], chunk):
            logits = _logits(hidden[s : s + chunk], w, bias)  # (n, V) fp32
            t = targets[s : s + chunk, None]
            out[s : s + chunk] = (logits.gather(1, t) - logits.logsumexp(-1, keepdim=True))[:, 0]
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        cd = ctx.compute_dtype
        w = weight.to(cd)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s : s + ctx.chunk]
            g = grad_out[s : s + ctx.chunk, None]  # (n, 1)
            p = _logits(h, w, bias).softmax(-1)  # (n, V) fp32
            d = -p * g
            d.scatter_add_(1, targets[s : s + ctx.chunk, None], g)  # onehot(t) - p, times g
            d_c = d.to(cd)
            if grad_h is not None:
                grad_h[s : s + ctx.chunk] = (d_c @ w).to(hidden.dtype)
            grad_w += (d_c.T @ h.to(cd)).float()
            if bias is not None:
                grad_b += d.sum(0)
        gw = grad_w.to(weight.dtype) if ctx.needs_input_grad[1] else None
        gb = grad_b.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_h, gw, gb, None, None, None


def _logits(h: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    logits = (h.to(w.dtype) @ w.T).float()
    return logits + bias.float() if bias is not None else logits


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body returning hidden states, LM head) of a causal LM, unwrapping PEFT models."""
    inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    head = inner.get_output_embeddings()
    body: nn.Module = inner.base_model
    if not isinstance(head, nn.Linear) or body is inner:
        raise TypeError(f"{type(inner).__name__}: expected a causal LM with a linear LM head")
    cfg = inner.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        raise NotImplementedError(
            f"{type(inner).__name__}: scaled or soft-capped logits are not supported yet"
        )
    return body, head


def sequence_logps(
    model: nn.Module,
    input_ids: Tensor,  # (B, T)
    attention_mask: Tensor,  # (B, T)
    completion_mask: Tensor,  # (B, T) 1 on completion tokens (the targets)
    chunk: int = 1024,
    position_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sum of completion-token log-probs ``(B,)`` fp32, and completion token counts ``(B,)``."""
    body, head = split_head(model)
    hidden = body(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state  # (B, T, H)
    # Position t-1 predicts token t: select the hidden states before each completion token.
    target_mask = completion_mask[:, 1:].bool()  # (B, T-1)
    h = hidden[:, :-1][target_mask]  # (N, H)
    targets = input_ids[:, 1:][target_mask]  # (N,)
    token_logps = head_logps(head, h, targets, chunk)  # (N,) fp32
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(
        target_mask
    )[target_mask]  # (N,) which sequence each token belongs to
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=h.device)
    sums = sums.index_add(0, rows, token_logps)
    counts = target_mask.sum(1)
    return sums, counts


def head_logps(head: nn.Linear, h: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """log softmax(head(h))[targets] ``(N,)`` fp32 for hidden states ``h`` ``(N, H)``, chunked."""
    if torch.is_autocast_enabled(h.device.type):
        compute_dtype = torch.get_autocast_dtype(h.device.type)
    else:
        compute_dtype = head.weight.dtype
    out: Tensor = _ChunkedTokenLogProbs.apply(
        h, head.weight, head.bias, targets, chunk, compute_dtype
    )
    return out


class SequenceLogProbs(nn.Module):
    """``sequence_logps`` as a module, so DDP/FSDP wrap one forward that sees every parameter."""

    def __init__(self, model: nn.Module, chunk: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_mask: Tensor,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        return sequence_logps(
            self.model, input_ids, attention_mask, completion_mask, self.chunk, position_ids
        )
