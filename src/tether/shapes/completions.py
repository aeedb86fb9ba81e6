"""SFT rows ``(prompt, completion)``: the loss is the completion tokens' NLL, no reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from tether.data.records import load_completions, needs_chat
from tether.data.tokenization import TokenizedPair, tokenize_records, use_chat
from tether.losses import LossConfig, LossOutput
from tether.shapes.base import Loaded, RefSums, Stats, register_shape

__all__ = ["CompletionsShape"]


class CompletionsShape:
    name = "completions"
    prefix_sharing = False

    def load(self, cfg: Any, path: str, tokenizer: Any) -> Loaded:
        records = load_completions(path, field_map=cfg.field_map,
                                   prompt_template=cfg.prompt_template, split=cfg.split)
        chat = use_chat(tokenizer, cfg.chat_template, needs_chat(records),
                        cfg.chat_template_kwargs)
        rows, audit = tokenize_records(tokenizer, records, chat=chat, max_length=cfg.max_length,
                                       max_prompt_length=cfg.max_prompt_length)
        return Loaded(rows, audit, bool(chat)).check(path, cfg.max_length)

    def step(
        self, cfg: LossConfig, rows: Sequence[TokenizedPair], logps: Tensor, counts: Tensor,
        ref: RefSums | None,
    ) -> tuple[LossOutput, Stats]:
        out = cfg.fn(logps, counts)  # (B,) sums and token counts of the one completion block
        return out, {"loss": out.losses.detach(), "logps/chosen": logps.detach()}


register_shape(CompletionsShape())
