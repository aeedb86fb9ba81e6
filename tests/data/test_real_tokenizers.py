"""Tokenization on released tokenizers and chat templates (issue 19), not ones written here.

Each family's tokenizer is built from llama.cpp's vocab-only GGUF of the released model with
the released chat template and special tokens (``tests/data/real_tokenizers.py``), and first shown
to reproduce llama.cpp's reference ids, which were made with the released tokenizer. Then, for
every row and family: decode(prompt ids + completion ids) is the tokenizer's reading of the
rendered prompt + completion text (exactly that text where decoding is lossless), the prompt
ids are what generation starts from (``prompt_ids``, which eval uses, and transformers' own
``apply_chat_template``), EOS and the end-of-turn token appear once, at the end, and BOS at
most once.
"""

from __future__ import annotations

from typing import Any

import pytest
from real_tokenizers import FAMILIES, reference_cases

from tether.data.records import PreferenceRecord
from tether.data.tokenization import prompt_ids, tokenize_records

pytest_plugins = ["real_tokenizers"]  # the real, real_dirs fixtures

CHAT = ["llama3.1-instruct", "qwen2.5-instruct", "qwen3", "phi3.5-mini-instruct"]
# Byte-level BPE and Gemma 4 decode any encoded text back to itself; the SentencePiece
# families mark word starts with '▁' and read '<s>Q' back as '<s> Q'.
LOSSLESS = {"llama3.1-instruct", "qwen2.5-instruct", "qwen3", "gpt2", "gemma4-it"}
# The template's end of turn where it is not the tokenizer's EOS.
END_OF_TURN = {"phi3.5-mini-instruct": "<|end|>"}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


PLAIN_ROWS = {
    "prompt-ends-in-space": ("Q: What is the capital of France?\nA: ", "Paris.", "Lyon, I think."),
    "prompt-ends-in-newline": ("Q: What is 2 + 2?\n", "4", "5, surely"),
    "answer-starts-with-space": ("Q: Name a colour.\nA:", " Blue.", " Seven."),
    "answer-starts-with-newline": ("Translate to French: good morning", "\nBonjour !", "\nGuten Morgen"),
    "unicode-emoji": ("Réponds avec un émoji 🙂 : ", "🎉 ça marche — 東京", "👎"),
    "code-indentation": ("def add(a, b):\n", "    return a + b\n", "\treturn a - b  # ünïcode\n"),
}
CHAT_ROWS = {
    "system": ([{"role": "system", "content": "Answer in one word."}, *user("Capital of France?")],
               "Paris.", "Lyon."),
    "multi-turn": ([*user("Capital of France?"), *answer("Paris."), *user("And of Japan?")],
                   "Tokyo.", "Kyoto."),
    "unicode-emoji": (user("Dis bonjour en japonais 🇯🇵"), "こんにちは 👋 — ça va ?", "Hello 🙂"),
    "code-indentation": (user("Write add() in Python."),
                         "```python\ndef add(a, b):\n    return a + b\n```", "def add(a,b): return a-b"),
    "answer-starts-with-space": (user("Capital of France?"), " Paris.", " Lyon."),
    "answer-starts-with-newline": (user("Capital of France?"), "\nParis.", "\n\nLyon."),
}


def decode(tok: Any, ids: list[int]) -> str:
    return str(tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def rendered(tok: Any, prompt: Any, completion: str, chat: bool) -> tuple[str, list[int]]:
    """The text a row stands for, and the tokenizer's own encoding of it: the template's
    conversation up to the answer's end of turn (and EOS where the template writes one after
    it), or BOS + prompt + completion + EOS."""
    if not chat:
        ids = [*tok(prompt + completion)["input_ids"], tok.eos_token_id]
        bos = tok.bos_token if ids[0] == tok.bos_token_id != tok.eos_token_id else ""
        return bos + prompt + completion + tok.eos_token, ids
    full = tok.apply_chat_template(prompt + answer(completion), tokenize=False)
    text = full[: full.rindex(tok.eos_token) + len(tok.eos_token)]
    return text, tok(text, add_special_tokens=False)["input_ids"]


def generation_ids(tok: Any, prompt: Any, chat: bool) -> list[int]:
    """What transformers feeds generate(): the template's generation prompt, or the text."""
    if chat:
        return list(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                            return_dict=False))
    return list(tok(prompt)["input_ids"])


