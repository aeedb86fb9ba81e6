"""Reference strategies: where log π_ref(y|x) comes from, chosen once at set-up.

- ``precomputed``: one inference pass of the frozen reference (the policy before training,
  or ``reference_model``) over the training and eval rows, an ``(N, K)`` table of log-prob sums
  per split (K = 2 for pairs and KTO rows, the responses of a ranked row), cached on disk as
  safetensors keyed by the weights, the token ids and the settings. Under torchrun the rows are
  split over the ranks. No second model is in memory while training.
- ``copy``: a frozen in-memory copy of the policy (FSDP-sharded under FSDP), scored per batch.
- ``lora``: the policy with its PEFT adapters disabled (or a frozen starting adapter).
- ``none``: reference-free objectives (SimPO, ORPO, RRHF, SFT).

``synced_reference`` makes a copy follow the policy during training (TR-DPO,
``ref_model_sync_steps``); the loop calls its hook after each optimizer step.

``build_reference`` picks one; every strategy is a ``Reference``: called with a batch and its
split, it returns the per-sequence *sums* of the batch's first completion block and of the
others (the loop applies per-token averaging, so the cache does not depend on
``length_normalize``).
"""

from __future__ import annotations

from tether.training.reference.base import Reference, RefSums, split_blocks
from tether.training.reference.cache import (
    cache_path,
    data_fingerprint,
    save_table,
    weights_fingerprint,
)
from tether.training.reference.frozen import (
    FrozenCopy,
    LoraReference,
    ScorerReference,
    frozen_copy,
    frozen_scorer,
)
from tether.training.reference.precomputed import Precomputed, score_rows, score_table
from tether.training.reference.strategy import (
    build_reference,
    copy_before_wrapping,
    reference_kind,
)
from tether.training.reference.synced import SyncedCopy, no_sync, synced_reference

__all__ = [
    "FrozenCopy",
    "LoraReference",
    "Precomputed",
    "RefSums",
    "Reference",
    "ScorerReference",
    "SyncedCopy",
    "build_reference",
    "cache_path",
    "copy_before_wrapping",
    "data_fingerprint",
    "frozen_copy",
    "frozen_scorer",
    "no_sync",
    "reference_kind",
    "save_table",
    "score_rows",
    "score_table",
    "split_blocks",
    "synced_reference",
    "weights_fingerprint",
]
