"""Per-sequence log-probs of completion tokens without materialising (B, T, V) logits.

The model's body gives hidden states ``(B, T, H)``; only the positions that predict a
completion token go through the LM head, in chunks of ``chunk`` tokens, with the log-softmax in
fp32. The backward pass recomputes each chunk's logits instead of storing them, so peak logit
memory is ``chunk × V`` floats whatever the batch and sequence length. With ~64-token answers
to ~192-token prompts this also skips three quarters of the LM head's work.

d log p(t) / d logits = onehot(t) − softmax(logits), which is all the backward needs.

Some models change the LM head's output z before the softmax: Gemma 2/3 soft-cap it
(``cap·tanh(z / cap)``), Cohere multiplies it by ``logit_scale``, Granite divides it by
``logits_scaling``. ``head_transform`` reads that from the model's class and config into a
``HeadTransform``, which the chunked path applies to each chunk (and differentiates in the
backward), so the log-probs are those of the model's own forward. Models that change their logits
in any other way are refused rather than scored wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tether.errors import ModelError

__all__ = [
    "HeadTransform",
    "SequenceLogProbs",
    "head_logps",
    "head_logps_squares",
    "head_transform",
    "sequence_logps",
    "sequence_logps_wpo",
    "split_head",
]


@dataclass(frozen=True)
class HeadTransform:
    """The logits a model computes from its LM head's output z: ``scale·z``, then, when ``softcap``
    is set, ``softcap·tanh(scale·z / softcap)``."""

    scale: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        """The head's output is the logits (most models): nothing to apply or differentiate."""
        return self.scale == 1.0 and self.softcap is None

    def logits_(self, z: Tensor) -> Tensor:
        """The model's logits from the head's output ``z``, computed in place in ``z``."""
        if self.scale != 1.0:
            z.mul_(self.scale)
        if self.softcap is not None:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z

    def slope_(self, logits: Tensor) -> Tensor | float:
        """d logits / d z, elementwise, from the logits (overwritten when there is a cap)."""
        if self.softcap is None:
            return self.scale
        # d/dz c·tanh(s·z/c) = s·(1 − tanh(s·z/c)²), and tanh(s·z/c) = logits / c
        return logits.div_(self.softcap).square_().neg_().add_(1.0).mul_(self.scale)


_Op = Literal["multiply", "divide", "softcap"]
_SOFTCAP: tuple[tuple[str, _Op], ...] = (("final_logit_softcapping", "softcap"),)
_GRANITE: tuple[tuple[str, _Op], ...] = (("logits_scaling", "divide"),)
_COHERE: tuple[tuple[str, _Op], ...] = (("logit_scale", "multiply"),)

# What each model class's forward does to the LM head's output, as read in its transformers 5.x
# modeling file: (config key, operation), in the order applied. A softcap whose key is None is
# skipped, as those forwards do (``if config.final_logit_softcapping is not None``).
_HEAD_OPS: dict[str, tuple[tuple[str, _Op], ...]] = {
    "Gemma2ForCausalLM": _SOFTCAP,
    "Gemma3ForCausalLM": _SOFTCAP,
    "Gemma3nForCausalLM": _SOFTCAP,
    "Gemma4ForCausalLM": _SOFTCAP,
    "VaultGemmaForCausalLM": _SOFTCAP,
    "NanoChatForCausalLM": _SOFTCAP,
    "CohereForCausalLM": _COHERE,
    "Cohere2ForCausalLM": _COHERE,
    "Cohere2MoeForCausalLM": _COHERE,
    "GraniteForCausalLM": _GRANITE,
    "GraniteSWAForCausalLM": _GRANITE,
    "GraniteMoeForCausalLM": _GRANITE,
    "GraniteMoeSWAForCausalLM": _GRANITE,
    "GraniteMoeSharedForCausalLM": _GRANITE,
    "GraniteMoeHybridForCausalLM": _GRANITE,
    "HyperCLOVAXForCausalLM": (("logits_scaling", "multiply"),),  # muP: multiplies, unlike Granite
    "FalconH1ForCausalLM": (("lm_head_multiplier", "multiply"),),
    # divides the hidden states before a bias-free head: the same as dividing the logits
    "MiniCPM3ForCausalLM": _GRANITE,
}

