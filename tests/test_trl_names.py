"""TRL's DPOConfig / TrainingArguments names reach the tether keys they mean (issue 15, item 2)."""

from __future__ import annotations

import textwrap

import pytest

from tether.config import TrainConfig, build_config, load_config
from tether.errors import ConfigError
from tether.trl_names import SHARED, TRL_LOSS_TYPES, TRL_NAMES

BASE = {"model": "m", "data": "d.jsonl"}

# TRL name -> (a value a TRL user writes, the tether keys it must set)
REACHES = {
    "learning_rate": (2e-6, {"lr": 2e-6}),
    "per_device_train_batch_size": (4, {"batch_size": 4}),
    "per_device_eval_batch_size": (16, {"eval_batch_size": 16}),
    "gradient_accumulation_steps": (8, {"grad_accum": 8}),
    "num_train_epochs": (3, {"epochs": 3.0}),
    "logging_steps": (10, {"log_every": 10}),
    "save_steps": (50, {"save_every": 50}),
    "eval_steps": (25, {"eval_every": 25}),
    "logging_strategy": ("steps", {"log_every": 1}),
    "eval_strategy": ("no", {"eval_every": 0}),
    "save_strategy": ("steps", {"save_every": 500}),
    "lr_scheduler_type": ("cosine", {"scheduler": "cosine"}),
    "bf16": (True, {"dtype": "float32", "autocast": "on"}),
    "fp16": (False, {"dtype": "auto"}),
    "loss_type": ("sigmoid", {"loss": "dpo"}),
    "f_divergence_type": ("js_divergence", {"f_divergence": "js_divergence"}),
    "f_alpha_divergence_coef": (0.3, {"f_alpha": 0.3}),
    "precompute_ref_log_probs": (True, {"reference": "precomputed"}),
    "ref_model": ("my/sft-model", {"reference_model": "my/sft-model"}),
    "model_name_or_path": ("my/model", {"model": "my/model"}),
    "model_revision": ("v2", {"revision": "v2"}),
    "torch_dtype": ("bfloat16", {"dtype": "bfloat16"}),
    "use_peft": (True, {"lora": True}),
    "dataset_name": ("org/prefs", {"data": "org/prefs"}),
    "dataset_train_split": ("train_prefs", {"split": "train_prefs"}),
    "max_completion_length": (None, {"max_length": 1024}),
    "truncation_mode": ("keep_end", {"max_prompt_length": None}),
    "resume_from_checkpoint": (True, {"resume": True}),
    "disable_tqdm": (True, {"progress": False}),
    "use_cpu": (True, {"device": "cpu"}),
    "optim": ("adamw_torch", {"fused_adamw": False}),
    "adam_beta1": (0.8, {"adam_betas": [0.8, 0.999]}),
    "adam_beta2": (0.95, {"adam_betas": [0.9, 0.95]}),
    "logging_dir": ("logs", {}),
}

NEEDS = {"f_alpha_divergence_coef": {"f_divergence": "alpha_divergence"}}  # read only then

# TRL name -> (a value whose meaning differs, the tether key the error must name)
DIFFERS = {
    "logging_steps": (0.1, "log_every"),
    "save_steps": (0.25, "save_every"),
    "eval_steps": (0.5, "eval_every"),
    "logging_strategy": ("epoch", "log_every"),
    "eval_strategy": ("epoch", "eval_every"),
    "save_strategy": ("epoch", "save_every"),
    "lr_scheduler_type": ("polynomial", "scheduler"),
    "fp16": (True, "bf16"),
    "loss_type": ("nope", "loss"),
    "precompute_ref_log_probs": ("maybe", "reference=precomputed"),
    "dataset_test_split": ("test", "eval_data"),
    "max_completion_length": (256, "max_length"),
    "truncation_mode": ("keep_start", "remove it"),
    "resume_from_checkpoint": ("runs/x/checkpoint-500", "resume=true"),
    "use_cpu": ("yes", "device="),
    "optim": ("adafactor", "adamw_torch"),
}


def test_every_trl_name_has_a_test():
    assert set(TRL_NAMES) == set(REACHES) | {"dataset_test_split"}


@pytest.mark.parametrize("name", sorted(REACHES))
def test_trl_name_reaches_its_tether_key(name):
    value, expected = REACHES[name]
    base = {k: v for k, v in BASE.items() if k not in expected}  # model_name_or_path: model
    cfg = build_config(TrainConfig, {**base, **NEEDS.get(name, {}), name: value})
    assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize("name", sorted(DIFFERS))
def test_trl_name_whose_meaning_differs_is_an_error_naming_the_fix(name):
    value, fix = DIFFERS[name]
    with pytest.raises(ConfigError, match=f"{name}: ") as e:
        build_config(TrainConfig, {**BASE, name: value})
    assert fix in str(e.value) and "\n" not in str(e.value)


def test_shared_names_are_tether_keys():
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(SHARED) <= fields
    assert not set(TRL_NAMES) & fields  # a TRL name never shadows a tether key


