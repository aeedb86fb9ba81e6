"""Preference objectives as pure functions of per-sequence log-probs, and their registry.

``LOSSES`` maps a name to its function and ``LOSS_SPECS`` to what it needs (a reference model,
a data shape, its default β). The objectives live by family: ``pairwise`` (dpo/cDPO, robust,
ipo, hinge), ``reference_free`` (simpo, orpo, sft), ``unpaired`` (kto) and ``ranked``
(plackett_luce, rrhf, and the expansion of rankings into pairs); ``objective`` turns the config
keys into one call per data shape for the training loop.
"""

from __future__ import annotations

from tether.losses.base import (
    LOSS_SPECS,
    LOSSES,
    DataShape,
    LossOutput,
    LossSpec,
    call_loss,
    register,
)
from tether.losses.objective import (
    LossConfig,
    add_nll,
    loss_config,
    loss_stats,
    pairwise_loss,
    ranked_loss,
    reduce_losses,
    unpaired_loss,
)
from tether.losses.pairwise import dpo, hinge, ipo, robust
from tether.losses.ranked import (
    RankedPair,
    RankMode,
    expand_ranking,
    plackett_luce,
    ranking_order,
    rrhf,
    scores_from_ranking,
)
from tether.losses.reference_free import log_odds, orpo, sft, simpo
from tether.losses.unpaired import kto, mismatched_indices, split_pair

__all__ = [
    "LOSSES",
    "LOSS_SPECS",
    "DataShape",
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "RankMode",
    "RankedPair",
    "add_nll",
    "call_loss",
    "dpo",
    "expand_ranking",
    "hinge",
    "ipo",
    "kto",
    "log_odds",
    "loss_config",
    "loss_stats",
    "mismatched_indices",
    "orpo",
    "pairwise_loss",
    "plackett_luce",
    "ranked_loss",
    "ranking_order",
    "reduce_losses",
    "register",
    "robust",
    "rrhf",
    "scores_from_ranking",
    "sft",
    "simpo",
    "split_pair",
    "unpaired_loss",
]
