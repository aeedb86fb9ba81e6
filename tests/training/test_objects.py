"""``tether.train`` with objects, as TRL users work (issue 15, item 1): an in-memory model and
tokenizer, a ``datasets.Dataset``, a PEFT ``LoraConfig``, callbacks and early stopping."""

from __future__ import annotations

import textwrap

import datasets
import pytest
import yaml
from peft import LoraConfig

import tether
from conftest import make_pairs, read_metrics
from tether.errors import ConfigError, DataError
from tether.model.tiny import tiny_llama
from tether.training.callbacks import EarlyStopping

QUIET = {"progress": False, "device": "cpu", "dtype": "float32"}


class Recorder:
    """A TRL-style callback: records every point it is called at."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_begin(self, info):
        self.events.append(("begin", info["total_steps"]))

    def on_log(self, step, metrics):
        self.events.append(("log", step, metrics["loss"]))

    def on_evaluate(self, step, metrics):
        self.events.append(("evaluate", step, metrics["eval/loss"]))

    def on_save(self, step, path):
        self.events.append(("save", step, path.name))

    def on_step_end(self, step):
        self.events.append(("step_end", step))


def test_a_trl_users_script_runs_with_only_the_migration_table_changes(tmp_path, tokenizer):
    # A DPOConfig YAML as a TRL user has it: TRL's names, unchanged.
    trl_yaml = textwrap.dedent(f"""\
        output_dir: {tmp_path / "run"}
        learning_rate: 1.0e-3
        per_device_train_batch_size: 4
        per_device_eval_batch_size: 8
        gradient_accumulation_steps: 1
        max_steps: 4
        warmup_ratio: 0.5
        lr_scheduler_type: linear
        logging_steps: 1
        eval_strategy: steps
        eval_steps: 2
        save_strategy: steps
        save_steps: 2
        save_total_limit: 1
        loss_type: sigmoid
        beta: 0.1
        max_length: 64
        precompute_ref_log_probs: true
        report_to: none
        seed: 0
        """)
    args = yaml.safe_load(trl_yaml)
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    train_ds = datasets.Dataset.from_list(make_pairs(16))
    eval_ds = datasets.Dataset.from_list(make_pairs(8, seed=1))
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    recorder = Recorder()
    # TRL: DPOTrainer(model, args=DPOConfig(**args), train_dataset=..., eval_dataset=...,
    #                 processing_class=tokenizer, peft_config=..., callbacks=[...]).train()
    run = tether.train({**args, "cache_dir": str(tmp_path / "cache"), **QUIET}, model=model,
                       tokenizer=tokenizer, train_dataset=train_ds, eval_dataset=eval_ds,
                       peft_config=peft_config, callbacks=[recorder])

    assert (run / "model" / "adapter_config.json").exists()  # LoRA: the adapter is the model
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == "<in-memory LlamaForCausalLM>"
    assert saved["tokenizer"].startswith("<in-memory ")
    assert saved["data"].startswith("<in-memory Dataset, 16 rows, sha256 ")
    assert saved["eval_data"].startswith("<in-memory Dataset, 8 rows, sha256 ")
    assert (saved["lora"], saved["lora_r"], saved["lora_alpha"]) == (True, 4, 8)
    assert saved["lora_target_modules"] == ["q_proj", "v_proj"]
    assert (saved["lr"], saved["loss"], saved["reference"], saved["warmup_ratio"]) == (
        1e-3, "dpo", "precomputed", 0.5)

    metrics = [m for m in read_metrics(run) if "loss" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    # warmup_ratio 0.5 of 4 steps = 2 warm-up steps: the first step runs at lr / 3
    assert metrics[0]["lr"] == pytest.approx(1e-3 / 3)
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "begin" and recorder.events[0] == ("begin", 4)
    assert [e[1] for e in recorder.events if e[0] == "step_end"] == [1, 2, 3, 4]
    assert [e[1] for e in recorder.events if e[0] == "log"] == [1, 2, 3, 4]
    # step 4 is both a scheduled evaluation and the last step: evaluated (and reported) once
    assert [e[1] for e in recorder.events if e[0] == "evaluate"] == [2, 4]
    saves = [e for e in recorder.events if e[0] == "save"]
    assert saves == [("save", 2, "step-2"), ("save", 4, "step-4"), ("save", 4, "model")]


def test_early_stopping_ends_the_run_and_saves_the_model(tmp_path, tokenizer):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    # min_delta so large that the second evaluation cannot improve on the first
    stopper = EarlyStopping("eval/loss", patience=1, min_delta=100.0)
    run = tether.train(
        {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
         "max_steps": 10, "eval_every": 1, "batch_size": 4, "lr": 1e-3, **QUIET},
        model=model, tokenizer=tokenizer, train_dataset=make_pairs(16),
        eval_dataset=make_pairs(4, seed=1), callbacks=[stopper])
    # evaluated at steps 1 (best) and 2 (no gain): the stop request ends step 3
    assert stopper.stopped_at == 3
    steps = [m["step"] for m in read_metrics(run) if "loss" in m]
    assert steps == [1, 2, 3]
    assert (run / "model" / "config.json").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"].startswith("<in-memory list, 16 rows, sha256 ")


@pytest.mark.parametrize("same", [True, False])
def test_ref_model_object_is_the_reference(tmp_path, tokenizer, same):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2, seed=0)
    ref = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2, seed=0 if same else 1)
    run = tether.train(
        {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
         "max_steps": 1, "batch_size": 4, **QUIET},
        model=model, ref_model=ref, tokenizer=tokenizer,
        train_dataset=datasets.DatasetDict({"train": datasets.Dataset.from_list(make_pairs(8))}))
    first = read_metrics(run)[0]
    # policy == reference at the first step: every implicit reward is exactly 0
    assert (first["rewards/chosen"] == 0.0) is same
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["reference_model"] == "<in-memory LlamaForCausalLM>"


def test_sft_takes_objects(tmp_path, tokenizer):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in make_pairs(8)]
    run = tether.sft({"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 4,
                      "learning_rate": 1e-3, **QUIET},
                     model=model, tokenizer=tokenizer, train_dataset=rows)
    assert yaml.safe_load((run / "config.yaml").read_text())["loss"] == "sft"
    assert read_metrics(run)[0]["step"] == 1


def test_objects_refused_with_one_line_errors(tmp_path, tokenizer):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    cfg = {"output_dir": str(tmp_path / "run"), **QUIET}
    rows = make_pairs(4)
    with pytest.raises(ConfigError, match="tokenizer: an in-memory model needs its tokenizer"):
        tether.train(cfg, model=model, train_dataset=rows)
    with pytest.raises(ConfigError, match="peft_config: bias='all' is not supported"):
        tether.train(cfg, model=model, tokenizer=tokenizer, train_dataset=rows,
                     peft_config=LoraConfig(bias="all"))
    with pytest.raises(DataError, match="train_dataset: the DatasetDict has no split 'train'"):
        tether.train(cfg, model=model, tokenizer=tokenizer,
                     train_dataset=datasets.DatasetDict({"x": datasets.Dataset.from_list(rows)}))
    with pytest.raises(ConfigError, match=r"data: given as 'x\.jsonl' and as train_dataset=; keep"):
        tether.train({**cfg, "dataset_name": "x.jsonl"}, model=model, tokenizer=tokenizer,
                     train_dataset=rows)
    with pytest.raises(ConfigError, match="model: required"):  # neither a path nor an object
        tether.train(cfg, tokenizer=tokenizer, train_dataset=rows)


def test_a_peft_model_trains_its_adapter_against_its_base(tmp_path, tokenizer):
    from peft import get_peft_model

    base = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    run = tether.train(
        {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
         "max_steps": 1, "batch_size": 4, **QUIET},
        model=model, tokenizer=tokenizer, train_dataset=make_pairs(8))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["lora"], saved["lora_r"], saved["reference"]) == (True, 2, "auto")
    assert saved["model"] == "<in-memory PeftModel of LlamaForCausalLM>"
    # LoRA's B starts at 0: policy == base (the reference, adapters off) at the first step
    assert read_metrics(run)[0]["rewards/chosen"] == 0.0
    assert (run / "model" / "adapter_config.json").exists()
    with pytest.raises(ConfigError, match="peft_config: the model is a PeftModel"):
        tether.train({"output_dir": str(tmp_path / "r2"), **QUIET}, model=model,
                     tokenizer=tokenizer, train_dataset=make_pairs(8), peft_config=LoraConfig())
