"""LoRA through PEFT: the reference is the base (or the frozen starting adapter), only the
adapters train, the merged model is the adapter model, QLoRA is refused without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import make_pairs, write_jsonl
from tether.cli import main
from tether.config import TrainConfig, load_config
from tether.data.batching import collate
from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.errors import ConfigError
from tether.model.loading import load_model
from tether.model.logprobs import SequenceLogProbs, sequence_logps
from tether.model.lora import apply_lora
from tether.training.loop import _setup, train
from tether.training.reference import LoraReference, Precomputed


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    return tmp_path


def _cfg(tmp: Path, model: Path, out: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"model={model}", f"data={tmp / 'pairs.jsonl'}", f"output_dir={tmp / out}", "lr=1e-2",
        "batch_size=4", "max_steps=3", f"cache_dir={tmp / 'cache'}", "progress=false",
        "lora=true", "lora_r=4", *extra,
    ])


def _batch(tokenizer):
    records = [PreferenceRecord(p["prompt"], p["chosen"], p["rejected"], f"t:{i}")
               for i, p in enumerate(make_pairs(4, seed=7))]
    rows, _ = tokenize_records(tokenizer, records, chat=False, max_length=64,
                               max_prompt_length=None)
    return collate(rows, list(range(len(rows))), tokenizer.pad_token_id)


def _logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_logps(model, batch.input_ids, batch.attention_mask,
                              batch.completion_mask)[0]


def _perturb(model, adapter: str = "default", seed: int = 1) -> None:
    """Non-zero LoRA B matrices, so the adapters change what the model says."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _save_adapter(llama_dir: Path, cfg: TrainConfig, out: Path) -> Path:
    model = apply_lora(load_model(str(llama_dir)), cfg)
    _perturb(model, seed=3)
    model.save_pretrained(out)
    return out


def test_reference_lora_equals_the_bare_base_model(data, llama_dir, tokenizer):
    cfg = _cfg(data, llama_dir, "run")
    base = load_model(str(llama_dir))
    policy = apply_lora(load_model(str(llama_dir)), cfg)
    _perturb(policy)  # as if trained: the policy now differs from the base
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    batch = _batch(tokenizer)
    rc, rr = LoraReference(policy, SequenceLogProbs(policy))(batch, "train")
    torch.testing.assert_close(torch.cat([rc, rr]), _logps(base, batch))
    assert (_logps(policy, batch) - _logps(base, batch)).abs().max() > 1e-2
    # the switch put every requires_grad flag back: the optimizer's parameters still train
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable
    assert trainable and all("lora_" in n for n in trainable)


def test_reference_auto_is_lora_and_one_copy_of_the_weights(data, llama_dir):
    s = _setup(_cfg(data, llama_dir, "run"))
    assert isinstance(s.reference, LoraReference)
    assert s.reference.model is s.policy  # no second model in memory


def test_starting_adapter_is_the_reference_frozen(data, llama_dir, tokenizer, tmp_path):
    adapter = _save_adapter(llama_dir, _cfg(data, llama_dir, "x"), tmp_path / "adapter")
    expected = _logps(PeftModel.from_pretrained(load_model(str(llama_dir)), adapter),
                      _batch(tokenizer))
    cfg = _cfg(data, llama_dir, "run", f"lora_adapter={adapter}")
    policy = apply_lora(load_model(str(llama_dir)), cfg)
    batch = _batch(tokenizer)
    torch.testing.assert_close(_logps(policy, batch), expected)  # the policy starts there
    _perturb(policy, "default", seed=5)  # train the policy's copy of the adapter
    rc, rr = LoraReference(policy, SequenceLogProbs(policy))(batch, "train")
    torch.testing.assert_close(torch.cat([rc, rr]), expected)  # the reference stays
    assert (torch.cat([rc, rr]) - _logps(load_model(str(llama_dir)), batch)).abs().max() > 1e-2
    assert (_logps(policy, batch) - expected).abs().max() > 1e-2
    frozen = [n for n, p in policy.named_parameters() if ".reference." in n]
    assert frozen and not any(p.requires_grad for n, p in policy.named_parameters()
                              if ".reference." in n)


