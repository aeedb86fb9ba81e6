"""Precision policies: the dtype the weights live and are updated in, and where bf16 computes.

A policy is decided once, in the loop's set-up, from ``precision`` (or, when that is ``auto``,
from the older ``dtype`` and ``autocast`` keys), and the loop only asks it for its autocast
context. The four policies:

| policy  | weights (what AdamW updates) | forward matmuls | bytes per trained parameter      |
|---------|------------------------------|-----------------|----------------------------------|
| `fp32`  | fp32                         | fp32            | 16 (4 weight + 4 grad + 8 AdamW) |
| `mixed` | fp32 master weights          | bf16 (autocast) | 16, + 2 for bf16 weight copies   |
| `bf16`  | bf16                         | bf16            | 8 (2 + 2 + 4)                    |
| `fp16`  | fp16 (``dtype=float16``)     | fp16            | 8 (2 + 2 + 4), no loss scaling   |

``mixed``'s bf16 copies of the weights are made by autocast in the forward and kept for the
backward, so they live while a micro-batch's activations do; its activations are bf16, half of
fp32's.

Why ``mixed`` and not ``bf16`` is the GPU default: bf16 keeps 8 significant bits, so a weight w can
only move by a multiple of |w|·2⁻⁸ to |w|·2⁻⁷, and an update smaller than half of that rounds back
to w. AdamW's early steps are about ``lr`` per element (m̂/√v̂ ≈ ±1), and DPO runs at lr 5e-7 to
1e-6 (Rafailov et al. 2023, arXiv 2305.18290, appendix B: 1e-6) against weights of ~1e-2, whose
half bf16 step is ~3e-5: nearly every update vanishes. Measured on the tiny test Llama, three steps
at lr 5e-7 moved 0.8 % of bf16 weights against 82 % in fp32, and ``mixed`` moved the same 82 % in
the same direction (``tests/model/test_precision.py`` checks both). Keeping fp32 master weights and
computing in bf16 under autocast is the mixed precision of Micikevicius et al. 2018 ("Mixed
Precision Training", arXiv 1710.03740, §3.1), with bf16 instead of fp16 so no loss scaling is
needed (Kalamkar et al. 2019, arXiv 1905.12322).
Log-probs are accumulated in fp32 whatever the policy (``tether.model.logprobs``), and so are
the loss and its reductions.

With LoRA the base is frozen and the adapters PEFT adds are fp32 (its ``autocast_adapter_dtype``),
so bf16 base weights lose nothing: ``auto`` keeps them in bf16 there.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["POLICIES", "Precision", "resolve_precision", "stalled_fraction", "warn_if_stalled"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class Precision:
    """One precision policy: weights in ``dtype``, forwards under bf16 autocast or not."""

    name: str
    dtype: torch.dtype  # parameters: what is loaded, updated by AdamW, and saved
    autocast: bool  # forwards under bf16 autocast (matmuls in bf16, weights stay ``dtype``)
    bytes_per_param: int  # weight + gradient + AdamW's two moments, per trained parameter

    def compute(self, device: torch.device) -> AbstractContextManager[object]:
        """The context every forward runs in (the backward follows the forward's dtypes)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast)


POLICIES: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, autocast=False, bytes_per_param=16),
    "mixed": Precision("mixed", torch.float32, autocast=True, bytes_per_param=16),
    "bf16": Precision("bf16", torch.bfloat16, autocast=False, bytes_per_param=8),
    "fp16": Precision("fp16", torch.float16, autocast=False, bytes_per_param=8),
}


def bf16_capable(device: torch.device) -> bool:
    """bf16 matmuls at full speed: a CUDA GPU that has them, or a CPU with AVX-512."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")() == "AVX512")


def resolve_precision(
    precision: str, dtype: str, autocast: str, device: torch.device, lora: bool = False
) -> Precision:
    """The policy for a run. ``precision`` wins when set (the config refuses it together with a
    ``dtype`` or ``autocast`` of its own); ``auto`` reads the older keys as they always meant:

    - ``dtype=bfloat16`` / ``float16``: pure bf16 / fp16 weights (autocast has nothing to do);
    - ``dtype=float32``: ``mixed`` when ``autocast`` is on (or ``auto`` on a bf16-capable
      device), else ``fp32``;
    - ``dtype=auto`` (the default): as ``float32`` when ``autocast`` is given; with the default
      ``autocast=off``, ``mixed`` on a bf16-capable GPU (``bf16`` under LoRA, whose trained
      adapters are fp32 anyway) and ``fp32`` elsewhere (CPU training stays fp32).
    """
    if precision != "auto":
        return POLICIES[precision]
    if dtype in ("bfloat16", "float16"):
        return POLICIES["bf16" if dtype == "bfloat16" else "fp16"]
    if autocast == "on" or (autocast == "auto" and bf16_capable(device)):
        return POLICIES["mixed"]
    if dtype == "auto" and autocast == "off" and device.type == "cuda" and bf16_capable(device):
        return POLICIES["bf16" if lora else "mixed"]
    return POLICIES["fp32"]


def _half_step(w: Tensor, dtype: torch.dtype) -> Tensor:
    """Half the spacing of ``dtype`` at each |w|: updates smaller than this round back to w."""
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    _, exponent = torch.frexp(w.float())  # |w| = m·2^e with m in [0.5, 1): spacing 2^(e-1-bits)
    half = torch.ldexp(torch.ones_like(w, dtype=torch.float32), exponent - mantissa_bits - 2)
    return half.masked_fill_(w == 0, 0.0)  # 0 moves to any small number


def stalled_fraction(model: nn.Module, lr: float, sample: int = 1 << 20) -> float:
    """The fraction of trainable low-precision weights that an update of size ``lr`` (AdamW's
    early step per element) cannot move: it is below half their dtype's spacing. Up to ``sample``
    evenly spaced elements per tensor are looked at, so an 8B model costs seconds, not memory.
    fp32 weights count as movable (their half step is 2⁻²⁴|w|)."""
    stalled = total = 0
    for p in model.parameters():
        if not p.requires_grad or p.numel() == 0:
            continue
        w = p.detach().reshape(-1)
        w = w[:: max(1, w.numel() // sample)]
        total += w.numel()
        if p.dtype in (torch.bfloat16, torch.float16):
            stalled += int((_half_step(w, p.dtype) > lr).sum())
    return stalled / max(1, total)


def warn_if_stalled(precision: Precision, model: nn.Module, lr: float) -> float:
    """Warn when pure low-precision weights would mostly not move at this learning rate."""
    if precision.dtype == torch.float32:
        return 0.0
    frac = stalled_fraction(model, lr)
    if frac > 0.01:
        log.warning(
            "precision=%s at lr=%g: for %.0f%% of the trained weights an AdamW step (about lr "
            "per element) is below half a %s step, so it rounds away and they do not move; "
            "use precision=mixed (fp32 master weights, bf16 compute)",
            precision.name, lr, 100 * frac, precision.name,
        )
    return frac