# Model classes whose forward changes the logits in a way no HeadTransform describes.
_REFUSED: dict[str, str] = {
    "ChameleonForConditionalGeneration": "masks the image tokens out of the logits",
    "InklingForCausalLM": "scales the hidden states and cuts the vocabulary",
    "InklingForConditionalGeneration": "scales the hidden states and cuts the vocabulary",
    "Inkling2ForCausalLM": "cuts the logits to a smaller vocabulary",
    "Inkling2ForConditionalGeneration": "cuts the logits to a smaller vocabulary",
}

# Config keys through which some model (in transformers or in remote code) changes its logits or
# the hidden states fed to the head. A model class not in _HEAD_OPS whose config sets one is
# refused: its forward may use it in a way the chunked path does not reproduce.
_LOGIT_KEYS = frozenset(
    {key for ops in _HEAD_OPS.values() for key, _ in ops}
    | {
        "logits_soft_cap",  # RecurrentGemma
        "output_logit_soft_cap",  # xLSTM
        "output_multiplier",  # MuseSpark, MuseGlimmer
        "logits_mup_width_multiplier",  # Inkling
        "unpadded_vocab_size",  # Inkling 2: logits cut to a smaller vocabulary
        "vocabulary_mapping",  # Chameleon: image tokens masked out of the text softmax
        "dim_model_base",  # MiniCPM (remote code): hidden states scaled before the head
    }
)


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log softmax(f(h W^T + b))[target] for N selected positions, chunk by chunk, where f is the
    model's ``HeadTransform``; with ``square``, also log Σ_v softmax(·)_v² per position (WPO's
    normaliser; no gradient), else an empty second output."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,  # (N, H)
        weight: Tensor,  # (V, H)
        bias: Tensor | None,  # (V,)
        targets: Tensor,  # (N,)
        chunk: int,
        compute_dtype: torch.dtype,
        transform: HeadTransform,
        square: bool,
    ) -> tuple[Tensor, Tensor]:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        sq = torch.empty(hidden.shape[0] if square else 0, dtype=torch.float32,
                         device=hidden.device)
        w = weight.to(compute_dtype)
        for s in range(0, hidden.shape[0], chunk):
            logits = transform.logits_(_logits(hidden[s : s + chunk], w, bias))  # (n, V) fp32
            t = targets[s : s + chunk, None]
            lse = logits.logsumexp(-1, keepdim=True)  # (n, 1)
            out[s : s + chunk] = (logits.gather(1, t) - lse)[:, 0]
            if square:  # log Σ_v p_v² = logsumexp(2·logits) − 2·logsumexp(logits)
                sq[s : s + chunk] = (logits.mul_(2).logsumexp(-1, keepdim=True) - 2 * lse)[:, 0]
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.compute_dtype, ctx.transform = chunk, compute_dtype, transform
        ctx.mark_non_differentiable(sq)
        return out, sq

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_sq: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        cd, transform = ctx.compute_dtype, ctx.transform
        w = weight.to(cd)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s : s + ctx.chunk]
            g = grad_out[s : s + ctx.chunk, None]  # (n, 1)
            logits = transform.logits_(_logits(h, w, bias))  # (n, V) fp32
            d = logits.softmax(-1).mul_(-g)
            d.scatter_add_(1, targets[s : s + ctx.chunk, None], g)  # onehot(t) - p, times g
            if not transform.identity:
                d.mul_(transform.slope_(logits))  # chain rule back to the head's output
            del logits
            d_c = d.to(cd)
            if grad_h is not None:
                grad_h[s : s + ctx.chunk] = (d_c @ w).to(hidden.dtype)
            grad_w += (d_c.T @ h.to(cd)).float()
            if bias is not None:
                grad_b += d.sum(0)
        gw = grad_w.to(weight.dtype) if ctx.needs_input_grad[1] else None
        gb = grad_b.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_h, gw, gb, None, None, None, None, None


