"""Prefix sharing and packed rows through FlexAttention give the dense-mask path's numbers.

torch 2.13 runs flex attention's forward on a CPU (compiled: ~1 minute to build the kernel) but
not its backward. These tests run transformers' flex path with flex's uncompiled reference
implementation (the same BlockMask and mask_mod, scores computed densely), and for gradients
with torch's CPU guard lifted: what is under test is tether's mask rule, BlockMask and wiring,
which are the same on a GPU, where the fused kernel does the arithmetic.
"""

from __future__ import annotations

import copy
import json
import logging
import random

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex
import transformers.integrations.flex_attention as hf_flex
import transformers.masking_utils as hf_masks

from conftest import make_pairs, train_config, write_jsonl
from tether.data.batching import collate
from tether.data.tokenization import TokenizedPair
from tether.errors import ModelError
from tether.losses import dpo
from tether.model import flex
from tether.model.logprobs import sequence_logps
from tether.model.packing import collate_packed
from tether.model.prefix_sharing import batch_logps, collate_shared, make_batch, shared_logps
from tether.model.tiny import tiny_gpt2, tiny_llama
from tether.training.loop import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def random_pairs(n: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, 300) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair([1, *ids(1, 9)], ids(1, 7), ids(1, 7)) for _ in range(n)]


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers' flex path on flex's reference implementation, backward allowed on CPU."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *a: None)
    # transformers compiles the BlockMasks it builds (packed rows): minutes of inductor on a CPU
    monkeypatch.setattr(hf_masks, "create_block_mask",
                        lambda *a, **kw: torch_flex.create_block_mask(*a, **{**kw,
                                                                             "_compile": False}))
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: torch_flex.flex_attention(q, k, v,
                                                                                         **kw))


@pytest.fixture
def llama(tokenizer):
    return tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)


def flex_copy(model):
    other = copy.deepcopy(model)
    other.set_attn_implementation("flex_attention")
    return other


def test_block_mask_is_the_dense_rule_and_skips_blocks():
    # one pair of 100 + 200 + 200 tokens: rejected queries see no chosen key
    b = collate_shared([TokenizedPair([1] * 100, [2] * 200, [3] * 200)], [0], 0)
    llama_like = torch.nn.Module()
    llama_like.config = type("C", (), {"_attn_implementation": "flex_attention"})()
    from tether.model.prefix_sharing import _attention_mask

    mask = _attention_mask(llama_like, b, torch.float32)
    dense = torch_flex.create_mask(mask.mask_mod, 1, 1, 500, 500, device="cpu")
    assert torch.equal(dense[:, 0], b.allowed)
    causal = torch_flex.create_block_mask(lambda r, h, q, k: q >= k, 1, None, 500, 500,
                                          device="cpu", _compile=False)
    assert mask.sparsity() > causal.sparsity() + 5  # whole 128×128 blocks left out


def test_flex_unusable_says_why():
    llama = tiny_llama(_tok(), hidden=16, layers=1, heads=2, kv_heads=1)
    assert "no backward pass on cpu" in flex.flex_unusable(llama, CPU)
    assert flex.flex_unusable(llama, CUDA) is None  # only the device type is looked at
    gpt2 = tiny_gpt2(_tok(), hidden=16, layers=1, heads=2)
    assert "no flex attention path for GPT2LMHeadModel" in flex.flex_unusable(gpt2, CUDA)


def _tok():
    from tether.model.tiny import train_tokenizer

    return train_tokenizer(["a b c"], vocab_size=260)


def test_choose_attention(llama, monkeypatch):
    assert flex.choose_attention("auto", llama, CPU, custom_mask=True) == "sdpa"  # CPU: dense
    assert flex.choose_attention("auto", llama, CUDA, custom_mask=False) == "sdpa"  # plain rows
    assert llama.config._attn_implementation == "sdpa"
    assert flex.choose_attention("auto", llama, CUDA, custom_mask=True) == "flex_attention"
    assert llama.config._attn_implementation == "flex_attention"
    assert flex.choose_attention("eager", llama, CPU, custom_mask=True) == "eager"
    assert llama.config._attn_implementation == "eager"
    with pytest.raises(ModelError, match="attn_implementation"):
        flex.choose_attention("no_such_kernel", llama, CPU, custom_mask=False)


