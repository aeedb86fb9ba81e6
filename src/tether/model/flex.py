"""FlexAttention: which attention kernel a run uses, and block masks for prefix sharing.

Prefix sharing (``tether.model.prefix_sharing``) and packed rows (``tether.model.packing``) need
attention masks that are not plain causal ones. Given as a dense ``(R, 1, L, L)`` mask, sdpa can
only run its memory-efficient kernel, which reads the whole mask and computes every block of
scores, even those the mask drops entirely. FlexAttention (``torch.nn.attention.flex_attention``;
Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized Attention
Kernels", arXiv 2412.05496) takes the rule as a function (``mask_mod``) compiled into the kernel
and a ``BlockMask`` that lists which 128×128 blocks are empty, full or partial, so empty blocks
(a rejected answer's queries against the chosen answer's keys, other pairs, padding) cost
nothing and no L×L tensor exists. Wang & Hegde (2024, arXiv 2410.20305), who proposed prefix
sharing for DPO, use it the same way.

``choose_attention`` decides once, at set-up, which implementation the policy runs:

- ``attn_implementation=auto`` picks ``flex_attention`` when the run's batches carry such a
  mask (prefix sharing or packing) and flex attention is usable, else keeps the model's own
  (``sdpa`` for most). Usable means: torch has it, the device is a CUDA GPU, and transformers
  has a flex path for the model class (``_supports_flex_attn``). On a CPU torch 2.13's flex
  attention runs forwards only (its backward raises ``NotImplementedError``), so training there
  stays on the dense-mask path; the two are tested equal on CPU through flex's reference
  implementation (``tests/model/test_flex.py``).
- any other value is passed to transformers as it is (``sdpa``, ``eager``, ``flex_attention``,
  ``flash_attention_2``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tether.errors import ModelError

__all__ = ["block_mask", "choose_attention", "flex_unusable"]

log = logging.getLogger("tether")

FLEX = "flex_attention"


def flex_unusable(model: nn.Module, device: torch.device) -> str | None:
    """Why flex attention cannot train ``model`` on ``device``; None when it can."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    if device.type != "cuda":
        return (f"flex attention has no backward pass on {device.type} in torch "
                f"{torch.__version__.split('+')[0]} (it raises NotImplementedError)")
    base = _base(model)
    if not getattr(base, "_supports_flex_attn", False):
        return f"transformers has no flex attention path for {type(base).__name__}"
    return None


def choose_attention(
    requested: str, model: nn.Module, device: torch.device, custom_mask: bool
) -> str:
    """Set the attention implementation the run uses on ``model`` (once, at set-up) and
    return its name. ``custom_mask``: the batches carry prefix-sharing or packing masks."""
    base = _base(model)
    current = str(getattr(base.config, "_attn_implementation", None) or "eager")
    if requested == "auto":
        why_not = flex_unusable(model, device) if custom_mask else "plain causal batches"
        if why_not is not None:
            if custom_mask:
                log.info("attention: %s, with dense masks (not flex attention: %s)", current,
                         why_not)
            return current
        requested = FLEX
    if requested != current:
        try:
            base.set_attn_implementation(requested)
        except (ImportError, ValueError) as e:
            raise ModelError(
                f"attn_implementation: {type(base).__name__} cannot use '{requested}' "
                f"({str(e).splitlines()[0]}); use auto, sdpa or eager"
            ) from None
    log.info("attention: %s", requested)
    return requested


def block_mask(
    mask_mod: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
    rows: int,
    width: int,
    device: torch.device,
) -> Any:
    """A ``BlockMask`` over ``rows`` rows of ``width`` queries and keys, shared by all heads.
    On CUDA ``create_block_mask`` is compiled, so it evaluates ``mask_mod`` block by block and
    never holds the rows × width² mask; on a CPU (tests) the eager version is quicker to start."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=width, KV_LEN=width,
                             device=device, _compile=device.type == "cuda")


def _base(model: nn.Module) -> Any:
    """The transformers model under a PEFT wrapper."""
    unwrap = getattr(model, "get_base_model", None)
    return unwrap() if callable(unwrap) else model
