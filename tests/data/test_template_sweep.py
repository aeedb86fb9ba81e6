"""Every released chat template in llama.cpp's collection trains or is refused with a reason.

Each template renders a conversation (a system message, a question, an answer) through tether's
tokenization with a byte-level tokenizer standing in (Qwen 3's: lossless, so the round-trip
invariant is exact). A template that needs tools is given one; one that refuses a system
message is tried without it. The outcome must be rows that pass the round-trip check inside
``tokenize_records``, or a one-line ``DataError`` saying why: never a silent wrong boundary and
never a traceback from inside the template.
"""

from __future__ import annotations

import copy

from real_tokenizers import all_templates

from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.errors import DataError

pytest_plugins = ["real_tokenizers"]  # the real, real_dirs fixtures

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def _rows(system: bool) -> list[PreferenceRecord]:
    prompt = ([{"role": "system", "content": "You are brief."}] if system else []) + [
        {"role": "user", "content": "What is 2 + 2?"}]
    return [PreferenceRecord(prompt, [{"role": "assistant", "content": "4."}],
                             [{"role": "assistant", "content": "Five, I think."}], "sweep:1")]


def _outcome(tok) -> str:
    """'trains' or the refusal's reason, trying the renderings a user would try next."""
    reasons = []
    for system in (True, False):
        for tools in (None, TOOLS):
            recs = _rows(system)
            if tools:
                recs = [PreferenceRecord(r.prompt, r.chosen, r.rejected, r.source, tools=tools)
                        for r in recs]
            try:
                rows, _ = tokenize_records(tok, recs, chat=True, max_length=4096)
            except DataError as e:
                reasons.append(str(e))
                continue
            assert rows and rows[0].chosen[-1] in _ends(tok), "answer does not end the turn"
            return "trains"
    assert all("\n" not in r and r.startswith("sweep:1: ") for r in reasons), reasons
    return reasons[0]


def _ends(tok) -> set[int]:
    return {tok.eos_token_id, *(tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens)}


def test_every_released_template_trains_or_is_refused_with_a_reason(real):
    base = real("qwen3")
    outcomes = {}
    for name, text in all_templates().items():
        tok = copy.copy(base)
        tok.chat_template = text
        outcomes[name] = _outcome(tok)
    trains = [n for n, o in outcomes.items() if o == "trains"]
    refused = {n: o for n, o in outcomes.items() if o != "trains"}
    print(f"{len(trains)} of {len(outcomes)} templates train; refused: {refused}")
    assert len(outcomes) >= 60
    assert len(trains) >= 60, refused  # 65 of 70 with this stand-in tokenizer (no BOS token)