def test_flex_shared_logps_equal_dense(llama, eager_flex):
    rows = random_pairs(6)
    b = collate_shared(rows, range(6), 0)
    with torch.no_grad():
        want, _ = shared_logps(llama, b, 1024)
        got, _ = shared_logps(flex_copy(llama), b, 1024)
        plain = collate(rows, range(6), 0)
        padded, _ = sequence_logps(llama, plain.input_ids, plain.attention_mask,
                                   plain.completion_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, padded, atol=1e-5, rtol=0)


def test_flex_pairs_packed_in_one_row_and_packed_plain_rows_equal_padded(llama, eager_flex):
    rows = random_pairs(5, seed=1)
    model = flex_copy(llama)
    with torch.no_grad():
        want, _ = sequence_logps(llama, *_padded(rows))
        shared, _ = batch_logps(model, make_batch(rows, range(5), 0, True, packing=True), 1024)
        packed, _ = batch_logps(model, collate_packed(rows, range(5)), 1024)
    torch.testing.assert_close(shared, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed, want, atol=1e-5, rtol=0)


def _padded(rows):
    b = collate(rows, range(len(rows)), 0)
    return b.input_ids, b.attention_mask, b.completion_mask


def _dpo_grads(model, batch, ref):
    model.zero_grad(set_to_none=True)
    logps, _ = shared_logps(model, batch, 7)
    B = batch.pairs
    loss = dpo(logps[:B], logps[B:], ref[:B], ref[B:], beta=0.5).losses.mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_flex_same_loss_and_gradients_after_one_step(llama, eager_flex):
    rows = random_pairs(4, seed=3)
    b = collate_shared(rows, range(4), 0)
    with torch.no_grad():
        ref, _ = shared_logps(llama, b, 7)
    _dpo_grads(llama, b, ref)
    torch.optim.SGD(llama.parameters(), lr=0.5).step()  # policy != reference: loss != log 2
    other = flex_copy(llama)
    loss_d, grads_d = _dpo_grads(llama, b, ref)
    loss_f, grads_f = _dpo_grads(other, b, ref)
    assert abs(loss_d.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3
    torch.testing.assert_close(loss_f, loss_d, atol=1e-6, rtol=0)
    for name, g in grads_d.items():
        torch.testing.assert_close(grads_f[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_train_with_flex_selected_gives_the_dense_losses(tmp_path, llama_dir, eager_flex,
                                                         monkeypatch, caplog):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    losses = {}
    for kernel in ("sdpa", "flex"):
        if kernel == "flex":  # what auto picks on a GPU
            monkeypatch.setattr(flex, "flex_unusable", lambda *a: None)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tether"):
            run = train(train_config(tmp_path / kernel, model=str(llama_dir), data=str(data),
                                     max_steps=3))
        chosen = "attention: flex_attention" if kernel == "flex" else "attention: sdpa, with dense"
        assert any(r.getMessage().startswith(chosen) for r in caplog.records)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[kernel] = [r["loss"] for r in rows if "loss" in r]  # not health events
    assert losses["flex"][-1] != pytest.approx(losses["flex"][0], abs=1e-4)  # it trained
    assert losses["flex"] == pytest.approx(losses["sdpa"], abs=1e-5)


@pytest.mark.slow
def test_compiled_flex_forward_on_cpu_equals_dense(llama):
    """The fused kernel itself (inductor's CPU template), forward only: ~1 minute to compile."""
    rows = random_pairs(4, seed=5)
    b = collate_shared(rows, range(4), 0)
    with torch.no_grad():
        want, _ = shared_logps(llama, b, 1024)
        got, _ = shared_logps(flex_copy(llama).eval(), b, 1024)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