def check_row(name: str, tok: Any, prompt: Any, chosen: str, rejected: str, chat: bool) -> None:
    rows, _ = tokenize_records(
        tok, [PreferenceRecord(prompt, answer(chosen) if chat else chosen,
                               answer(rejected) if chat else rejected, "rows.jsonl:3")],
        chat=chat, max_length=4096,
    )
    (row,) = rows
    assert row.prompt == prompt_ids(tok, prompt, chat) == generation_ids(tok, prompt, chat)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    end = tok.convert_tokens_to_ids(END_OF_TURN.get(name, tok.eos_token)) if chat else eos
    for completion, ids in ((chosen, row.chosen), (rejected, row.rejected)):
        text, text_ids = rendered(tok, prompt, completion, chat)
        got = decode(tok, row.prompt + ids)
        assert got == decode(tok, text_ids)
        if name in LOSSLESS:
            assert got == text
        assert ids[-1] == eos and ids.count(eos) == 1 and ids.count(end) == 1
        if not chat:
            assert eos not in row.prompt
        if bos is not None and bos != eos:
            assert (row.prompt + ids).count(bos) <= 1


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tokenizer_reproduces_the_released_tokenizers_ids(real, name):
    tok = real(name)
    cases = reference_cases(name)
    if name == "llama2-metaspace":
        # Metaspace marks a word start only where the text has none, so texts that start with
        # a space lose one '▁' against Llama 2's released normalizer ('llama2' has it).
        cases = [(t, ids) for t, ids in cases if not t.startswith(" ")]
    assert len(cases) >= 30
    for text, ids in cases:
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text


def test_released_special_tokens(real):
    llama = real("llama3.1-instruct")
    assert (llama.bos_token_id, llama.eos_token, llama.eos_token_id) == (128000, "<|eot_id|>", 128009)
    assert llama.convert_tokens_to_ids(["<|python_tag|>", "<|eom_id|>"]) == [128010, 128008]
    assert len(llama) == 128256 and llama("hi")["input_ids"][0] == 128000
    for name, size in (("qwen2.5-instruct", 151665), ("qwen3", 151669)):
        qwen = real(name)
        assert (qwen.eos_token, qwen.eos_token_id, qwen.bos_token_id) == ("<|im_end|>", 151645, None)
        assert qwen.pad_token_id == 151643 and len(qwen) == size
    assert real("qwen3")("<think>\n\n</think>", add_special_tokens=False)["input_ids"] == [
        151667, 271, 151668]
    phi = real("phi3.5-mini-instruct")
    assert (phi.eos_token_id, phi.convert_tokens_to_ids("<|end|>"), len(phi)) == (32000, 32007, 32064)
    llama2 = real("llama2")
    assert (llama2.bos_token_id, llama2.eos_token_id, len(llama2)) == (1, 2, 32000)
    assert (real("gpt2").eos_token_id, len(real("gpt2"))) == (50256, 50257)
    gemma = real("gemma4-it")
    assert gemma.convert_tokens_to_ids(["<|turn>", "<turn|>"]) == [105, 106]


@pytest.mark.parametrize("name", ["llama2", "llama2-metaspace", "phi3.5-mini-instruct"])
def test_sentencepiece_prompt_ending_in_a_space_trains_on_the_data_text(real, name):
    # The example: the prompt alone ends with the lone '▁' (id 29871); prompt+answer
    # tokenizes as '... A : ▁Paris .', so the boundary is re-tokenized, and "Paris." on its
    # own is '▁Paris .', which decoded after the prompt read "A:  Paris." (two spaces).
    tok = real(name)
    prompt = "Q: What is the capital of France?\nA: "
    rows, audit = tokenize_records(tok, [PreferenceRecord(prompt, "Paris.", "", "f:1")],
                                   chat=False, max_length=64)
    (row,) = rows
    assert row.prompt[-1] == 29871 and row.prompt == tok(prompt)["input_ids"]
    assert tok.convert_ids_to_tokens(row.chosen) == ["Par", "is", ".", tok.eos_token]
    assert decode(tok, row.prompt + row.chosen) == (
        f"<s> Q: What is the capital of France?\nA: Paris.{tok.eos_token}")
    assert audit.retokenized == 1


@pytest.mark.parametrize("row", sorted(PLAIN_ROWS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_plain_rows_round_trip(real, name, row):
    check_row(name, real(name), *PLAIN_ROWS[row], chat=False)


@pytest.mark.parametrize("row", sorted(CHAT_ROWS))
@pytest.mark.parametrize("name", CHAT)
def test_chat_rows_round_trip(real, name, row):
    check_row(name, real(name), *CHAT_ROWS[row], chat=True)


def test_llama31_template_writes_the_only_bos(real):
    # The template starts with <|begin_of_text|> and the tokenizer adds one to any text it
    # encodes with special tokens: encoding the rendered template that way would double it.
    tok = real("llama3.1-instruct")
    ids = prompt_ids(tok, user("hi"), chat=True)
    assert ids[:2] == [128000, 128006] and ids.count(128000) == 1