@pytest.mark.parametrize("trl, tether", sorted(TRL_LOSS_TYPES.items()))
def test_every_trl_loss_type_maps_to_a_tether_objective(trl, tether):
    cfg = build_config(TrainConfig, {**BASE, "loss_type": trl})
    if trl == "sft":  # TRL's sft on pairs: the chosen-token NLL, a mixture term
        assert (cfg.loss, cfg.mixture) == ("mixture", ["sft"])
    else:
        assert cfg.loss == tether
    assert cfg.length_normalize is (trl == "ipo")  # TRL's IPO averages per token


def test_a_loss_type_list_is_a_mixture():
    cfg = build_config(TrainConfig, {**BASE, "loss_type": ["sigmoid", "bco_pair", "sft"],
                                     "loss_weights": [0.8, 0.2, 1.0]})
    assert (cfg.loss, cfg.mixture, cfg.loss_weights) == (
        "mixture", ["dpo", "bco_pair", "sft"], [0.8, 0.2, 1.0])
    with pytest.raises(ConfigError, match="loss_type: ipo in a list"):
        build_config(TrainConfig, {**BASE, "loss_type": ["ipo", "sft"]})


def test_did_you_mean_knows_trl_names():
    # before: max_steps for logging_steps, gradient_checkpointing for gradient_accumulation_steps
    for typo, name in (("logging_step", "logging_steps"),
                       ("gradient_accumulation_step", "gradient_accumulation_steps")):
        with pytest.raises(ConfigError, match=f"did you mean '{name}'"):
            build_config(TrainConfig, {**BASE, typo: 1})


def test_a_trl_name_and_its_tether_key_must_agree():
    assert build_config(TrainConfig, {**BASE, "learning_rate": 1e-5, "lr": 1e-5}).lr == 1e-5
    with pytest.raises(ConfigError, match=r"learning_rate: also given as lr=0\.001; keep one"):
        build_config(TrainConfig, {**BASE, "learning_rate": 1e-5, "lr": 1e-3})


def test_label_smoothing_beside_trl_sigmoid_is_an_error():
    # TRL 1.16's sigmoid ignores label_smoothing; tether's dpo would train cDPO with it
    with pytest.raises(ConfigError, match=r"label_smoothing: TRL 1\.16's sigmoid loss ignores it"):
        build_config(TrainConfig, {**BASE, "loss_type": "sigmoid", "label_smoothing": 0.1})
    cfg = build_config(TrainConfig, {**BASE, "loss_type": "robust", "label_smoothing": 0.1})
    assert (cfg.loss, cfg.label_smoothing) == ("robust", 0.1)


def test_warmup_ratio_and_constant_scheduler():
    with pytest.raises(ConfigError, match=r"warmup_steps: a fraction \(0\.1\) .* set warmup_ratio"):
        build_config(TrainConfig, {**BASE, "warmup_steps": 0.1})  # transformers 5: a ratio
    assert build_config(TrainConfig, {**BASE, "warmup_ratio": 0.1}).warmup_ratio == 0.1
    with pytest.raises(ConfigError, match="lr_scheduler_type: 'constant'"):  # TRL's skips warm-up
        build_config(TrainConfig, {**BASE, "lr_scheduler_type": "constant", "warmup_ratio": 0.1})
    with pytest.raises(ConfigError, match="warmup_ratio: give warmup_steps or warmup_ratio"):
        build_config(TrainConfig, {**BASE, "warmup_ratio": 0.1, "warmup_steps": 5})


def test_a_trl_dpo_config_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text(textwrap.dedent("""\
        model_name_or_path: my/sft
        dataset_name: org/prefs
        output_dir: runs/dpo
        learning_rate: 5.0e-7
        per_device_train_batch_size: 2
        gradient_accumulation_steps: 4
        num_train_epochs: 1
        lr_scheduler_type: cosine
        warmup_ratio: 0.1
        logging_steps: 5
        eval_strategy: steps
        eval_steps: 20
        save_strategy: "no"
        bf16: true
        gradient_checkpointing: true
        beta: 0.1
        loss_type: sigmoid
        max_length: 512
        report_to: none
        seed: 42
        """))
    cfg = load_config(TrainConfig, path, ["per_device_eval_batch_size=4"])
    got = {k: getattr(cfg, k) for k in (
        "model", "data", "lr", "batch_size", "grad_accum", "epochs", "scheduler",
        "warmup_ratio", "log_every", "eval_every", "save_every", "autocast",
        "gradient_checkpointing", "loss", "max_length", "seed", "eval_batch_size")}
    assert got == {"model": "my/sft", "data": "org/prefs", "lr": 5e-7, "batch_size": 2,
                   "grad_accum": 4, "epochs": 1.0, "scheduler": "cosine", "warmup_ratio": 0.1,
                   "log_every": 5, "eval_every": 20, "save_every": 0, "autocast": "on",
                   "gradient_checkpointing": True, "loss": "dpo", "max_length": 512,
                   "seed": 42, "eval_batch_size": 4}
