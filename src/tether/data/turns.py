"""Multi-turn SFT: which tokens of a conversation are the assistant's (issue 19, item 4).

An SFT row's completion may hold several assistant turns with user and tool turns between
them; every assistant turn is scored, the turns between are context. Two ways to find them:

- the template's own ``{% generation %}`` markers, read by ``transformers``
  (``return_assistant_tokens_mask``), where the template has them;
- otherwise by rendering: assistant turn j spans from the end of the conversation before it
  (with the generation prompt) to the end of the conversation through it (trailing whitespace
  after the end of turn left out), provided both renderings are prefixes of the whole one.
  A template that renders an earlier turn differently once it is no longer last (Qwen 3
  drops the thinking block of turns before the last question) gives ``TurnsDiffer``; the
  caller then scores the final assistant turns only, and counts the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["TurnsDiffer", "assistant_mask", "has_generation_markers", "is_multi_turn"]

_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
Render = Callable[[Sequence[Mapping[str, Any]], bool], str]


class TurnsDiffer(Exception):
    """The template renders an assistant turn differently once later turns follow it."""


def is_multi_turn(completion: Any) -> bool:
    return isinstance(completion, list) and any(m["role"] != "assistant" for m in completion)


def has_generation_markers(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and _MARKER.search(template) is not None


def assistant_mask(
    tokenizer: Any, prompt: Sequence[Mapping[str, Any]], completion: Sequence[Mapping[str, Any]],
    n_prompt: int, render: Render, markers_kwargs: Mapping[str, Any],
) -> list[int]:
    """1 on the completion's assistant tokens, 0 elsewhere; ``n_prompt``: the prompt's ids."""
    messages = [*prompt, *completion]
    if has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            **markers_kwargs,
        )
        return [int(x) for x in out["assistant_masks"][n_prompt:]]
    full = render(messages, False)
    spans = []
    for j, m in enumerate(completion):
        if m["role"] != "assistant":
            continue
        before = render([*prompt, *completion[:j]], True)
        through = render([*prompt, *completion[: j + 1]], False).rstrip()
        if not (full.startswith(before) and full.startswith(through)):
            raise TurnsDiffer
        spans.append((len(before), len(through)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    return [int(b > a and any(s <= a and b <= e for s, e in spans))
            for a, b in enc["offset_mapping"][n_prompt:]]
