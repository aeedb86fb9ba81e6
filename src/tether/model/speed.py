"""Optional speed and memory levers applied to the policy before training.

Each is measured in bench/README.md; the defaults are the ones that paid on the benchmark.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tether.model.logprobs import split_head

__all__ = ["apply_levers"]


def apply_levers(cfg: Any, model: nn.Module) -> None:
    """Gradient checkpointing and ``torch.compile`` as ``cfg`` asks (a ``TrainConfig``)."""
    if cfg.gradient_checkpointing:
        # Non-reentrant: works with inputs that need no grad and with torch.compile.
        kwargs = {"use_reentrant": False}
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
        if callable(enable):
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[operator]
    if cfg.compile:
        body, _ = split_head(model)
        # The decoder layers, not the whole body: the mask and position handling stay eager,
        # and one compiled graph serves every layer. dynamic=True: lengths vary per batch.
        for layer in _layers(body):
            layer.compile(dynamic=True)


def _layers(body: nn.Module) -> list[nn.Module]:
    for name in ("layers", "h", "blocks"):
        found = getattr(body, name, None)
        if isinstance(found, nn.ModuleList):
            return list(found)
    raise NotImplementedError(f"{type(body).__name__}: no layer list found to compile")
