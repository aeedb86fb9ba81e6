"""PEFT options users reach for (DoRA, rsLoRA, modules_to_save, all-linear) and the attention
kernel, through a real training run and the saved adapter config."""

from __future__ import annotations

import json

import pytest

from conftest import train_config
from tether.errors import ConfigError, ModelError
from tether.model.loading import load_model
from tether.training.loop import train


@pytest.mark.parametrize("keys, expect", [
    ({"lora_use_dora": True}, {"use_dora": True, "use_rslora": False}),
    ({"lora_use_rslora": True, "lora_target_modules": ["all-linear"]},
     {"use_rslora": True, "use_dora": False}),
    ({"lora_modules_to_save": ["embed_tokens"]}, {"modules_to_save": ["embed_tokens"]}),
])
def test_peft_options_reach_the_saved_adapter(llama_dir, pairs_file, tmp_path, keys, expect):
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file), lora=True,
                             max_steps=1, **keys))
    saved = json.loads((run / "model" / "adapter_config.json").read_text())
    for k, v in expect.items():
        assert (sorted(saved[k]) if isinstance(v, list) else saved[k]) == v, k


def test_lm_head_and_keys_without_lora_are_refused(llama_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="lora_modules_to_save: the LM head"):
        train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file), lora=True,
                           lora_modules_to_save=["lm_head"]))
    with pytest.raises(ConfigError, match="lora_use_dora: lora_use_dora=true works on LoRA"):
        train_config(tmp_path, model=str(llama_dir), data=str(pairs_file), lora_use_dora=True)


def test_attn_implementation_is_passed_to_transformers(llama_dir):
    assert load_model(str(llama_dir), attn_implementation="eager").config._attn_implementation \
        == "eager"
    with pytest.raises(ModelError, match="cannot load"):
        load_model(str(llama_dir), attn_implementation="no_such_kernel")
