"""The training loop end to end: invariants, equivalences, learning, the run directory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.config import TrainConfig, load_config
from tether.data.batching import collate
from tether.data.records import load_preferences
from tether.data.tokenization import tokenize_records
from tether.model.loading import load_model, load_tokenizer
from tether.model.tiny import tiny_llama
from tether.training.loop import sft, train

REQUIRED_METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                    "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm", "lr",
                    "tokens_per_s"]


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_batch8_equals_batch4_times_accumulation2(llama_dir, pairs_file, tmp_path):
    lr = 1e-2
    # reference=precomputed (the default) also checks that each micro-batch looks up its own
    # rows' reference log-probs
    common = {"model": str(llama_dir), "data": str(pairs_file), "max_steps": 1, "lr": lr,
              "group_by_length": True, "reference": "precomputed"}
    run8 = train(train_config(tmp_path / "b8", batch_size=8, grad_accum=1, **common))
    run4x2 = train(train_config(tmp_path / "b4x2", batch_size=4, grad_accum=2, **common))
    w8, w4x2 = weights(run8), weights(run4x2)
    # Adam's first step is blind to a uniform gradient scale, so check the gradient itself:
    # its norm (before clipping) and the loss must match too.
    (m8,), (m4x2,) = read_metrics(run8), read_metrics(run4x2)
    for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen"):
        assert m4x2[key] == pytest.approx(m8[key], rel=1e-5, abs=1e-7), key
    w4 = weights(train(train_config(tmp_path / "b4", batch_size=4, grad_accum=1, **common)))
    init = load_file(str(llama_dir / "model.safetensors"))
    assert w8.keys() == w4x2.keys() == init.keys()
    # Adam's first step moves every weight with a gradient by about lr; a different gradient
    # (here: half the rows, batch 4 alone) shows up at that scale, float noise far below it.
    moved = max((w8[k] - init[k]).abs().max().item() for k in init)
    assert moved > 0.5 * lr
    for k in init:
        torch.testing.assert_close(w4x2[k], w8[k], rtol=0, atol=lr * 1e-2, msg=k)
    assert max((w4[k] - w8[k]).abs().max().item() for k in init) > 0.5 * lr


@pytest.mark.parametrize("length_normalize", [False, True])
def test_first_step_is_log2_with_zero_rewards(llama_dir, pairs_file, tmp_path, length_normalize):
    # The first step's metrics come from the forward pass before the optimizer moves the
    # policy, so policy == reference there: h = 0, loss = -log sigmoid(0) = log 2.
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file),
                             max_steps=2, lr=1e-2, batch_size=8,
                             length_normalize=length_normalize))
    first, second = read_metrics(run)[:2]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
    assert second["loss"] < math.log(2) - 1e-3  # and the step did move the policy


def test_overfits_a_handful_of_pairs(llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "few.jsonl", make_pairs(4, seed=1))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(data), batch_size=4,
                             max_steps=12, lr=1e-2, scheduler="constant"))
    m = read_metrics(run)
    assert [r["step"] for r in m] == list(range(1, 13))
    assert m[-1]["rewards/accuracies"] == 1.0
    margins = [r["rewards/margins"] for r in m]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)
    assert margins[-1] > margins[len(margins) // 2] > margins[1] > 0
    assert m[-1]["loss"] < 0.5 * m[0]["loss"]
    for r in m:
        assert set(REQUIRED_METRICS) <= r.keys()
        assert all(math.isfinite(r[k]) for k in REQUIRED_METRICS)


@pytest.mark.parametrize(
    ("kind", "factors"),
    [("linear", [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]), ("cosine", [1 / 3, 2 / 3, 1.0, 0.75, 0.25])],
)
def test_logged_lr_is_the_one_each_step_used(llama_dir, pairs_file, tmp_path, kind, factors):
    # warm-up 2 steps: (s+1)/3 for s = 0, 1; then decay over the remaining 3 steps:
    # linear 1 - p, cosine (1 + cos(pi p)) / 2, with p = (s - 2) / 3.
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file), lr=0.01,
                             max_steps=5, warmup_steps=2, scheduler=kind))
    lrs = [r["lr"] for r in read_metrics(run)]
    assert lrs == pytest.approx([0.01 * f for f in factors], rel=1e-6)


def test_run_directory(llama_dir, pairs_file, tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", make_pairs(4, seed=7))
    cfg = train_config(tmp_path, model=str(llama_dir), data=str(pairs_file), beta=0.2,
                       max_length=24, max_prompt_length=6, max_steps=3, eval_data=str(eval_file),
                       eval_every=2)
    run = train(cfg)
    assert load_config(TrainConfig, run / "config.yaml") == cfg  # exactly what ran
    lines = read_metrics(run)
    # steps 1, 2, eval after 2, step 3, final eval
    assert [(r["step"], "eval/loss" in r) for r in lines] == [
        (1, False), (2, False), (2, True), (3, False), (3, True)
    ]
    for key in ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins"):
        assert math.isfinite(lines[-1][key])
    audit = json.loads((run / "data_audit.json").read_text())
    assert audit["train_data"]["kept"] == 32
    assert audit["train_truncation"]["rows"] == 32
    assert audit["train_truncation"]["prompts_truncated"] > 0  # max_prompt_length=6 bites
    assert audit["train_chat_template"] is False
    files = {p.name for p in (run / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # never a pickle


def test_sft_learns_the_completions(llama_dir, tmp_path):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in make_pairs(4)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    run = sft(train_config(tmp_path, model=str(llama_dir), data=str(data), batch_size=4,
                           max_steps=8, lr=1e-2, scheduler="constant"))
    assert load_config(TrainConfig, run / "config.yaml").loss == "sft"
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert "rewards/chosen" not in read_metrics(run)[0]


def test_conversational_data_uses_the_chat_template(chat_tokenizer, tmp_path):
    model_dir = tmp_path / "chat-model"
    tiny_llama(chat_tokenizer, hidden=32, layers=2, heads=4, kv_heads=2).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
            for r in make_pairs(8)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    run = train(train_config(tmp_path, model=str(model_dir), data=str(data), max_steps=1))
    audit = json.loads((run / "data_audit.json").read_text())
    assert audit["train_chat_template"] is True
    assert audit["train_data"]["format"] == "conversational"
    assert read_metrics(run)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    reloaded = load_tokenizer(str(run / "model"))
    assert reloaded.chat_template == chat_tokenizer.chat_template


RELOAD = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    batch = json.load(sys.stdin)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
    ids, attn, comp = (torch.tensor(batch[k]) for k in ("ids", "attn", "comp"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
    lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    sums = (lp * comp[:, 1:]).sum(1)
    assert not any(m == "tether" or m.startswith("tether.") for m in sys.modules)
    print(json.dumps(sums.tolist()))
""")


