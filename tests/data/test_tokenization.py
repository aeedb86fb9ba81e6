"""Prompt/completion boundary in token space, EOS exactly once, truncation policy and audit."""

from __future__ import annotations

import pytest

from tether.data.records import PreferenceRecord
from tether.data.tokenization import prompt_ids, tokenize_records, use_chat
from tether.errors import DataError

USER = [{"role": "user", "content": "the cat sat on the mat"}]


def answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def one(tokenizer, prompt, chosen, rejected="no", chat=False, **kw):
    kw.setdefault("max_length", 512)
    rows, audit = tokenize_records(
        tokenizer, [PreferenceRecord(prompt, chosen, rejected, "f.jsonl:1")], chat=chat, **kw
    )
    return rows, audit


# --------------------------------------------------------------------------- chat template


def test_chat_boundary_eos_once_and_newline_not_scored(chat_tokenizer):
    tok = chat_tokenizer
    rows, audit = one(tok, USER, answer("yes please"), answer("no"), chat=True)
    (row,) = rows
    full_text = tok.apply_chat_template(USER + answer("yes please"), tokenize=False)
    assert full_text.endswith(tok.eos_token + "\n")  # the case this test is about
    full = tok(full_text, add_special_tokens=False)["input_ids"]

    assert row.prompt == prompt_ids(tok, USER, chat=True)
    assert row.chosen[-1] == tok.eos_token_id
    assert row.chosen.count(tok.eos_token_id) == 1
    assert row.rejected.count(tok.eos_token_id) == 1 and row.rejected[-1] == tok.eos_token_id
    # prompt + completion is the template's own tokenization up to EOS; only '\n' is left out
    n = len(row.prompt) + len(row.chosen)
    assert full[:n] == row.prompt + row.chosen
    assert tok.decode(full[n:]) == "\n"
    assert tok.decode(row.chosen, skip_special_tokens=True) == "yes please"
    assert audit.retokenized == 0


def test_chat_answer_that_already_ends_with_eos_is_not_doubled(chat_tokenizer):
    tok = chat_tokenizer
    (row,), _ = one(tok, USER, answer("yes please" + tok.eos_token), answer("no"), chat=True)
    assert row.chosen.count(tok.eos_token_id) == 1 and row.chosen[-1] == tok.eos_token_id


def test_chat_prompt_ids_end_with_generation_prompt(chat_tokenizer):
    ids = prompt_ids(chat_tokenizer, USER, chat=True)
    text = chat_tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert ids == chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    # a plain-string prompt is a one-turn user conversation under the template
    assert prompt_ids(chat_tokenizer, USER[0]["content"], chat=True) == ids


# --------------------------------------------------------------------------- plain text


