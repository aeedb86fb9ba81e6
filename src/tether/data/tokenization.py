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
- Chat templates (``data.chat``): the row's tools and the run's ``chat_template_kwargs`` go to
  the template; a thinking block that only the generation prompt opens belongs to the prompt.
- Multi-turn SFT rows score every assistant turn through ``chosen_mask`` (``data.turns``).
- ``max_prompt_length`` keeps the prompt's END (and its BOS); ``max_length`` then keeps the
  completion's START. A row whose completion would become empty is dropped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from tether.data.chat import render_chat, render_pair
from tether.data.records import Message, PreferenceRecord, Text
from tether.data.turns import TurnsDiffer, assistant_mask, is_multi_turn
from tether.errors import DataError

# False: plain text; True: the chat template; a mapping: the chat template called with these
# keyword arguments (the run's ``chat_template_kwargs``, e.g. ``{"enable_thinking": False}``).
Chat = bool | Mapping[str, Any]

__all__ = ["Chat", "TokenizedPair", "TruncationAudit", "beyond_context", "prompt_ids",
           "tokenize_records", "use_chat"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one row; ``rejected`` is empty for SFT rows."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    source: str = ""
    # Multi-turn SFT rows: 1 on the chosen tokens that are scored (assistant turns), 0 on the
    # user and tool turns between them; None: every completion token is scored.
    chosen_mask: list[int] | None = field(default=None, kw_only=True)

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
    last_turn_only: int = 0

    def summary(self) -> str:
        return (
            f"truncation: {self.prompts_truncated} prompts and {self.completions_truncated} "
            f"completions truncated of {self.rows} rows, {self.tokens_lost} tokens lost, "
            f"{self.dropped} rows dropped (no room for the completion), "
            f"{self.retokenized} boundaries re-tokenized"
            + (f", {self.last_turn_only} conversations scored on their last assistant turns only "
               "(the template renders earlier turns differently)" if self.last_turn_only else "")
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def use_chat(
    tokenizer: Any, mode: Literal["auto", "on", "off"], conversational: bool,
    template_kwargs: Mapping[str, Any] | None = None,
) -> Chat:
    """Whether rows go through the chat template; with ``template_kwargs`` (the run's
    ``chat_template_kwargs``) the template is called with them."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if mode == "on" and not has:
        raise DataError("chat_template=on, but the tokenizer has no chat template; use off")
    chat = mode == "on" or (mode == "auto" and has and conversational)
    return dict(template_kwargs) if chat and template_kwargs else chat


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


def _render(
    tokenizer: Any, rec: PreferenceRecord, completion: Text, chat: Chat
) -> tuple[str, str, bool]:
    """(prompt text, prompt+completion text, add special tokens when encoding)."""
    if chat:
        p = _as_messages(rec.prompt, "user")
        c = _as_messages(completion, "assistant")
        ptext, full = render_pair(tokenizer, p, c, tools=rec.tools, template_kwargs=_kwargs(chat))
        return ptext, full, False  # templates write their own BOS
    texts = [t for t in (rec.prompt, completion) if isinstance(t, list)]
    if rec.tools or any("tool_calls" in m for t in texts for m in t):
        # 'role: content' lines have no place for them: they would vanish from the text
        raise DataError("tools and tool calls need a chat template; this run uses none "
                        "(chat_template=off, or the tokenizer has no template)")
    ptext = _plain(rec.prompt, prompt=True)
    return ptext, ptext + _plain(completion, prompt=False), True


def _kwargs(chat: Chat) -> Mapping[str, Any] | None:
    return chat if isinstance(chat, Mapping) else None


def prompt_ids(
    tokenizer: Any, prompt: Text, chat: Chat, tools: Sequence[Mapping[str, Any]] | None = None
) -> list[int]:
    """The prompt's token ids exactly as training sees them (generation starts from these).

    ``chat``: False for plain text, True for the chat template, or the run's
    ``chat_template_kwargs`` (a mapping: the chat template called with those arguments)."""
    if chat:
        text = render_chat(tokenizer, _as_messages(prompt, "user"), generation_prompt=True,
                           tools=tools, template_kwargs=_kwargs(chat))
        return _ids(tokenizer, text, False)
    return _ids(tokenizer, _plain(prompt, prompt=True), True)


def _completion_ids(
    tokenizer: Any, rec: PreferenceRecord, completion: Text, chat: Chat, audit: TruncationAudit
) -> tuple[list[int], list[int]]:
    ptext, full, special = _render(tokenizer, rec, completion, chat)
    p_ids = _ids(tokenizer, ptext, special)
    full_ids = _ids(tokenizer, full, special)
    if full_ids[: len(p_ids)] == p_ids:
        c_ids = full_ids[len(p_ids) :]
    else:  # a merge across the boundary: score the completion as generation would produce it
        audit.retokenized += 1
        c_ids = _continuation(tokenizer, p_ids, full[len(ptext) :], _decode(tokenizer, full_ids))
    return p_ids, _end_with_eos(tokenizer, c_ids)


def _last_turns(rec: PreferenceRecord) -> PreferenceRecord:
    """The row with every turn before its final assistant turns moved into the prompt."""
    msgs = [*rec.prompt, *rec.chosen]
    k = max(i for i, m in enumerate(msgs) if m["role"] != "assistant") + 1
    return replace(rec, prompt=msgs[:k], chosen=msgs[k:])


def _multi_turn(
    tokenizer: Any, rec: PreferenceRecord, chat: Chat, audit: TruncationAudit
) -> tuple[list[int], list[int], list[int] | None]:
    """An SFT conversation whose completion has user/tool turns between assistant turns:
    (prompt ids, completion ids, mask scoring every assistant turn), see ``data.turns``."""
    assert isinstance(rec.prompt, list) and isinstance(rec.chosen, list)
    kw = _kwargs(chat)

    def render(messages: Sequence[Mapping[str, Any]], generation_prompt: bool) -> str:
        return render_chat(tokenizer, messages, generation_prompt=generation_prompt,
                           tools=rec.tools, template_kwargs=kw)

    ptext, full, _ = _render(tokenizer, rec, rec.chosen, chat)
    p_ids, full_ids = _ids(tokenizer, ptext, False), _ids(tokenizer, full, False)
    try:
        if full_ids[: len(p_ids)] != p_ids or full != render([*rec.prompt, *rec.chosen], False):
            raise TurnsDiffer
        mask = assistant_mask(tokenizer, rec.prompt, rec.chosen, len(p_ids), render,
                              {"tools": rec.tools, **(kw or {})})
        if len(mask) != len(full_ids) - len(p_ids):
            raise TurnsDiffer
    except TurnsDiffer:  # score the final assistant turns, as for a single-turn row
        audit.last_turn_only += 1
        last = _last_turns(rec)
        return (*_completion_ids(tokenizer, last, last.chosen, chat, audit), None)
    ids = _end_with_eos(tokenizer, full_ids[len(p_ids) :])  # a prefix, plus EOS if appended
    return p_ids, ids, mask[: len(ids)] + [1] * (len(ids) - len(mask))


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
    chat: Chat,
    max_length: int,
    max_prompt_length: int | None = None,
) -> tuple[list[TokenizedPair], TruncationAudit]:
    """Tokenize rows (pairs, or SFT rows with empty ``rejected``) under the stated policy."""
    audit = TruncationAudit(rows=len(records))
    out = []
    for rec in records:
        try:
            mask: list[int] | None = None
            if chat and not rec.rejected and is_multi_turn(rec.chosen):
                p_ids, chosen, mask = _multi_turn(tokenizer, rec, chat, audit)
            elif not rec.rejected and is_multi_turn(rec.chosen):  # plain text: no turn marks
                last = _last_turns(rec)
                p_ids, chosen = _completion_ids(tokenizer, last, last.chosen, chat, audit)
            else:
                p_ids, chosen = _completion_ids(tokenizer, rec, rec.chosen, chat, audit)
            rejected: list[int] = []
            if rec.rejected:
                _, rejected = _completion_ids(tokenizer, rec, rec.rejected, chat, audit)
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
            mask = mask[:room] if mask is not None else None
        out.append(TokenizedPair(p_ids, chosen, rejected, rec.source, chosen_mask=mask))
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