def _logits(h: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    logits = (h.to(w.dtype) @ w.T).float()
    return logits + bias.float() if bias is not None else logits


def _unwrap(model: nn.Module) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body returning hidden states, LM head) of a causal LM, unwrapping PEFT models.

    The head's output is not always the model's logits: pass ``head_transform(model)`` to
    ``head_logps``. Raises ``ModelError`` for a model whose logits the chunked path cannot
    reproduce."""
    inner = _unwrap(model)
    head = inner.get_output_embeddings()
    body: nn.Module = inner.base_model
    if not isinstance(head, nn.Linear) or body is inner:
        raise TypeError(f"{type(inner).__name__}: expected a causal LM with a linear LM head")
    head_transform(model)  # refuse unsupported logit transforms before any work is done
    return body, head


def head_transform(model: nn.Module) -> HeadTransform:
    """How ``model``'s forward turns its LM head's output into logits (unwrapping PEFT models).

    Raises ``ModelError`` when the model's class is not known to tether and its config sets a key
    that some model uses to change its logits."""
    inner = _unwrap(model)
    name, cfg = type(inner).__name__, inner.config
    if name in _REFUSED:
        raise ModelError(
            f"{name}: its forward {_REFUSED[name]}, which tether's chunked log-probs do not "
            "reproduce"
        )
    ops = _HEAD_OPS.get(name)
    if ops is None:
        for c in (cfg, _text_config(cfg)):
            found = sorted(k for k in _LOGIT_KEYS if getattr(c, k, None) is not None)
            if found:
                raise ModelError(
                    f"{name}: config sets {found[0]}={getattr(c, found[0])!r}, and tether does "
                    "not know how this model changes its logits with it, so its log-probs would "
                    "be wrong; supported: " + ", ".join(sorted(_HEAD_OPS))
                )
        return HeadTransform()
    scale, softcap = 1.0, None
    for key, op in ops:
        value = getattr(cfg, key, None)
        if op == "softcap":
            softcap = None if value is None else float(value)
        elif value is None:
            raise ModelError(f"{name}: config.{key} is None, expected a number")
        else:
            scale = scale * float(value) if op == "multiply" else scale / float(value)
    return HeadTransform(scale, softcap)


def _text_config(cfg: Any) -> Any:
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def sequence_logps(
    model: nn.Module,
    input_ids: Tensor,  # (B, T)
    attention_mask: Tensor | None,  # (B, T); None for packed rows (tether.model.packing)
    completion_mask: Tensor,  # (B, T) 1 on completion tokens (the targets), or their weights
    chunk: int = 1024,
    position_ids: Tensor | None = None,
    sequence: Tensor | None = None,  # (B, T) which sequence each token is in; None: its row
    sequences: int = 0,  # how many sequences ``sequence`` numbers (with ``sequence``)
) -> tuple[Tensor, Tensor]:
    """Sum of completion-token log-probs per sequence ``(S,)`` fp32, and completion token counts
    ``(S,)``; a sequence is a row (S = B) unless ``sequence`` says otherwise.

    A floating-point ``completion_mask`` holds per-token weights (LD-DPO's, from
    ``tether.losses.weighting.ld_token_weights``): the sums are Σ weight × log-prob over the
    tokens whose weight is not 0, and the counts count those tokens."""
    sums, counts, _ = _sequence_logps(model, input_ids, attention_mask, completion_mask, chunk,
                                      position_ids, sequence, sequences, square=False)
    return sums, counts


def sequence_logps_wpo(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    completion_mask: Tensor,
    chunk: int = 1024,
    position_ids: Tensor | None = None,
    sequence: Tensor | None = None,
    sequences: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``sequence_logps`` plus WPO's Σ_t [log p(y_t) − log Σ_v p(v)²] per sequence ``(S,)``,
    detached and unweighted (``tether.losses.weighting.wpo_weights``), from the same chunks."""
    sums, counts, aligned = _sequence_logps(model, input_ids, attention_mask, completion_mask,
                                            chunk, position_ids, sequence, sequences, square=True)
    assert aligned is not None
    return sums, counts, aligned