def test_plain_text_boundary_and_eos(tokenizer):
    (row,), audit = one(tokenizer, "the cat sat on the mat", " yes please", " no")
    assert row.prompt == prompt_ids(tokenizer, "the cat sat on the mat", chat=False)
    assert row.prompt[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in row.prompt
    full = tokenizer("the cat sat on the mat yes please")["input_ids"]
    assert row.prompt + row.chosen == [*full, tokenizer.eos_token_id]
    assert row.chosen.count(tokenizer.eos_token_id) == 1
    assert audit.retokenized == 0


@pytest.mark.parametrize("suffix", ["</s>", "</s></s>"])
def test_plain_text_ending_with_eos_string_gets_eos_once(tokenizer, suffix):
    (row,), _ = one(tokenizer, "the cat", " yes please" + suffix, " no")
    assert row.chosen[-1] == tokenizer.eos_token_id
    assert row.chosen.count(tokenizer.eos_token_id) == 1
    (plain,), _ = one(tokenizer, "the cat", " yes please", " no")
    assert row.chosen == plain.chosen


def test_boundary_merge_is_retokenized_and_counted(tokenizer):
    # "the ca" + "t sat": the tokenizer merges " cat" across the boundary, so the prompt's
    # tokens are not a prefix of the pair's tokens.
    prompt, completion = "the ca", "t sat"
    p = tokenizer(prompt)["input_ids"]
    assert tokenizer(prompt + completion)["input_ids"][: len(p)] != p, "no merge: bad example"
    (row,), audit = one(tokenizer, prompt, completion, " no")
    assert audit.retokenized == 1  # the chosen side merged, the rejected side did not
    assert row.prompt == p
    want = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert row.chosen == [*want, tokenizer.eos_token_id]


def test_conversation_without_template_is_plain_role_lines(tokenizer):
    (row,), _ = one(tokenizer, USER, answer("yes"), answer("no"), chat=False)
    text = tokenizer.decode(row.prompt, skip_special_tokens=True)
    assert text == "user: the cat sat on the mat\nassistant: "
    assert tokenizer.decode(row.chosen, skip_special_tokens=True) == "yes"


def test_use_chat_modes(tokenizer, chat_tokenizer):
    assert use_chat(chat_tokenizer, "auto", conversational=True)
    assert not use_chat(chat_tokenizer, "auto", conversational=False)
    assert not use_chat(chat_tokenizer, "off", conversational=True)
    assert use_chat(chat_tokenizer, "on", conversational=False)
    assert not use_chat(tokenizer, "auto", conversational=True)
    with pytest.raises(DataError, match="no chat template"):
        use_chat(tokenizer, "on", conversational=True)


def test_sft_rows_have_no_rejected(tokenizer):
    (row,), _ = one(tokenizer, "the cat", " yes", "")
    assert row.rejected == [] and row.chosen[-1] == tokenizer.eos_token_id


# --------------------------------------------------------------------------- truncation


def test_prompt_keeps_its_end_and_bos(tokenizer):
    prompt = "the cat sat on the mat under the red rug"
    (full,), _ = one(tokenizer, prompt, " yes", " no")
    assert len(full.prompt) > 6
    (row,), audit = one(tokenizer, prompt, " yes", " no", max_prompt_length=6)
    assert row.prompt == [tokenizer.bos_token_id, *full.prompt[-5:]]
    assert row.chosen == full.chosen and row.rejected == full.rejected
    assert audit.prompts_truncated == 1
    assert audit.tokens_lost == len(full.prompt) - 6
    assert audit.completions_truncated == 0 and audit.dropped == 0


def test_completion_keeps_its_start(tokenizer):
    prompt, chosen, rejected = "the cat", " yes please thanks yes please thanks", " no"
    (full,), _ = one(tokenizer, prompt, chosen, rejected)
    room = 3
    max_length = len(full.prompt) + room
    assert len(full.chosen) > room >= len(full.rejected)
    (row,), audit = one(tokenizer, prompt, chosen, rejected, max_length=max_length)
    assert row.prompt == full.prompt
    assert row.chosen == full.chosen[:room]
    assert row.rejected == full.rejected  # fits: untouched, keeps its EOS
    assert audit.completions_truncated == 1
    assert audit.tokens_lost == len(full.chosen) - room
    assert audit.prompts_truncated == 0 and audit.dropped == 0


def test_rows_without_room_for_a_completion_are_dropped_and_counted(tokenizer):
    long_prompt = "the cat sat on the mat under the red rug " * 3
    records = [
        PreferenceRecord(long_prompt, " yes", " no", "f:1"),
        PreferenceRecord("the cat", " yes", " no", "f:2"),
    ]
    full, _ = tokenize_records(tokenizer, records, chat=False, max_length=512)
    max_length = len(full[1].prompt) + 4
    assert len(full[0].prompt) >= max_length
    rows, audit = tokenize_records(tokenizer, records, chat=False, max_length=max_length)
    assert [r.source for r in rows] == ["f:2"]
    assert audit.rows == 2 and audit.dropped == 1
    assert audit.tokens_lost == len(full[0].prompt) + len(full[0].chosen) + len(full[0].rejected)
    assert all(len(r.chosen) >= 1 and len(r.rejected) >= 1 for r in rows)
    assert "1 rows dropped" in audit.summary()
    assert audit.as_dict()["dropped"] == 1
