"""Precision policies: mixed precision updates weights as fp32 does; pure bf16 at DPO learning
rates does not (and says so); ``precision=auto`` reads the older dtype/autocast keys as before."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_config
from tether.errors import ConfigError
from tether.losses import dpo
from tether.model.precision import POLICIES, resolve_precision, stalled_fraction
from tether.model.prefix_sharing import batch_logps, collate_shared
from tether.model.tiny import tiny_llama
from tether.training.loop import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("precision", "dtype", "autocast", "device", "lora", "bf16_gpu", "want"),
    [
        ("auto", "auto", "off", CPU, False, False, "fp32"),  # CPU training stays fp32
        ("auto", "auto", "off", CUDA, False, True, "mixed"),  # the GPU default: was pure bf16
        ("auto", "auto", "off", CUDA, True, True, "bf16"),  # LoRA: frozen base, fp32 adapters
        ("auto", "auto", "off", CUDA, False, False, "fp32"),  # a GPU without bf16
        ("auto", "bfloat16", "off", CUDA, False, True, "bf16"),  # explicit pure bf16
        ("auto", "bfloat16", "on", CPU, False, False, "bf16"),
        ("auto", "float16", "off", CUDA, False, True, "fp16"),
        ("auto", "float32", "on", CPU, False, False, "mixed"),
        ("auto", "float32", "off", CUDA, False, True, "fp32"),
        ("auto", "auto", "on", CPU, False, False, "mixed"),
        ("mixed", "auto", "off", CPU, False, False, "mixed"),
        ("bf16", "auto", "off", CUDA, True, True, "bf16"),
        ("fp32", "auto", "off", CUDA, False, True, "fp32"),
    ],
)
def test_resolve_precision(monkeypatch, precision, dtype, autocast, device, lora, bf16_gpu, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    got = resolve_precision(precision, dtype, autocast, device, lora)
    assert got is POLICIES[want]


def test_policies_say_what_they_keep():
    assert (POLICIES["mixed"].dtype, POLICIES["mixed"].autocast) == (torch.float32, True)
    assert (POLICIES["bf16"].dtype, POLICIES["bf16"].autocast) == (torch.bfloat16, False)
    # weight + gradient + two AdamW moments, each in the weights' dtype
    assert POLICIES["fp32"].bytes_per_param == 4 * 4
    assert POLICIES["bf16"].bytes_per_param == 4 * 2


def test_precision_and_dtype_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="precision=mixed sets the weights' dtype"):
        train_config(tmp_path, model="m", data="d", precision="mixed", dtype="bfloat16")
    with pytest.raises(ConfigError, match="precision"):
        train_config(tmp_path, model="m", data="d", precision="fp32", autocast="on")


def test_stalled_fraction_matches_what_bf16_rounding_does():
    torch.manual_seed(0)
    w = (torch.randn(4000) * 0.02).to(torch.bfloat16)
    w[:5] = torch.tensor([1.0, -1.0, 0.5, 0.0, 3e-3])
    lr = 2e-5
    model = torch.nn.Linear(4000, 1, bias=False).to(torch.bfloat16)
    model.weight.data = w[None].clone()
    # what actually happens: add +lr in fp32, round back to bf16, see who moved
    moved = (w.float() + lr).to(torch.bfloat16) != w
    assert stalled_fraction(model, lr) == pytest.approx(1 - moved.float().mean().item(), abs=2e-3)
    assert 0.2 < stalled_fraction(model, lr) < 0.9  # a threshold case, not all or nothing
    # 1.0's half step is 2^-8: anything smaller rounds back
    one = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    one.weight.data.fill_(1.0)
    assert stalled_fraction(one, 0.99 * 2**-8) == 1.0
    assert stalled_fraction(one, 1.01 * 2**-8) == 0.0
    assert stalled_fraction(one.float(), 1e-9) == 0.0  # fp32 weights always move


def test_mixed_keeps_logps_and_loss_in_fp32(tokenizer):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    from tether.data.tokenization import TokenizedPair

    rows = [TokenizedPair([1, 5, 6, 7], [8, 9], [10]), TokenizedPair([1, 11], [12], [13, 14])]
    with POLICIES["mixed"].compute(CPU):
        sums, _ = batch_logps(model, collate_shared(rows, [0, 1], 0), 1024)
        loss = dpo(sums[:2], sums[2:], sums[:2].detach(), sums[2:].detach(), beta=0.1).losses
    assert sums.dtype == torch.float32 and loss.dtype == torch.float32


def _update(run: Path, start: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every weight's change, in the dtype the run kept its weights in, as one fp32 vector."""
    end = load_file(run / "model" / "model.safetensors")
    return torch.cat([(end[k].float() - start[k].to(end[k].dtype).float()).reshape(-1)
                      for k in start])


def test_mixed_moves_every_weight_fp32_moves(tmp_path, llama_dir, pairs_file, caplog):
    """After 3 AdamW steps at lr 5e-7 (TrainConfig's default): mixed moves the same weights as
    fp32 (fraction within 0.5 points), in the same direction (cosine ≥ 0.99, ≥ 99 % of signs);
    pure bf16 moves almost none of them and warns."""
    start = load_file(llama_dir / "model.safetensors")
    update = {}
    for precision in ("fp32", "mixed", "bf16"):
        with caplog.at_level(logging.WARNING, logger="tether"):
            run = train(train_config(tmp_path / precision, model=str(llama_dir),
                                     data=str(pairs_file), lr=5e-7, max_steps=3,
                                     precision=precision))
        update[precision] = _update(run, start)
    moved = {p: (u != 0).float().mean().item() for p, u in update.items()}
    fp32, mixed = update["fp32"], update["mixed"]
    assert moved["fp32"] > 0.5  # embedding rows of unseen tokens get no gradient
    assert abs(moved["mixed"] - moved["fp32"]) < 0.005
    assert torch.nn.functional.cosine_similarity(mixed, fp32, dim=0) > 0.99
    same_sign = (mixed.sign() == fp32.sign())[fp32 != 0].float().mean()
    assert same_sign > 0.99
    assert moved["bf16"] < 0.05  # the bug the mixed default fixes
    assert sum("precision=bf16 at lr=5e-07" in r.message for r in caplog.records) == 1
