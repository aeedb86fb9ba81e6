"""Checkpoints that are models: from_pretrained on checkpoints/step-N, resume= a checkpoint
path, keep_best (the best checkpoint survives pruning and becomes model/), dropout values kept
in every saved config.json, run.json and the model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.config import TrainConfig, build_config
from tether.errors import CheckpointError, ConfigError
from tether.model.tiny import tiny_llama
from tether.training.best import greater_is_better
from tether.training.loop import train


@pytest.fixture(scope="module")
def dropout_llama(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama whose config has its own dropout (0.1), as released models do."""
    d = tmp_path_factory.mktemp("llama_dropout")
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    model.config.attention_dropout = 0.1
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return (write_jsonl(root / "train.jsonl", make_pairs(32)),
            write_jsonl(root / "eval.jsonl", make_pairs(8, seed=1)))


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, dropout_llama, data) -> Path:
    """4 steps, a checkpoint and an eval at each, one kept plus the best by eval/logps/rejected
    (higher is better: DPO pushes the rejected log-probs down, so an early step wins)."""
    tmp = tmp_path_factory.mktemp("best")
    cfg = train_config(tmp, model=str(dropout_llama), data=str(data[0]), eval_data=str(data[1]),
                       max_steps=4, save_every=1, eval_every=1, save_total_limit=1,
                       keep_best="eval/logps/rejected")
    return train(cfg)


