"""``build_reference``: the one place that decides where the reference log-probs come from."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from tether.config import TrainConfig
from tether.data.tokenization import TokenizedPair
from tether.errors import ConfigError
from tether.losses import LOSS_SPECS
from tether.model.loading import load_model
from tether.training.distributed import Dist, local_module
from tether.training.reference.base import Reference
from tether.training.reference.frozen import (
    LoraReference,
    ScorerReference,
    frozen_copy,
    frozen_scorer,
)
from tether.training.reference.precomputed import Precomputed

__all__ = ["build_reference", "reference_kind"]

log = logging.getLogger("tether")


def reference_kind(cfg: TrainConfig) -> str:
    """``cfg.reference`` with ``auto`` resolved: LoRA runs use the base with adapters off (it is
    in memory already), others a precomputed table; reference-free objectives need none."""
    spec = LOSS_SPECS[cfg.loss]
    kind: str = cfg.reference
    per_batch = _scored_per_batch(cfg)
    if kind == "auto":
        default = "lora" if cfg.lora and not cfg.reference_model else "precomputed"
        if default == "precomputed" and per_batch:
            default = "copy"
            log.info("reference: copy, because %s (a precomputed table cannot hold it)",
                     per_batch)
        kind = default if spec.needs_reference else "none"
    if spec.needs_reference and kind == "none":
        raise ConfigError(f"reference: loss '{cfg.loss}' needs a reference; use precomputed or "
                          "copy")
    if per_batch and kind == "precomputed":
        raise ConfigError(f"reference: {per_batch}, so reference=precomputed does not apply; "
                          "use reference=copy (or auto)")
    return kind


def _scored_per_batch(cfg: TrainConfig) -> str:
    """Why the reference must be scored batch by batch ('' when it need not)."""
    if cfg.ref_model_sync_steps > 0:
        return f"ref_model_sync_steps={cfg.ref_model_sync_steps} moves the reference (TR-DPO)"
    if cfg.ld_alpha is not None:
        return f"ld_alpha={cfg.ld_alpha} weighs each pair's tokens by its shorter length (LD-DPO)"
    return ""


def copy_before_wrapping(
    cfg: TrainConfig, kind: str, policy: nn.Module, d: Dist, device: torch.device, autocast: bool
) -> Reference | None:
    """``copy`` of the policy itself must be taken before ``wrap_policy`` (FSDP shards in
    place); every other strategy is built after, by ``build_reference``."""
    if kind == "copy" and not cfg.reference_model:
        return frozen_copy(policy, d, device, cfg.logprob_chunk, autocast)
    return None


def build_reference(
    cfg: TrainConfig,
    kind: str,
    policy: nn.Module,
    scorer: nn.Module,
    d: Dist,
    splits: Mapping[str, Sequence[TokenizedPair]],
    *,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
    autocast: bool,
    prefix_sharing: bool = False,
    reference_model: nn.Module | None = None,
) -> Reference | None:
    """The reference strategy ``kind``; its model is the policy's start unless
    ``reference_model`` (a path in the config, or the model object given here). ``None`` for
    ``kind=none``."""
    if kind == "none":
        return None
    if kind == "lora":
        return LoraReference(policy, local_module(scorer), autocast)  # the base, adapters off
    model = policy
    if reference_model is not None:  # tether.train(ref_model=...)
        model = reference_model
        scorer = frozen_scorer(model, d, device, cfg.logprob_chunk)
    elif cfg.reference_model:  # e.g. iterative DPO with the reference fixed at the SFT model
        model = load_model(cfg.reference_model, dtype=dtype, device=d.load_device(device),
                           trust_remote_code=cfg.trust_remote_code, empty=d.empty_model)
        scorer = frozen_scorer(model, d, device, cfg.logprob_chunk)  # sharded under FSDP
    if kind == "copy":  # reference_model: already a model of its own, no copy needed
        return ScorerReference(scorer, autocast)
    if LOSS_SPECS[cfg.loss].data == "ranked":
        d.refuse_fsdp("reference=precomputed with a ranked objective", "reference=copy")
    return Precomputed.build(
        model, splits, pad_id=pad_id, batch_size=cfg.eval_batch_size, device=device,
        chunk=cfg.logprob_chunk, autocast=autocast, progress=cfg.progress,
        cache_dir=Path(cfg.cache_dir).expanduser() / "reference",
        settings={"dtype": str(dtype), "autocast": autocast, "device": device.type},
        prefix_sharing=prefix_sharing, dist_=d, scorer=scorer,
    )