def _sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, completion_mask: Tensor,
    chunk: int, position_ids: Tensor | None, sequence: Tensor | None, sequences: int, *,
    square: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    body, head = split_head(model)
    transform = head_transform(model)
    hidden = body(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state  # (B, T, H)
    # Position t-1 predicts token t: select the hidden states before each completion token.
    target_mask = completion_mask[:, 1:] != 0  # (B, T-1)
    h = hidden[:, :-1][target_mask]  # (N, H)
    targets = input_ids[:, 1:][target_mask]  # (N,)
    token_logps, log_sq = head_logps_squares(head, h, targets, chunk, transform=transform,
                                             square=square)  # (N,) fp32 each
    if sequence is None:
        sequences = input_ids.shape[0]
        sequence = torch.arange(sequences, device=input_ids.device)[:, None].expand_as(input_ids)
    rows = sequence[:, 1:][target_mask]  # (N,) which sequence each token belongs to
    zeros = torch.zeros(sequences, dtype=torch.float32, device=h.device)
    aligned = zeros.index_add(0, rows, token_logps.detach() - log_sq) if square else None
    if completion_mask.is_floating_point():  # per-token weights (LD-DPO)
        token_logps = token_logps * completion_mask[:, 1:][target_mask].float()  # (N,)
    return zeros.index_add(0, rows, token_logps), torch.bincount(rows, minlength=sequences), \
        aligned


def head_logps(
    head: nn.Linear,
    h: Tensor,
    targets: Tensor,
    chunk: int,
    *,
    transform: HeadTransform = HeadTransform(),
) -> Tensor:
    """log softmax(f(head(h)))[targets] ``(N,)`` fp32 for hidden states ``h`` ``(N, H)``, chunked;
    f is ``transform``, the model's own (``head_transform(model)``)."""
    return head_logps_squares(head, h, targets, chunk, transform=transform, square=False)[0]


def head_logps_squares(
    head: nn.Linear,
    h: Tensor,
    targets: Tensor,
    chunk: int,
    *,
    transform: HeadTransform = HeadTransform(),
    square: bool = True,
) -> tuple[Tensor, Tensor]:
    """``head_logps`` and, with ``square``, log Σ_v p_v² at each position ``(N,)`` fp32 (no
    gradient; WPO's normaliser), from the same chunked logits."""
    if torch.is_autocast_enabled(h.device.type):
        compute_dtype = torch.get_autocast_dtype(h.device.type)
    else:
        compute_dtype = head.weight.dtype
    out: tuple[Tensor, Tensor] = _ChunkedTokenLogProbs.apply(
        h, head.weight, head.bias, targets, chunk, compute_dtype, transform, square
    )
    return out


class SequenceLogProbs(nn.Module):
    """``sequence_logps`` as a module, so DDP/FSDP wrap one forward that sees every parameter."""

    def __init__(self, model: nn.Module, chunk: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk
        # WPO (use_weighting): forward also returns sequence_logps_wpo's third tensor
        self.wpo = False

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        completion_mask: Tensor,
        position_ids: Tensor | None = None,
        sequence: Tensor | None = None,
        sequences: int = 0,
    ) -> tuple[Tensor, ...]:
        score = sequence_logps_wpo if self.wpo else sequence_logps
        return score(
            self.model, input_ids, attention_mask, completion_mask, self.chunk, position_ids,
            sequence, sequences,
        )