def test_every_kept_checkpoint_loads_with_from_pretrained(best_run):
    steps = sorted(p for p in (best_run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps
    for step in steps:
        model = AutoModelForCausalLM.from_pretrained(step)
        saved = load_file(str(step / "model.safetensors"))
        for name, tensor in model.state_dict().items():
            if name in saved:
                torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
        assert AutoTokenizer.from_pretrained(step).eos_token_id is not None
        assert (step / "generation_config.json").is_file()


def test_keep_best_keeps_the_best_checkpoint_and_writes_it_as_model(best_run):
    evals = {m["step"]: m["eval/logps/rejected"] for m in read_metrics(best_run)
             if "eval/logps/rejected" in m}
    assert sorted(evals) == [1, 2, 3, 4]
    best_step = max(evals, key=lambda s: evals[s])  # higher is better for a non-loss metric
    assert best_step != 4  # the test is only worth something when the best is not the last
    record = json.loads((best_run / "checkpoints" / "best.json").read_text())
    assert record["step"] == best_step and record["greater_is_better"] is True
    kept = {p.name for p in (best_run / "checkpoints").iterdir() if p.name.startswith("step-")}
    assert kept == {"step-4", f"step-{best_step}"}  # save_total_limit=1 plus the best
    model = load_file(str(best_run / "model" / "model.safetensors"))
    best = load_file(str(best_run / "checkpoints" / f"step-{best_step}" / "model.safetensors"))
    last = load_file(str(best_run / "checkpoints" / "step-4" / "model.safetensors"))
    assert all(torch.equal(model[k], best[k]) for k in model)
    assert not all(torch.equal(model[k], last[k]) for k in model)


def test_saved_configs_keep_the_model_dropout(best_run, dropout_llama):
    # load_model zeroes dropout in memory (DPO's log-ratios); what is saved keeps 0.1
    for d in [best_run / "model", *(best_run / "checkpoints").glob("step-*")]:
        assert json.loads((d / "config.json").read_text())["attention_dropout"] == 0.1
    from tether.model.loading import load_model

    assert load_model(str(dropout_llama)).config.attention_dropout == 0.0


def test_run_json_and_the_model_card(best_run, data):
    run = json.loads((best_run / "run.json").read_text())
    assert run["started"] <= run["finished"]
    assert run["versions"]["torch"] == torch.__version__ and run["host"]
    assert run["command"]
    summary = run["summary"]
    assert summary["completed"] and summary["steps"] == 4
    assert summary["samples_per_s"] > 0 and summary["tokens_per_s"] > 0
    assert summary["peak_memory_gb"] > 0 and summary["model"] == str(best_run / "model")
    card = (best_run / "model" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "transformers" and meta["tags"][:2] == ["tether", "dpo"]
    assert "base_model" not in meta  # a local directory is no hub id
    for f in data:
        assert hashlib.sha256(f.read_bytes()).hexdigest() in body
    assert '"loss": "dpo"' in body and '"beta": 0.1' in body
    assert f"torch {torch.__version__}" in body and "<!-- tether:eval -->" in body


def test_resume_from_a_checkpoint_path_of_another_run(tmp_path, llama_dir, data):
    common = {"model": str(llama_dir), "data": str(data[0]), "max_steps": 4}
    first = train(train_config(tmp_path / "a", save_every=1, keep_checkpoints=4, **common))
    second = train(train_config(tmp_path / "b", resume=str(first / "checkpoints" / "step-2"),
                                **common))
    a = load_file(str(first / "model" / "model.safetensors"))
    b = load_file(str(second / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # as if it had never stopped
    assert [m["step"] for m in read_metrics(second)] == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match=r"resume: .*not a checkpoint"):
        train(train_config(tmp_path / "c", resume=str(tmp_path), **common))


def test_keep_best_rules_and_config_problems(tmp_path):
    assert not greater_is_better("eval/loss") and not greater_is_better("eval/sft_loss")
    assert greater_is_better("eval/rewards/accuracies")
    base = {"model": "m", "data": "d"}
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, {**base, "keep_best": "loss", "save_every": 3, "eval_every": 2,
                                   "eval_data": "e"})
    assert "not an eval metric" in str(e.value) and "multiple of eval_every" in str(e.value)
    with pytest.raises(ConfigError, match="keep_best: needs eval_data"):
        build_config(TrainConfig, {**base, "keep_best": "eval/loss"})
    with pytest.raises(ConfigError, match="save_total_limit: 3 is an alias"):
        build_config(TrainConfig, {**base, "save_total_limit": 3, "keep_checkpoints": 4})
    assert build_config(TrainConfig, {**base, "save_total_limit": 3}).checkpoints_kept == 3
    cfg = build_config(TrainConfig, {**base, "resume": "runs/x/checkpoints/step-2"})
    assert cfg.resume == "runs/x/checkpoints/step-2"
    assert build_config(TrainConfig, {**base, "resume": "auto"}).resume == "auto"
    assert build_config(TrainConfig, {**base, "resume": True}).resume is True


def test_eval_takes_a_checkpoint_and_rewrites_the_card(best_run, data, tmp_path):
    from tether.eval.config import EvalConfig
    from tether.eval.evaluate import evaluate

    base = {"data": str(data[1]), "judge": "rule", "judge_rule": "tether.eval.rules:shorter",
            "max_new_tokens": 4, "batch_size": 4, "progress": False,
            "cache_dir": str(tmp_path / "cache")}
    step = best_run / "checkpoints" / "step-4"
    results = evaluate(build_config(EvalConfig, {**base, "model": str(step)}))
    assert results["models"]["policy"] == str(step)
    assert results["models"]["reference"] == yaml.safe_load(
        (best_run / "config.yaml").read_text())["model"]  # the run's starting model
    assert (best_run / "eval" / "step-4" / "results.json").is_file()
    card = best_run / "model" / "README.md"
    assert "Not evaluated yet" in card.read_text()
    results = evaluate(build_config(EvalConfig, {**base, "model": str(best_run)}))
    text = card.read_text()
    assert "Not evaluated yet" not in text
    ci = results["ci95"]
    assert f"**{results['win_rate']:.3f}** (95% CI {ci[0]:.3f}–{ci[1]:.3f})" in text
    assert text.count("<!-- tether:eval -->") == 1


def test_lora_checkpoint_holds_the_adapter(tmp_path, dropout_llama, data):
    from peft import PeftModel

    run = train(train_config(tmp_path, model=str(dropout_llama), data=str(data[0]), lora=True,
                             max_steps=2, save_every=2, lr=1e-2, merge=True))
    step = run / "checkpoints" / "step-2"
    assert (step / "adapter_config.json").is_file()
    merged = json.loads((run / "model" / "merged" / "config.json").read_text())
    assert merged["attention_dropout"] == 0.1  # the merged model keeps the base's dropout
    base = AutoModelForCausalLM.from_pretrained(dropout_llama)
    model = PeftModel.from_pretrained(base, step)
    final = load_file(str(run / "model" / "adapter_model.safetensors"))
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert final and all(torch.equal(loaded[k], v) for k, v in final.items())
    card = yaml.safe_load((run / "model" / "README.md").read_text().split("---\n")[1])
    assert card["library_name"] == "peft" and "lora" in card["tags"]


def test_tether_cache_moves_the_default_cache_and_the_summary_is_printed(
        tmp_path, llama_dir, data, monkeypatch, capsys):
    from tether.io import DEFAULT_CACHE, cache_root

    moved = tmp_path / "moved-cache"
    monkeypatch.setenv("TETHER_CACHE", str(moved))
    assert cache_root(DEFAULT_CACHE) == moved
    assert cache_root(str(tmp_path / "mine")) == tmp_path / "mine"  # an explicit dir stays
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(data[0]), max_steps=1,
                             cache_dir=DEFAULT_CACHE, reference="precomputed"))
    assert any(p.is_file() for p in moved.rglob("*"))  # the reference log-probs went there
    assert yaml.safe_load((run / "config.yaml").read_text())["cache_dir"] == str(moved)
    out = capsys.readouterr().out
    summary = json.loads((run / "run.json").read_text())["summary"]
    assert (f"trained 1 steps in {summary['train_runtime_s']:.1f} s" in out
            and "samples/s" in out and f"model: {run / 'model'}" in out)


def test_tied_embeddings_checkpoint_equals_the_saved_model(tmp_path, gpt2_dir, data):
    # safetensors' save_model keeps one name of a tied pair (lm_head.weight); from_pretrained
    # ties the embedding back to it
    run = train(train_config(tmp_path, model=str(gpt2_dir), data=str(data[0]), max_steps=1,
                             save_every=1))
    assert AutoModelForCausalLM.from_pretrained(gpt2_dir).config.tie_word_embeddings
    from_checkpoint = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-1")
    from_model = AutoModelForCausalLM.from_pretrained(run / "model")
    a, b = from_checkpoint.state_dict(), from_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
