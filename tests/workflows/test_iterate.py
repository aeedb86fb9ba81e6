"""tether iterate: the rounds' bookkeeping on a tiny model (the demo task's test is in
tests/demo)."""

from __future__ import annotations

import json

from conftest import make_pairs, write_jsonl
from tether.config import build_config
from tether.workflows.iterate import IterateConfig, iterate


def test_two_rounds_write_pairs_runs_evals_and_a_plot(tmp_path, llama_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"]} for r in make_pairs(8)])
    held = write_jsonl(tmp_path / "h.jsonl", [{"prompt": r["prompt"]}
                                              for r in make_pairs(6, seed=9)])
    cfg = build_config(IterateConfig, {
        "model": str(llama_dir), "data": str(prompts), "eval_data": str(held),
        "output_dir": str(tmp_path / "it"), "rounds": 2, "reference_mode": "fixed",
        "judge": "rule", "judge_rule": "tether.eval.rules:shorter", "max_new_tokens": 6,
        "num_answers": 3, "train": {"lr": 1e-3, "batch_size": 2, "epochs": 1},
        "cache_dir": str(tmp_path / "c"), "progress": False, "device": "cpu"})
    history = iterate(cfg)
    assert [h["round"] for h in history] == [1, 2]
    out = tmp_path / "it"
    assert json.loads((out / "iterate.json").read_text()) == history
    assert (out / "winrate.png").stat().st_size > 1000
    for h in history:
        r = out / f"round-{h['round']}"
        assert (r / "model" / "model.safetensors").exists()
        assert (r / "eval" / "results.json").exists()
        assert h["pairs"] == len((r / "pairs.jsonl").read_text().splitlines())
        assert h["wins"] + h["ties"] + h["losses"] == h["n"]
    # round 2 started from round 1's model; with reference_mode=fixed it anchors to the start
    second = (out / "round-2" / "config.yaml").read_text()
    assert f"model: {out / 'round-1' / 'model'}" in second
    assert f"reference_model: {llama_dir}" in second
