"""Rendering conversations with a model's chat template: tools, template kwargs, errors.

Everything a row carries beyond its messages goes to the template as the model's authors
documented it: the row's ``tools`` (a JSON-schema list, as TRL accepts) as ``tools=``, and the
run's ``chat_template_kwargs`` (e.g. Qwen 3's ``enable_thinking``) as keyword arguments.
Assistant messages keep ``tool_calls`` and ``reasoning_content`` / ``thinking``; ``tool``
messages keep ``tool_call_id`` and ``name``. Templates that have no use for them ignore them.

A template that raises while rendering (Gemma 2 on a system message, ``raise_exception`` in a
tool-use template called without tools) becomes a ``DataError`` carrying the template's own
message; the caller adds the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from tether.errors import DataError

__all__ = ["ChatRender", "render_chat", "render_pair"]

ChatRender = tuple[str, str]  # (generation prompt, prompt + answered turn)


def render_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The template's text for ``messages``; a template error is a one-line ``DataError``."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        text = tokenizer.apply_chat_template(
            list(messages), tools=list(tools) if tools else None, tokenize=False,
            add_generation_prompt=generation_prompt, **dict(template_kwargs or {}),
        )
    except SecurityError as e:  # transformers' Jinja sandbox stopped the template
        raise DataError(
            f"the chat template failed (SecurityError: {' '.join(str(e).split())}); fix or "
            "replace the template in tokenizer_config.json, or use chat_template=off"
        ) from None
    except TemplateError as e:  # raise_exception() in a template raises TemplateError too
        message = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"the chat template refused this conversation: {message}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        # a template that breaks on this conversation's shape (a field it expects missing,
        # None iterated): the template's own words, in one line, not a Jinja traceback
        message = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"the chat template failed on this conversation "
                        f"({type(e).__name__}: {message})") from None
    return str(text)


def render_pair(
    tokenizer: Any,
    prompt: Sequence[Mapping[str, Any]],
    answer: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> ChatRender:
    """(prompt text, prompt + answer text), the first a prefix of the second.

    Reasoning templates may open a thinking block in the generation prompt that their
    rendering of an answered turn leaves out (Gemma 4: ``<|channel>thought\\n<channel|>``).
    Policy: where ``chat_template_kwargs`` do not make the two agree, the opened block belongs
    to the prompt (generation starts from it, so it is what the model continues) and the
    answered turn's own text follows it; the round-trip check in tokenization then holds the
    tokens to that text. Only the generation prompt may differ: a template that renders the
    earlier turns differently is refused.
    """
    def render(messages: Sequence[Mapping[str, Any]], generation_prompt: bool) -> str:
        return render_chat(tokenizer, messages, generation_prompt=generation_prompt,
                           tools=tools, template_kwargs=template_kwargs)

    ptext = render(prompt, True)
    full = render([*prompt, *answer], False)
    if full.startswith(ptext):
        return ptext, full
    k = len(os.path.commonprefix([ptext, full]))
    before = render(prompt, False)
    if not full.startswith(before) or k < len(before):
        raise DataError(
            "chat template renders the prompt differently with and without the answer "
            f"(generation prompt {ptext[k:][:40]!r}, answered turn {full[k:][:40]!r}); "
            "use chat_template=off or a template whose generation prompt is a prefix"
        )
    return ptext, ptext + full[k:]
