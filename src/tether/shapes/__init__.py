"""Data shapes, one module each: pairs, SFT completions, unpaired (KTO) rows, ranked rows.

``SHAPES`` maps a shape's name (an objective's ``LossSpec.data``) to the object that reads and
tokenizes its rows and turns a batch's log-probs into the objective's loss. Adding a shape is
one module plus its ``register_shape`` line (see ``tether.shapes.base``).
"""

from __future__ import annotations

from tether.shapes.base import (
    SHAPES,
    Loaded,
    RefSums,
    Shape,
    Stats,
    register_shape,
    shape_of,
)
from tether.shapes.completions import CompletionsShape
from tether.shapes.pairs import PairsShape
from tether.shapes.ranked import (
    RankedRecord,
    RankedShape,
    TokenizedRanked,
    TokenizedWeightedPair,
    load_ranked,
    looks_ranked,
)
from tether.shapes.unpaired import TokenizedUnpaired, UnpairedRecord, UnpairedShape, load_unpaired

__all__ = [
    "SHAPES",
    "CompletionsShape",
    "Loaded",
    "PairsShape",
    "RankedRecord",
    "RankedShape",
    "RefSums",
    "Shape",
    "Stats",
    "TokenizedRanked",
    "TokenizedUnpaired",
    "TokenizedWeightedPair",
    "UnpairedRecord",
    "UnpairedShape",
    "load_ranked",
    "load_unpaired",
    "looks_ranked",
    "register_shape",
    "shape_of",
]
