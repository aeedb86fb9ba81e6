"""The SFT model's own preference on each pair, for ``tether inspect model=...``.

The margin is the per-token log-prob difference log π(y_w|x)/|y_w| − log π(y_l|x)/|y_l| of the
model about to be trained (the DPO reference). A pair the model already strongly prefers the
other way is a label-noise candidate; their share suggests cDPO's ``label_smoothing`` ε
(Mitchell 2023, "A note on DPO with noisy preferences"), capped at 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tether.data.records import PreferenceRecord, needs_chat
from tether.data.tokenization import tokenize_records, use_chat

if TYPE_CHECKING:
    from tether.insight.inspect import Finding, InspectConfig

__all__ = ["model_preference"]


def model_preference(
    cfg: InspectConfig, records: Sequence[PreferenceRecord], tokenizer: Any
) -> tuple[Finding, list[float]]:
    from tether.insight.inspect import Finding
    from tether.model.loading import load_model, resolve_device
    from tether.training.reference import score_table

    assert cfg.model is not None
    chat = use_chat(tokenizer, "auto", needs_chat(records))
    rows, _ = tokenize_records(tokenizer, records, chat=chat, max_length=cfg.max_length)
    kept = {r.source for r in rows}
    sources = [r.source for r in records if r.source in kept]
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device=device, trust_remote_code=cfg.trust_remote_code)
    sums = score_table(model, rows, tokenizer.pad_token_id, cfg.batch_size, device, chunk=1024,
                       desc="model preference", progress=False)  # (N, 2)
    margins = [float(c) / max(1, len(r.chosen)) - float(j) / max(1, len(r.rejected))
               for (c, j), r in zip(sums.tolist(), rows, strict=True)]
    prefers = sum(m > 0 for m in margins) / len(margins)
    strong = [(m, s) for m, s in zip(margins, sources, strict=True)
              if m < -cfg.strong_disagreement]
    eps = min(0.3, len(strong) / len(margins))
    finding = Finding(
        "model_preference", "warn" if strong else "info",
        f"the model already prefers chosen in {prefers:.0%} of {len(margins)} pairs; "
        f"{len(strong)} pairs it strongly prefers the other way (per-token margin < "
        f"-{cfg.strong_disagreement:g})",
        "pairs the starting model strongly disagrees with are candidates for flipped labels; "
        "pairs it already gets right teach it little",
        f"look at the listed rows; with noisy labels try label_smoothing={eps:.2f} (cDPO)"
        if strong else "nothing",
        [f"{s} (margin {m:+.2f})" for m, s in sorted(strong)],
    )
    return finding, margins
