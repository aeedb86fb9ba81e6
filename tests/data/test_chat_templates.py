"""Chat templates beyond plain turns, on released templates (issue 19, items 2, 3): template
errors, template kwargs and reasoning (Qwen 3, Gemma 4, gpt-oss), tools and tool calls.

Each test tokenizes rows the way a run does and checks the stated policy on the released
template's own text: what belongs to the prompt (generation starts from it, never scored), what
the completion is (scored), and that prompt + completion decode to the rendered conversation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from real_tokenizers import template_text

from tether.data.chat import render_pair
from tether.data.records import PreferenceRecord, load_preferences
from tether.data.tokenization import prompt_ids, tokenize_records
from tether.errors import DataError
from tether.model.loading import load_tokenizer

pytest_plugins = ["real_tokenizers"]  # the real, real_dirs fixtures

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def decode(tok: Any, ids: list[int]) -> str:
    return str(tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def say(text: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text, **extra}]


def call(city: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def one(tok: Any, rec: PreferenceRecord, chat: Any = True) -> Any:
    (row,), audit = tokenize_records(tok, [rec], chat=chat, max_length=4096)
    assert audit.retokenized == 0
    return row


def with_template(real_dirs: Any, family: str, template: str) -> Any:
    tok = load_tokenizer(str(real_dirs[family]))  # a fresh copy: the session's stays as released
    tok.chat_template = template_text(template)
    return tok


# --------------------------------------------------------------------------- template errors


def test_gemma2_refusing_a_system_message_is_one_line_naming_the_row(real_dirs):
    tok = with_template(real_dirs, "gemma4-it", "google-gemma-2-2b-it.jinja")
    prompt = [{"role": "system", "content": "Be brief."}, *QUESTION]
    with pytest.raises(DataError) as e:
        tokenize_records(tok, [PreferenceRecord(prompt, say("4"), say("5"), "rows.jsonl:3")],
                         chat=True, max_length=256)
    assert str(e.value) == (
        "rows.jsonl:3: the chat template refused this conversation: System role not supported")
    with pytest.raises(DataError, match="System role not supported"):
        prompt_ids(tok, prompt, chat=True)  # eval and pairs render prompts the same way


def test_llama31_refusing_two_tool_calls_is_one_line_naming_the_row(real):
    tok = real("llama3.1-instruct")
    rec = PreferenceRecord(QUESTION, say("", tool_calls=[call("Paris"), call("Lyon")]),
                           say("4"), "rows.jsonl:9", WEATHER)
    with pytest.raises(DataError, match=r"^rows\.jsonl:9: the chat template refused this "
                       r"conversation: This model only supports single tool-calls at once!$"):
        tokenize_records(tok, [rec], chat=True, max_length=512)


# --------------------------------------------------------------------------- reasoning


def test_qwen3_thinking_block_is_scored_unless_enable_thinking_is_false(real):
    tok = real("qwen3")
    rec = PreferenceRecord(QUESTION, say("4"), say("5"), "rows.jsonl:1")
    # Default: the generation prompt stops at 'assistant\n', so the template's empty
    # '<think>\n\n</think>\n\n' is the model's own output, scored with the answer.
    row = one(tok, rec)
    assert decode(tok, row.prompt).endswith("<|im_start|>assistant\n")
    assert decode(tok, row.chosen) == "<think>\n\n</think>\n\n4<|im_end|>"
    # enable_thinking=false: the template writes the empty block into the generation prompt,
    # so it belongs to the prompt, and the completion is the answer alone.
    off = {"enable_thinking": False}
    row = one(tok, rec, off)
    assert decode(tok, row.prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert decode(tok, row.chosen) == "4<|im_end|>"
    assert row.prompt == prompt_ids(tok, QUESTION, off) == tok.apply_chat_template(
        QUESTION, add_generation_prompt=True, enable_thinking=False, return_dict=False)


def test_qwen3_reasoning_content_is_scored_and_pairs_may_differ_in_it(real):
    tok = real("qwen3")
    rec = PreferenceRecord(QUESTION, say("4", reasoning_content="2 + 2 = 4."),
                           say("4", reasoning_content="2 + 2 = 5, no, 4."), "rows.jsonl:1")
    row = one(tok, rec)
    assert decode(tok, row.chosen) == "<think>\n2 + 2 = 4.\n</think>\n\n4<|im_end|>"
    assert decode(tok, row.rejected) == "<think>\n2 + 2 = 5, no, 4.\n</think>\n\n4<|im_end|>"


def test_gemma4_opened_thought_channel_belongs_to_the_prompt(real):
    # Gemma 4's generation prompt opens an empty thought channel ('<|channel>thought\n
    # <channel|>') that its rendering of an answered turn leaves out. Policy: the block is the
    # prompt's (generation starts from it), the answered turn's text continues it.
    tok = real("gemma4-it")
    history = [*QUESTION, *say("4"), {"role": "user", "content": "And 3 + 3?"}]
    row = one(tok, PreferenceRecord(history, say("6"), say("7"), "rows.jsonl:2"))
    assert decode(tok, row.prompt).endswith(
        "<|turn>user\nAnd 3 + 3?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    assert row.prompt == tok.apply_chat_template(history, add_generation_prompt=True,
                                                 return_dict=False)
    assert decode(tok, row.chosen) == "6<turn|>\n<eos>"
    answered = tok.apply_chat_template([*history, *say("6")], tokenize=False)
    assert answered.endswith("<|turn>model\n6<turn|>\n")  # what the template itself writes


def test_gpt_oss_scores_the_analysis_channel_only_when_the_answer_has_thinking(real_dirs):
    # gpt-oss (harmony): the generation prompt ends at '<|start|>assistant'; the final turn's
    # 'thinking' is rendered as an analysis message before the final one, so it is scored;
    # an earlier turn's thinking is dropped from the prompt, as at inference. (Text level: the
    # o200k tokenizer is not in the fixture, Qwen 3's stands in for it.)
    tok = with_template(real_dirs, "qwen3", "openai-gpt-oss-120b.jinja")
    history = [*QUESTION, *say("4", thinking="Add them."), {"role": "user", "content": "3 + 3?"}]
    ptext, full = render_pair(tok, history, say("6", thinking="Add them again."))
    assert ptext.endswith("<|start|>assistant") and "Add them." not in ptext
    assert full[len(ptext):] == ("<|channel|>analysis<|message|>Add them again.<|end|>"
                                 "<|start|>assistant<|channel|>final<|message|>6<|return|>")
    _, plain = render_pair(tok, history, say("6"))
    assert plain[len(ptext):] == "<|channel|>final<|message|>6<|return|>"
    high, _ = render_pair(tok, history, say("6"), template_kwargs={"reasoning_effort": "high"})
    assert "Reasoning: high" in high and "Reasoning: medium" in ptext


# --------------------------------------------------------------------------- tools


WEATHER_Q = [{"role": "user", "content": "Weather in Paris?"}]
CALLED = [*WEATHER_Q, *say("", tool_calls=[call("Paris")]),
          {"role": "tool", "content": "18 C, sunny", "name": "get_weather"}]


@pytest.mark.parametrize(("name", "wrap"), [
    ("qwen2.5-instruct", '<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{}"}}}}\n'
                         "</tool_call><|im_end|>"),
    ("llama3.1-instruct", '{{"name": "get_weather", "parameters": {{"city": "{}"}}}}<|eot_id|>'),
])
def test_pairs_that_differ_in_the_tool_call(real, name, wrap):
    tok = real(name)
    rec = PreferenceRecord(WEATHER_Q, say("", tool_calls=[call("Paris")]),
                           say("", tool_calls=[call("Lyon")]), "rows.jsonl:4", WEATHER)
    row = one(tok, rec)
    prompt = decode(tok, row.prompt)
    assert '"description": "Current weather in a city"' in prompt  # the schema reached it
    assert row.prompt == prompt_ids(tok, WEATHER_Q, True, WEATHER) == tok.apply_chat_template(
        WEATHER_Q, tools=WEATHER, add_generation_prompt=True, return_dict=False)
    assert (decode(tok, row.chosen), decode(tok, row.rejected)) == (
        wrap.format("Paris"), wrap.format("Lyon"))


@pytest.mark.parametrize(("name", "result", "end"), [
    ("qwen2.5-instruct", "<tool_response>\n18 C, sunny\n</tool_response>", "<|im_end|>"),
    ("llama3.1-instruct", 'ipython<|end_header_id|>\n\n"18 C, sunny"<|eot_id|>', "<|eot_id|>"),
])
def test_tool_results_in_the_prompt_and_an_answer_after_them(real, name, result, end):
    tok = real(name)
    row = one(tok, PreferenceRecord(CALLED, say("Sunny, 18 C."), say("It rains."), "r:1", WEATHER))
    prompt = decode(tok, row.prompt)
    assert result in prompt and '"city": "Paris"' in prompt
    assert decode(tok, row.chosen) == "Sunny, 18 C." + end
    full = tok.apply_chat_template([*CALLED, *say("Sunny, 18 C.")], tools=WEATHER, tokenize=False)
    assert full.startswith(decode(tok, row.prompt + row.chosen))  # the round trip, by text


def write_rows(tmp_path: Any, *rows: dict[str, Any]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_tools_column_and_string_arguments_load_as_trl_writes_them(tmp_path):
    chosen = say("", tool_calls=[{"type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    path = write_rows(tmp_path, {"prompt": WEATHER_Q, "chosen": chosen, "rejected": say("No."),
                                 "tools": json.dumps(WEATHER)})
    (rec,), _ = load_preferences(path)
    assert rec.tools == WEATHER
    assert rec.chosen == say("", tool_calls=[call("Paris")])  # arguments parsed to an object


@pytest.mark.parametrize(("bad", "message"), [
    ({"function": {"name": "get_weather", "arguments": "{city: Paris"}},
     r"rows\.jsonl:2: field 'chosen\[0\]\.tool_calls\[0\]\.function\.arguments' is not valid"),
    ({"function": {"arguments": {}}},
     r"rows\.jsonl:2: field 'chosen\[0\]\.tool_calls\[0\]\.function\.name' must be"),
    ("get_weather(Paris)", r"rows\.jsonl:2: field 'chosen\[0\]\.tool_calls\[0\]' must be"),
    ({"type": "retrieval", "function": {"name": "x"}},
     r"rows\.jsonl:2: field 'chosen\[0\]\.tool_calls\[0\]\.type' is 'retrieval'"),
])
def test_a_malformed_tool_call_names_the_row_and_field(tmp_path, bad, message):
    good = {"prompt": WEATHER_Q, "chosen": say("Sunny."), "rejected": say("No.")}
    path = write_rows(tmp_path, good, {**good, "chosen": say("", tool_calls=[bad])})
    with pytest.raises(DataError, match=r"^\S+/" + message):
        load_preferences(path)


def test_a_malformed_tools_column_names_the_row(tmp_path):
    good = {"prompt": WEATHER_Q, "chosen": say("Sunny."), "rejected": say("No.")}
    path = write_rows(tmp_path, {**good, "tools": [{"type": "function"}]})
    with pytest.raises(DataError, match=r"^\S+/rows\.jsonl:1: field 'tools\[0\]' must be a JSON"):
        load_preferences(path)


def test_cli_reports_a_template_refusal_in_one_line_with_exit_2(tmp_path, chat_tokenizer, capsys):
    # Before: a raw Jinja traceback from tokenization and exit 1.
    from tether.cli import main
    from tether.model.tiny import tiny_llama

    model = tmp_path / "gemma2-like"
    tiny_llama(chat_tokenizer, hidden=32, layers=1, heads=4, kv_heads=2).save_pretrained(model)
    chat_tokenizer.save_pretrained(model)
    saved = load_tokenizer(str(model))
    saved.chat_template = template_text("google-gemma-2-2b-it.jinja")
    saved.save_pretrained(model)
    good = {"prompt": QUESTION, "chosen": say("4"), "rejected": say("5")}
    system = [{"role": "system", "content": "Be brief."}, *QUESTION]
    rows = write_rows(tmp_path, good, {**good, "prompt": system})
    code = main(["train", f"model={model}", f"data={rows}", f"output_dir={tmp_path / 'run'}",
                 f"cache_dir={tmp_path / 'cache'}", "progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"tether train: error: {rows}:2: the chat template refused this "
                                "conversation: System role not supported"]


# --------------------------------------------------------------------------- multi-turn SFT


TALK = [{"role": "user", "content": "2 + 2?"}, *say("4."), {"role": "user", "content": "And 3 + 3?"},
        *say("6.")]


def sft_row(tmp_path: Any, tok: Any, messages: list[dict[str, Any]]) -> Any:
    from tether.data.records import load_completions

    (rec,) = load_completions(write_rows(tmp_path, {"messages": messages}))
    (row,), audit = tokenize_records(tok, [rec], chat=True, max_length=4096)
    return row, audit


def scored(tok: Any, row: Any) -> tuple[str, str]:
    """(the scored tokens, the unscored completion tokens), each decoded as one text."""
    assert row.chosen_mask is not None and len(row.chosen_mask) == len(row.chosen)
    pick = [[t for t, m in zip(row.chosen, row.chosen_mask, strict=True) if m == keep]
            for keep in (1, 0)]
    return decode(tok, pick[0]), decode(tok, pick[1])


@pytest.mark.parametrize(("name", "end"), [("qwen2.5-instruct", "<|im_end|>"),
                                           ("llama3.1-instruct", "<|eot_id|>")])
def test_multi_turn_sft_scores_every_assistant_turn(real, tmp_path, name, end):
    tok = real(name)
    row, audit = sft_row(tmp_path, tok, TALK)
    assert scored(tok, row)[0] == f"4.{end}6.{end}"  # both answers, not only the last
    assert "And 3 + 3?" in scored(tok, row)[1]  # the user turn between them is context
    full = tok.apply_chat_template(TALK, tokenize=False)
    assert decode(tok, row.prompt + row.chosen) == full[: full.rindex(end) + len(end)]
    assert audit.last_turn_only == 0


def test_generation_markers_give_the_assistant_mask(real_dirs, tmp_path):
    # LFM2.5 marks each assistant turn, '<|im_end|>\n' included, with {% generation %}; the
    # mask is transformers' assistant_masks. Without the markers, the rendering fallback finds
    # the same turns (without the newline after each end of turn).
    tok = with_template(real_dirs, "qwen3", "LFM2.5-8B-A1B.jinja")
    row, _ = sft_row(tmp_path, tok, TALK)
    assert scored(tok, row)[0] == "4.<|im_end|>\n6.<|im_end|>"
    tok.chat_template = tok.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", "")
    again, _ = sft_row(tmp_path, tok, TALK)
    assert scored(tok, again)[0] == "4.<|im_end|>6.<|im_end|>"
    assert again.prompt + again.chosen == row.prompt + row.chosen


def test_qwen3_multi_turn_falls_back_to_the_last_turn_and_counts_it(real, tmp_path):
    # Qwen 3 renders an answered turn with '<think>\n\n</think>\n\n' only after the last
    # question, so an earlier turn reads differently once a question follows it: no exact
    # span exists for it. The row is scored on its last turn, as before, and counted.
    tok = real("qwen3")
    row, audit = sft_row(tmp_path, tok, TALK)
    assert audit.last_turn_only == 1 and row.chosen_mask is None
    assert decode(tok, row.chosen) == "<think>\n\n</think>\n\n6.<|im_end|>"


def test_the_batch_scores_only_the_masked_tokens(real, tmp_path):
    from tether.data.batching import collate

    tok = real("qwen2.5-instruct")
    row, _ = sft_row(tmp_path, tok, TALK)
    batch = collate([row], [0], pad_id=tok.pad_token_id)
    assert batch.completion_mask[0].tolist() == [0] * len(row.prompt) + row.chosen_mask
    assert 0 < sum(row.chosen_mask) < len(row.chosen)


def test_tool_calls_without_a_chat_template_are_refused_not_dropped(real):
    # As 'role: content' lines a tool call would vanish, leaving chosen == rejected.
    tok = real("qwen2.5-instruct")
    rec = PreferenceRecord(WEATHER_Q, say("", tool_calls=[call("Paris")]),
                           say("", tool_calls=[call("Lyon")]), "rows.jsonl:5", WEATHER)
    with pytest.raises(DataError, match=r"^rows\.jsonl:5: tools and tool calls need a chat "):
        tokenize_records(tok, [rec], chat=False, max_length=512)
