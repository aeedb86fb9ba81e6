"""What a data shape is: the ``Shape`` protocol and the ``SHAPES`` registry.

A data shape owns everything that differs between kinds of training rows: how a file is read
and tokenized (``load``), and how a batch's log-probs become the objective's loss and the
per-row statistics (``step``). Batches hold K completion blocks of B rows (block j = every
row's j-th completion), and the reference gives the sums of the first block and the rest
(``RefSums``), so batching, the reference strategies and the loop serve every shape unchanged.

An objective names its shape in ``LossSpec.data``; a new shape is one module with a class that
has ``name``, ``prefix_sharing``, ``load`` and ``step``, registered with ``register_shape``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from tether.data.records import DataReport
from tether.data.tokenization import TokenizedPair, TruncationAudit
from tether.errors import DataError
from tether.losses import LOSS_SPECS, LossConfig, LossOutput

__all__ = [
    "SHAPES", "Loaded", "RefSums", "Shape", "Stats", "add_audit", "logps_stats", "register_shape",
    "shape_of",
]

Stats = dict[str, Tensor]  # per-row statistics (B,), NaN where a row does not define one
# reference sums of the first completion block (B,) and of the others ((K-1)·B,)
RefSums = tuple[Tensor, Tensor]


@dataclass
class Loaded:
    """Tokenized rows of one split and what the run directory's data audit says of them."""

    rows: list[TokenizedPair]
    truncation: TruncationAudit
    chat_template: bool
    report: DataReport | None = None
    notes: list[str] = field(default_factory=list)

    def audit(self, split: str) -> dict[str, Any]:
        out: dict[str, Any] = {f"{split}_truncation": self.truncation.as_dict(),
                               f"{split}_chat_template": self.chat_template}
        if self.report is not None:
            out[f"{split}_data"] = dataclasses.asdict(self.report)
        return out

    def check(self, path: str, max_length: int) -> Loaded:
        if not self.rows:
            raise DataError(
                f"{path}: no rows left after truncation ({self.truncation.dropped} dropped: "
                f"prompts longer than max_length={max_length}); raise max_length or set "
                "max_prompt_length"
            )
        return self


class Shape(Protocol):
    name: str
    # rows are (prompt, chosen, rejected) that may be scored as one prompt‖chosen‖rejected
    # sequence (``prefix_sharing``)
    prefix_sharing: bool

    def load(self, cfg: Any, path: str, tokenizer: Any) -> Loaded:
        """Read, validate and tokenize ``path`` for the training config ``cfg``."""
        ...

    def step(
        self,
        cfg: LossConfig,
        rows: Sequence[TokenizedPair],
        logps: Tensor,
        counts: Tensor,
        reference: RefSums | None,
    ) -> tuple[LossOutput, Stats]:
        """The objective on one batch: ``logps``/``counts`` ``(K·B,)`` sums and token counts."""
        ...


SHAPES: dict[str, Shape] = {}


def register_shape(shape: Shape) -> Shape:
    """Make ``LossSpec(data=shape.name)`` train on rows of this shape."""
    SHAPES[shape.name] = shape
    return shape


def shape_of(loss: str) -> Shape:
    """The data shape the objective ``loss`` trains on."""
    return SHAPES[LOSS_SPECS[loss].data]


def logps_stats(name: str, logps: Tensor, counts: Tensor) -> Stats:
    per_token = logps.detach() / counts.clamp(min=1)  # TRL-comparable, length-free
    return {f"logps/{name}": logps.detach(), f"logps/{name}_per_token": per_token,
            f"lengths/{name}": counts.float()}


def add_audit(total: TruncationAudit, part: TruncationAudit, rows: int) -> None:
    """Fold one source row's audit (over its ``rows`` tokenized sequences) into ``total``."""
    for f in dataclasses.fields(TruncationAudit):
        if f.name not in ("rows", "dropped"):
            setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
    total.rows += 1
    total.dropped += part.dropped == rows  # a row is dropped when its prompt leaves no room
