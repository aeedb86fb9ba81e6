"""Preference objectives as pure functions of per-sequence log-probs, and their registry.

``LOSSES`` maps a name to its function and ``LOSS_SPECS`` to what it needs (a reference model,
a data shape, its default β). The objectives live by family: ``pairwise`` (dpo/cDPO, robust,
ipo, hinge), ``margin`` (exo_pair, discopop, sigmoid_norm, dpop, rdpo), ``per_completion``
(nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, cal_dpo), ``sorted_batch`` (aot,
aot_unpaired), ``reference_free`` (simpo, orpo, simper, sft), ``unpaired`` (kto), ``ranked``
(plackett_luce, rrhf, and the expansion of rankings into pairs) and ``mixture`` (weighted sums
of pairwise objectives); ``fdivergence`` holds the f-DPO regularisers of margin objectives;
``objective`` turns the config keys into one call per data shape for the training loop.
"""

from __future__ import annotations

# isort: off
# Families in the order their objectives are listed (LOSSES keeps registration order).
from tether.losses.pairwise import dpo, hinge, ipo, robust
from tether.losses.margin import discopop, dpop, exo_pair, rdpo, sigmoid_norm
from tether.losses.per_completion import apo_down, apo_zero, bco_pair, cal_dpo, nca_pair, sppo_hard
from tether.losses.sorted_batch import aot, aot_unpaired
from tether.losses.reference_free import log_odds, orpo, sft, simper, simpo
from tether.losses.unpaired import kto, mismatched_indices, split_pair
from tether.losses.ranked import (
    RankedPair,
    RankMode,
    expand_ranking,
    plackett_luce,
    ranking_order,
    rrhf,
    scores_from_ranking,
)
from tether.losses.mixture import LossTerm, mixture
# isort: on
from tether.losses.base import (
    LOSS_SPECS,
    LOSSES,
    DataShape,
    LossOutput,
    LossSpec,
    call_loss,
    register,
)
from tether.losses.fdivergence import F_DIVERGENCES
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

__all__ = [
    "F_DIVERGENCES",
    "LOSSES",
    "LOSS_SPECS",
    "DataShape",
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "LossTerm",
    "RankMode",
    "RankedPair",
    "add_nll",
    "aot",
    "aot_unpaired",
    "apo_down",
    "apo_zero",
    "bco_pair",
    "cal_dpo",
    "call_loss",
    "discopop",
    "dpo",
    "dpop",
    "exo_pair",
    "expand_ranking",
    "hinge",
    "ipo",
    "kto",
    "log_odds",
    "loss_config",
    "loss_stats",
    "mismatched_indices",
    "mixture",
    "nca_pair",
    "orpo",
    "pairwise_loss",
    "plackett_luce",
    "ranked_loss",
    "ranking_order",
    "rdpo",
    "reduce_losses",
    "register",
    "robust",
    "rrhf",
    "scores_from_ranking",
    "sft",
    "sigmoid_norm",
    "simper",
    "simpo",
    "split_pair",
    "sppo_hard",
    "unpaired_loss",
]