def test_precomputed_reference_scores_the_starting_adapter(data, llama_dir, tokenizer,
                                                           tmp_path):
    adapter = _save_adapter(llama_dir, _cfg(data, llama_dir, "x"), tmp_path / "adapter")
    s = _setup(_cfg(data, llama_dir, "run", f"lora_adapter={adapter}",
                    "reference=precomputed"))
    assert isinstance(s.reference, Precomputed)
    batch = collate(s.train_rows[:4], [0, 1, 2, 3], tokenizer.pad_token_id)
    rc, rr = s.reference(batch, "train")
    start = PeftModel.from_pretrained(load_model(str(llama_dir)), adapter)
    torch.testing.assert_close(torch.cat([rc, rr]), _logps(start, batch), atol=1e-4, rtol=1e-5)


def _unpeft(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def test_training_changes_only_the_adapter_weights(data, llama_dir):
    run = train(_cfg(data, llama_dir, "run", "save_every=3"))
    before = load_file(llama_dir / "model.safetensors")
    after = load_file(run / "checkpoints" / "step-3" / "model.safetensors")  # every weight
    lora = {k: v for k, v in after.items() if "lora_" in k}
    base = {_unpeft(k): v for k, v in after.items() if "lora_" not in k}
    assert set(base) == set(before)
    for k, v in before.items():
        assert torch.equal(base[k], v), f"{k} changed"
    assert lora and all(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # B was 0
    saved = load_file(run / "model" / "adapter_model.safetensors")  # only the adapter
    assert saved and all("lora_" in k for k in saved)


def test_merged_model_equals_the_adapter_model(data, llama_dir, tokenizer):
    run = train(_cfg(data, llama_dir, "run", "merge=true"))
    assert (run / "model" / "adapter_config.json").is_file()
    assert not (run / "model" / "config.json").exists()
    assert not (run / "model" / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(run / "model" / "merged")  # plain transformers
    adapted = PeftModel.from_pretrained(load_model(str(llama_dir)), run / "model")
    batch = _batch(tokenizer)
    torch.testing.assert_close(_logps(merged, batch), _logps(adapted, batch), atol=1e-4, rtol=1e-5)
    # and training moved it away from the base, so the equality above says something
    assert (_logps(merged, batch) - _logps(load_model(str(llama_dir)), batch)).abs().max() > 1e-2


def test_qlora_without_cuda_is_a_one_line_error(data, llama_dir, capsys):
    code = main(["--quiet", "train", f"model={llama_dir}", f"data={data / 'pairs.jsonl'}",
                 f"output_dir={data / 'q'}", "lora=true", "load_in_4bit=true", "progress=false",
                 f"cache_dir={data / 'cache'}", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "load_in_4bit" in err and "CUDA" in err


@pytest.mark.parametrize(("extra", "message"), [
    (["lora=false", "reference=lora"], "reference: reference=lora works on LoRA adapters"),
    (["lora=false", "merge=true"], "merge: merge=true works on LoRA adapters"),
    (["load_in_4bit=true", "distributed=fsdp"], "load_in_4bit: 4-bit weights cannot be"),
    (["lora_r=0"], "lora_r: must be >= 1"),
])
def test_scale_keys_are_checked(data, llama_dir, extra, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(data, llama_dir, "run", *extra)


def test_bad_target_modules_name_the_linear_layers(data, llama_dir):
    cfg = _cfg(data, llama_dir, "run", "lora_target_modules=qq_proj")
    with pytest.raises(ConfigError, match=r"lora_target_modules: .*q_proj"):
        apply_lora(load_model(str(llama_dir)), cfg)
    cfg = _cfg(data, llama_dir, "run", "lora_target_modules=q_proj,lm_head")
    with pytest.raises(ConfigError, match="LM head cannot be adapted"):
        apply_lora(load_model(str(llama_dir)), cfg)


def test_distributed_modes_need_torchrun(data, llama_dir):
    with pytest.raises(ConfigError, match="distributed: 'fsdp' needs a torchrun launch"):
        train(_cfg(data, llama_dir, "run", "distributed=fsdp"))
