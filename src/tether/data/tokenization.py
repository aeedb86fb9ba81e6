"""Records -> token ids with an exact prompt/completion boundary, EOS once, audited truncation.

Policy, stated once:
- The completion's tokens are scored, the prompt's are not. The prompt's ids are the prompt's
  own tokenization: exactly what generation starts from (``prompt_ids``; eval uses it too).
- The boundary is found in token space: prompt+completion is tokenized as a whole, and when
  the prompt's ids are its prefix the completion is the rest. When a tokenizer merges across
  the boundary they are not; the completion is then re-tokenized (counted as ``retokenized``),
  never silently shifted: on its own, or, if that changes the text, as a continuation (after a
  separator whose tokens are then cut). The second case is SentencePiece's word-start space
  (Llama 2, Mistral v1, Phi-3): a prompt ending in ``"A: "`` ends on the lone token ``▁``, and
  ``"Paris."`` on its own is ``▁Paris .``, which after that prompt reads ``"A:  Paris."``; as
  a continuation it is ``Par is .``.
- Round trip, checked whenever the boundary was re-tokenized: prompt ids + completion ids
  decode to what the whole rendered text's ids decode to. A row where no re-tokenization does
  is a ``DataError`` naming the row.
- Each completion ends with EOS exactly once (chat templates that already close the turn with
  EOS are not doubled; whitespace a template adds after EOS is cut).
- ``max_prompt_length`` keeps the prompt's END (and its BOS); ``max_length`` then keeps the
  completion's START. A row whose completion would become empty is dropped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tether.data.records import Message, PreferenceRecord, Text
from tether.errors import DataError, ModelError

__all__ = ["TokenizedPair", "TruncationAudit", "beyond_context", "prompt_ids", "render_chat",
           "tokenize_records", "use_chat"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one row; ``rejected`` is empty for SFT rows."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    source: str = ""

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))

    @property
    def completions(self) -> list[list[int]]:
        """The completions a batch scores for this row, in column order (chosen, rejected)."""
        return [self.chosen, self.rejected] if self.rejected else [self.chosen]


@dataclass
class TruncationAudit:
    rows: int = 0
    prompts_truncated: int = 0
    completions_truncated: int = 0
    dropped: int = 0
    tokens_lost: int = 0
    retokenized: int = 0

    def summary(self) -> str:
        return (
            f"truncation: {self.prompts_truncated} prompts and {self.completions_truncated} "
            f"completions truncated of {self.rows} rows, {self.tokens_lost} tokens lost, "
            f"{self.dropped} rows dropped (no room for the completion), "
            f"{self.retokenized} boundaries re-tokenized"
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def use_chat(tokenizer: Any, mode: Literal["auto", "on", "off"], conversational: bool) -> bool:
    has = getattr(tokenizer, "chat_template", None) is not None
    if mode == "on" and not has:
        raise DataError("chat_template=on, but the tokenizer has no chat template; use off")
    return mode == "on" or (mode == "auto" and has and conversational)


def render_chat(tokenizer: Any, messages: list[Message], **kwargs: Any) -> str:
    """``apply_chat_template(messages, tokenize=False)``; a template that fails (or that
    transformers' Jinja sandbox stops, e.g. reaching for ``__class__``) is a one-line
    ModelError, not a traceback from inside Jinja."""
    from jinja2 import TemplateError

    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))
    except TemplateError as e:
        raise ModelError(
            f"tokenizer: its chat template failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); fix or replace the template in "
            "tokenizer_config.json, or use chat_template=off"
        ) from None


def _as_messages(text: Text, role: str) -> list[Message]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def _plain(text: Text, prompt: bool) -> str:
    """Messages without a chat template: 'role: content' lines; prompts end on 'assistant: '."""
    if isinstance(text, str):
        return text
    if prompt:
        return "".join(f"{m['role']}: {m['content']}\n" for m in text) + "assistant: "
    return "\n".join(m["content"] for m in text)


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _render(tokenizer: Any, prompt: Text, completion: Text, chat: bool) -> tuple[str, str, bool]:
    """(prompt text, prompt+completion text, add special tokens when encoding)."""
    if chat:
        p = _as_messages(prompt, "user")
        c = _as_messages(completion, "assistant")
        ptext = render_chat(tokenizer, p, add_generation_prompt=True)
        full = render_chat(tokenizer, p + c)
        if not full.startswith(ptext):
            # e.g. Gemma 4: the generation prompt opens an empty thought channel that the
            # template leaves out of an answered turn, so no boundary is both exact and true.
            k = len(os.path.commonprefix([ptext, full]))
            raise DataError(
                "chat template renders the prompt differently with and without the answer "
                f"(generation prompt {ptext[k:][:40]!r}, answered turn {full[k:][:40]!r}); "
                "use chat_template=off or a template whose generation prompt is a prefix"
            )
        return ptext, full, False  # templates write their own BOS
    ptext = _plain(prompt, prompt=True)
    return ptext, ptext + _plain(completion, prompt=False), True


def prompt_ids(tokenizer: Any, prompt: Text, chat: bool) -> list[int]:
    """The prompt's token ids exactly as training sees them (generation starts from these)."""
    if chat:
        text = render_chat(tokenizer, _as_messages(prompt, "user"), add_generation_prompt=True)
        return _ids(tokenizer, text, False)
    return _ids(tokenizer, _plain(prompt, prompt=True), True)


def _completion_ids(
    tokenizer: Any, prompt: Text, completion: Text, chat: bool, audit: TruncationAudit
) -> tuple[list[int], list[int]]:
    ptext, full, special = _render(tokenizer, prompt, completion, chat)
    p_ids = _ids(tokenizer, ptext, special)
    full_ids = _ids(tokenizer, full, special)
    if full_ids[: len(p_ids)] == p_ids:
        c_ids = full_ids[len(p_ids) :]
    else:  # a merge across the boundary: score the completion as generation would produce it
        audit.retokenized += 1
        c_ids = _continuation(tokenizer, p_ids, full[len(ptext) :], _decode(tokenizer, full_ids))
    return p_ids, _end_with_eos(tokenizer, c_ids)


# Separators whose tokens do not merge with most text that follows them: after one, a
# SentencePiece tokenizer encodes the text as a continuation, without its word-start space.
# "x" is the fallback for a completion that starts with a newline.
_SEPARATORS = ("\n", "x")


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def _candidates(tokenizer: Any, text: str) -> Iterator[list[int]]:
    """Tokenizations of ``text`` to follow a prompt: on its own, then after each separator."""
    yield _ids(tokenizer, text, False)
    for sep in _SEPARATORS:
        sep_ids = _ids(tokenizer, sep, False)
        ids = _ids(tokenizer, sep + text, False)
        if sep_ids and ids[: len(sep_ids)] == sep_ids:
            yield ids[len(sep_ids) :]


def _continuation(tokenizer: Any, p_ids: list[int], text: str, want: str) -> list[int]:
    """The first tokenization of ``text`` with decode(p_ids + ids) == ``want``."""
    for ids in _candidates(tokenizer, text):
        if _decode(tokenizer, p_ids + ids) == want:
            return ids
    raise DataError(
        f"the answer's tokens cannot follow the prompt's without changing the text: the prompt "
        f"ends with {_decode(tokenizer, p_ids[-3:])!r} and the answer starts with {text[:12]!r}, "
        "which this tokenizer merges; move the boundary (e.g. the trailing space of the prompt "
        "to the start of the answer)"
    )


def _end_with_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        tail = ids[last + 1 :]
        if not tail or not tokenizer.decode(tail).strip():
            ids = ids[: last + 1]  # drop the newline a chat template puts after end-of-turn
    while len(ids) >= 2 and ids[-1] == eos and ids[-2] == eos:
        ids = ids[:-1]
    if not ids or ids[-1] != eos:
        ids = [*ids, eos]
    return ids


def tokenize_records(
    tokenizer: Any,
    records: Sequence[PreferenceRecord],
    *,
    chat: bool,
    max_length: int,
    max_prompt_length: int | None = None,
) -> tuple[list[TokenizedPair], TruncationAudit]:
    """Tokenize rows (pairs, or SFT rows with empty ``rejected``) under the stated policy."""
    audit = TruncationAudit(rows=len(records))
    out = []
    for rec in records:
        try:
            p_ids, chosen = _completion_ids(tokenizer, rec.prompt, rec.chosen, chat, audit)
            rejected: list[int] = []
            if rec.rejected:
                _, rejected = _completion_ids(tokenizer, rec.prompt, rec.rejected, chat, audit)
        except DataError as e:
            raise DataError(f"{rec.source}: {e}") from None
        if max_prompt_length is not None and len(p_ids) > max_prompt_length:
            keep_bos = p_ids[0] == tokenizer.bos_token_id
            tail = p_ids[len(p_ids) - max_prompt_length + keep_bos :]
            audit.tokens_lost += len(p_ids) - max_prompt_length
            p_ids = [p_ids[0], *tail] if keep_bos else tail
            audit.prompts_truncated += 1
        room = max_length - len(p_ids)
        if room < 1:
            audit.dropped += 1
            audit.tokens_lost += len(p_ids) + len(chosen) + len(rejected)
            continue
        cut = [c for c in (chosen, rejected) if len(c) > room]
        if cut:
            audit.completions_truncated += 1
            audit.tokens_lost += sum(len(c) - room for c in cut)
            chosen, rejected = chosen[:room], rejected[:room]
        out.append(TokenizedPair(p_ids, chosen, rejected, rec.source))
    return out, audit


def beyond_context(split: str, rows: Sequence[TokenizedPair], window: int | None) -> int:
    """How many rows are longer than the model's context window (``None``: unknown), warned
    once with the count: ``max_length`` (default 1024) need not fit the model, and a row past
    the window trains on positions the model never saw (or fails on learned positions)."""
    beyond = sum(r.length > window for r in rows) if window else 0
    if beyond:
        log.warning(
            "%s: %d of %d rows are longer than the model's context window (%d tokens); set "
            "max_length=%d (and max_prompt_length) to cut them", split, beyond, len(rows),
            window, window,
        )
    return beyond
