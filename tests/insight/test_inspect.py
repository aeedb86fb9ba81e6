"""tether inspect on files with planted properties: each finding names the rows it found."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_jsonl
from tether.cli import main
from tether.data.batching import collate
from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.insight.inspect import InspectConfig, inspect_data, minhash, near_duplicates, similarity
from tether.model.loading import load_model
from tether.model.logprobs import sequence_logps


def _rows():
    rows = [{"prompt": f"question {w} about the cat ?", "chosen": "yes please thanks a lot",
             "rejected": "no"} for w in ("one", "two", "three", "four", "five", "six")]
    rows += [{"prompt": "why is the sky blue ?", "chosen": "no", "rejected": "it scatters light"},
             {"prompt": "Question ONE about the cat?", "chosen": "sure", "rejected": "nope"},
             {"prompt": "same answers here", "chosen": "a b c d e f", "rejected": "a b c d e f"},
             {"prompt": "near twins", "chosen": "the red cat sat on the big mat today",
              "rejected": "the red cat sat on the big mat today ."}]
    return rows


def test_findings_on_planted_rows(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", _rows())
    held = write_jsonl(tmp_path / "held.jsonl", [
        {"prompt": "why is the sky blue?", "chosen": "x", "rejected": "y"},
        {"prompt": "a fresh prompt", "chosen": "x", "rejected": "y"}])
    out = inspect_data(InspectConfig(data=str(data), eval_data=str(held),
                                     output_dir=str(tmp_path / "out")))
    f = {x["name"]: x for x in out["findings"]}
    # 9 usable pairs (one identical pair dropped), in words: chosen longer in the 6 cat rows,
    # shorter in "sky" (1 vs 3) and "near twins" (9 vs 10), equal in "ONE" (1 vs 1)
    assert out["pairs"] == 9 and out["rows"] == 10
    assert out["length_bias"]["chosen_longer"] == pytest.approx(6 / 9)
    assert out["length_bias"]["chosen_shorter"] == pytest.approx(2 / 9)
    assert f["length_bias"]["severity"] == "warn"
    assert f["identical_pairs"]["rows"] == [f"{data}:9"]
    assert f["duplicate_prompts"]["rows"] == [f"{data}:1 = {data}:8"]  # case and "?" ignored
    assert f["near_identical_answers"]["rows"] == [f"{data}:10"]
    assert f"{data}:7 (chosen)" in f["short_answers"]["rows"]
    assert f["train_eval_overlap"]["rows"] == [f"{held}:1 = {data}:7"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "length_bias" in report and "lc_win_rate" in report and f"{data}:9" in report
    assert (tmp_path / "out" / "plots" / "length_difference.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "inspect.json").read_text())["pairs"] == 9


def test_minhash_estimates_jaccard():
    a = " ".join(f"w{i}" for i in range(60))
    b = " ".join(f"w{i}" for i in range(30)) + " " + " ".join(f"v{i}" for i in range(30))
    # 3-shingles: 58 each, 28 shared -> Jaccard 28 / 88 = 0.32
    assert similarity(minhash(a, 256), minhash(b, 256)) == pytest.approx(28 / 88, abs=0.08)
    assert similarity(minhash(a), minhash(a)) == 1.0
    assert near_duplicates([a, a + " w60", b], 0.8) == [(0, 1)]


def test_model_preference_matches_direct_scoring(tmp_path, llama_dir, tokenizer):
    rows = _rows()
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = inspect_data(InspectConfig(data=str(data), model=str(llama_dir), device="cpu",
                                     strong_disagreement=0.01, output_dir=str(tmp_path / "o")))
    # the same margin by hand: per-token log-prob of chosen minus that of rejected
    keep = [r for r in rows if r["chosen"] != r["rejected"]]
    recs = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in keep]
    toks, _ = tokenize_records(tokenizer, recs, chat=False, max_length=1024)
    b = collate(toks, range(len(toks)), tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = sequence_logps(load_model(str(llama_dir)), b.input_ids,
                                      b.attention_mask, b.completion_mask)
    n = len(toks)
    margins = (sums[:n] / counts[:n] - sums[n:] / counts[n:]).tolist()
    assert out["model_margin"]["mean"] == pytest.approx(sum(margins) / n, rel=1e-4)
    f = {x["name"]: x for x in out["findings"]}["model_preference"]
    assert len(f["rows"]) == sum(m < -0.01 for m in margins)
    assert out["units"] == "tokens"


def test_cli_names_the_file_argument(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", _rows())
    assert main(["inspect", str(data), f"output_dir={tmp_path / 'r'}"]) == 0
    assert "length_bias" in capsys.readouterr().out
    assert main(["inspect", f"data={tmp_path / 'missing.jsonl'}"]) == 2
