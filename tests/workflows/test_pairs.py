"""tether pairs: convert, sample (tiny model + rule judge), rewrite (a real HTTP server)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import make_pairs, write_jsonl
from tether.config import build_config
from tether.errors import ConfigError, DataError
from tether.eval.rules import shorter
from tether.model.tiny import tiny_llama
from tether.workflows.pairs import PairsConfig, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from eval_chat_server import ChatServer, Reply, completion

SHARED = Path(os.environ.get("TETHER_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared"
                             / "data")) / "instruction-data-with-preference.json"


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_convert_drops_identical_and_duplicate_rows_with_provenance(tmp_path):
    rows = make_pairs(6)
    rows += [rows[0], {"prompt": "p", "chosen": "same", "rejected": "same"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    stats = run(build_config(PairsConfig, {"data": str(src), "output": str(tmp_path / "o.jsonl")}))
    assert stats == {"read": 8, "identical_dropped": 1, "duplicates_dropped": 1, "written": 6}
    out = _read(tmp_path / "o.jsonl")
    assert [r["prompt"] for r in out] == [r["prompt"] for r in rows[:6]]
    assert out[0]["source"].endswith("in.jsonl:1") and out[0]["provenance"] == "convert"


@pytest.mark.skipif(not SHARED.exists(), reason="shared instruction data not present")
def test_convert_reads_the_instruction_dataset(tmp_path):
    stats = run(build_config(PairsConfig, {"data": str(SHARED), "prompt_template": "alpaca",
                                           "output": str(tmp_path / "o.jsonl")}))
    assert stats["read"] == 1100 and stats["identical_dropped"] == 6
    first = _read(tmp_path / "o.jsonl")[0]
    assert first["prompt"].startswith("Below is an instruction") and "### Response:" in first["prompt"]


def test_bad_output_keeps_the_previous_file(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("precious\n")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": 3, "rejected": "x"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'chosen' must be a string"):
        run(build_config(PairsConfig, {"data": str(bad), "output": str(out)}))
    assert out.read_text() == "precious\n"


def _sample_cfg(tmp_path, llama_dir, prompts, **kw):
    base = {"mode": "sample", "data": str(prompts), "model": str(llama_dir), "num_answers": 4,
            "max_new_tokens": 8, "judge": "rule", "judge_rule": "tether.eval.rules:shorter",
            "output": str(tmp_path / "sampled.jsonl"), "seed": 3}
    return build_config(PairsConfig, {**base, **kw})


def test_sample_ranks_answers_with_the_judge(tmp_path, llama_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in
                                                       make_pairs(6, seed=5)])
    stats = run(_sample_cfg(tmp_path, llama_dir, prompts))
    rows = _read(tmp_path / "sampled.jsonl")
    assert stats["written"] == len(rows) and stats["prompts"] == 6
    assert len(rows) + stats["no_difference"] == 6
    for r in rows:  # every pair agrees with the judge, and carries provenance
        assert shorter(r["prompt"], r["chosen"], r["rejected"], None) == "A"
        assert r["provenance"] == "sample" and r["judge"] == "rule:tether.eval.rules:shorter"
        assert r["scores"]["chosen"] > r["scores"]["rejected"]
    first = (tmp_path / "sampled.jsonl").read_text()
    run(_sample_cfg(tmp_path, llama_dir, prompts))  # seeded: the same pairs again
    assert (tmp_path / "sampled.jsonl").read_text() == first
    run(_sample_cfg(tmp_path, llama_dir, prompts, pairing="all"))
    every = _read(tmp_path / "sampled.jsonl")
    assert len(every) >= len(rows)
    assert all(shorter(r["prompt"], r["chosen"], r["rejected"], None) == "A" for r in every)


def test_sample_writes_one_format_per_file(tmp_path, chat_tokenizer):
    """Conversational prompts give conversational rows throughout (TRL's apply_chat_template
    raised on rows mixing message lists and strings), even with a plain prompt among them."""
    model_dir = tmp_path / "chat"
    tiny_llama(chat_tokenizer, hidden=32, layers=1, heads=2, kv_heads=1).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    rows_in = [{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in make_pairs(5)]
    rows_in.append({"prompt": "the cat sat ?"})
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows_in)
    run(_sample_cfg(tmp_path, model_dir, prompts, pairing="all", temperature=1.5))
    rows = _read(tmp_path / "sampled.jsonl")
    assert rows
    for r in rows:
        assert all(isinstance(r[k], list) for k in ("prompt", "chosen", "rejected"))
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        for side in ("chosen", "rejected"):  # renders as TRL would render it
            chat_tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=False)


def test_sample_cuts_prompts_to_the_context_window(tmp_path, tokenizer):
    from tether.model.tiny import tiny_gpt2

    model_dir = tmp_path / "gpt2"  # 24 learned positions: a longer prompt would index past them
    tiny_gpt2(tokenizer, hidden=32, layers=1, heads=2, max_positions=24).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "the cat sat on the mat " * 6 + "?"}, {"prompt": "the dog ?"}])
    stats = run(_sample_cfg(tmp_path, model_dir, prompts, temperature=1.5))
    assert stats["prompts"] == 2 and stats["prompts_truncated"] == 1


def test_sample_config_errors_are_reported_together():
    with pytest.raises(ConfigError) as e:
        build_config(PairsConfig, {"mode": "sample", "data": "d.jsonl", "num_answers": 1,
                                   "temperature": 0, "judge": "rule"})
    msg = str(e.value)
    for part in ("model: required", "num_answers: must be >= 2", "temperature: must be > 0",
                 "judge_rule: required"):
        assert part in msg


def test_rewrite_against_a_real_server(tmp_path):
    def reply(body, n):
        text = body["messages"][0]["content"]
        if "Answer:\nThe door is 4 m wide." not in text:
            return Reply(500, {"error": "unexpected"})
        return Reply(body=completion("Polite, correct answer." if "polite" in text
                                     else "Whatever, figure it out."))

    data = write_jsonl(tmp_path / "answers.jsonl",
                       [{"prompt": "How wide is the door?", "answer": "The door is 4 m wide."}])
    with ChatServer(reply) as server:
        stats = run(build_config(PairsConfig, {
            "mode": "rewrite", "data": str(data), "judge": "openai", "judge_url": server.url,
            "judge_model": "big", "output": str(tmp_path / "rw.jsonl"), "judge_retries": 0}))
        assert server.calls == 2
    assert stats["written"] == 1
    (row,) = _read(tmp_path / "rw.jsonl")
    assert row["chosen"] == "Polite, correct answer." and row["rejected"].startswith("Whatever")
    assert row["original"] == "The door is 4 m wide." and row["provenance"] == "rewrite"
