"""Config checks of the keys that decide how the reference is scored: LD-DPO's ``ld_alpha``,
TR-DPO's ``ref_model_sync_steps`` and ``ref_model_mixup_alpha``.

They read loss and reference keys together, so they live beside ``TrainConfig`` rather than in
``LossConfig``.
"""

from __future__ import annotations

from typing import Any

from tether.losses.base import LOSS_SPECS

__all__ = ["reference_problems"]


def reference_problems(cfg: Any) -> list[str]:
    """TR-DPO updates an in-memory copy of the policy: no table, adapters or shards to update.
    LD-DPO's weighted reference sums are scored batch by batch too."""
    out = []
    if cfg.ld_alpha is not None and cfg.reference == "precomputed":
        out.append("ld_alpha: LD-DPO weighs each pair's tokens by its shorter length, which the "
                   "precomputed table does not hold; use reference=copy (or auto)")
    if cfg.ref_model_sync_steps == 0:
        if cfg.ref_model_mixup_alpha != 0.6:
            out.append("ref_model_mixup_alpha: only a synced reference reads it; set "
                       "ref_model_sync_steps > 0 or remove ref_model_mixup_alpha")
        return out
    if cfg.loss in LOSS_SPECS and not LOSS_SPECS[cfg.loss].needs_reference:
        out.append(f"ref_model_sync_steps: loss={cfg.loss} has no reference to move; remove "
                   f"ref_model_sync_steps")
    if cfg.reference not in ("auto", "copy"):
        out.append(f"ref_model_sync_steps: TR-DPO moves an in-memory copy of the policy, "
                   f"reference={cfg.reference} is not one; use reference=copy (or auto)")
    if cfg.lora:
        out.append("ref_model_sync_steps: a LoRA run's reference is the base with adapters off, "
                   "which cannot follow the policy; remove lora=true or ref_model_sync_steps")
    if cfg.distributed == "fsdp":
        out.append("ref_model_sync_steps: not supported with distributed=fsdp; use ddp")
    if cfg.resume:
        out.append("ref_model_sync_steps: checkpoints do not hold the moving reference yet, so "
                   "a resumed TR-DPO run would restart it; remove resume")
    return out