@pytest.mark.slow
def test_saved_model_reloads_with_plain_transformers(llama_dir, pairs_file, tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", make_pairs(5, seed=9))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file),
                             eval_data=str(eval_file), max_steps=3, lr=1e-2, eval_batch_size=5))
    # Token ids exactly as tether built them; the child process scores them without tether.
    tok = load_tokenizer(str(run / "model"))
    records, _ = load_preferences(str(eval_file))
    rows, _ = tokenize_records(tok, records, chat=False, max_length=1024)
    b = collate(rows, range(len(rows)), tok.pad_token_id)
    payload = json.dumps({"ids": b.input_ids.tolist(), "attn": b.attention_mask.tolist(),
                          "comp": b.completion_mask.tolist()})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", RELOAD, str(run / "model")], input=payload,
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    plain = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    n = len(rows)
    # The final evaluation ran on the trained policy in memory: the saved model is that model.
    final = read_metrics(run)[-1]
    assert final["eval/logps/chosen"] == pytest.approx(plain[:n].mean().item(), rel=1e-5)
    assert final["eval/logps/rejected"] == pytest.approx(plain[n:].mean().item(), rel=1e-5)
    # ... and it is not the untrained one.
    from tether.model.logprobs import sequence_logps

    with torch.no_grad():
        before, _ = sequence_logps(load_model(str(llama_dir)), b.input_ids, b.attention_mask,
                                   b.completion_mask)
    assert (before - plain).abs().max() > 1e-2


@pytest.mark.parametrize("reference", ["precomputed", "copy"])
def test_reference_model_other_than_the_start(llama_dir, gpt2_dir, pairs_file, tmp_path,
                                               reference):
    """reference_model=X anchors to X, not to the policy's start: with the GPT-2 as reference
    the first step is no longer log 2, and precomputed agrees with a frozen copy of X."""
    runs = {}
    for kind in dict.fromkeys([reference, "copy"]):
        runs[kind] = read_metrics(train(train_config(
            tmp_path / kind, model=str(llama_dir), data=str(pairs_file), max_steps=1,
            batch_size=8, reference=kind, reference_model=str(gpt2_dir))))[0]
    first = runs[reference]
    assert abs(first["loss"] - math.log(2)) > 1e-3
    assert abs(first["rewards/chosen"]) > 1e-3
    assert first["loss"] == pytest.approx(runs["copy"]["loss"], abs=1e-5)


def test_eval_every_logs_each_evaluation_once(llama_dir, pairs_file, tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", make_pairs(4, seed=9))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file),
                             eval_data=str(eval_file), max_steps=4, eval_every=2))
    eval_steps = [r["step"] for r in read_metrics(run) if "eval/loss" in r]
    assert eval_steps == [2, 4]  # the last step's evaluation is not logged a second time
    train_rows = [r for r in read_metrics(run) if "loss" in r]
    assert all(r["tokens_per_s"] > 0 for r in train_rows)


def test_sft_progress_bar_shows_no_accuracy(llama_dir, tmp_path, capsys):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in make_pairs(4)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    sft(train_config(tmp_path, model=str(llama_dir), data=str(data), max_steps=2,
                     progress=True))
    err = capsys.readouterr().err
    assert "loss=" in err and "acc" not in err  # SFT has no reward accuracy to show
