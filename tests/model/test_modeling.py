from __future__ import annotations

import logging

import pytest

from tether.errors import ModelError
from tether.model.loading import load_model, load_tokenizer


def test_tokenizer_without_pad_token_gets_eos_with_a_warning(tmp_path, tokenizer, caplog):
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>",
                        eos_token="</s>")
    assert tok.pad_token_id is None
    tok.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tether"):
        loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id
    assert "no pad token" in caplog.text


def test_missing_model_path_is_a_one_line_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as err:
        load_model(str(tmp_path / "nope"))
    assert "\n" not in str(err.value)


def test_loaded_model_has_no_dropout(gpt2_dir):
    import torch

    model = load_model(str(gpt2_dir))
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.config.resid_pdrop == 0 and model.config.attn_pdrop == 0
