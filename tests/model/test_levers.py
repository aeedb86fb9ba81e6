"""Speed and memory levers compute the same numbers as the plain path.

Each lever (chunked LM head, prefix sharing, packing, precomputed reference, gradient
checkpointing, fused AdamW, bf16 autocast, torch.compile) is checked against the plain
computation: log-probs to 1e-5 in fp32, and the same loss and gradients after one step.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import make_pairs, write_jsonl
from tether.config import TrainConfig, build_config
from tether.data.batching import collate, step_batches
from tether.data.tokenization import TokenizedPair
from tether.errors import ConfigError
from tether.losses import dpo
from tether.model.logprobs import sequence_logps
from tether.model.prefix_sharing import batch_logps, collate_shared, make_batch, shared_logps
from tether.model.speed import apply_levers
from tether.model.tiny import tiny_gpt2, tiny_llama
from tether.training.reference import score_rows


def random_pairs(n: int, seed: int = 0, vocab: int = 300) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair([1, *ids(1, 9)], ids(1, 7), ids(1, 7)) for _ in range(n)]


@pytest.fixture
def llama(tokenizer):
    return tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)


def plain_logps(model, rows):
    b = collate(rows, range(len(rows)), 0)
    return sequence_logps(model, b.input_ids, b.attention_mask, b.completion_mask)


# --------------------------------------------------------------------------- prefix sharing


def test_shared_layout_hand_built():
    # prompt [1 5 6], chosen [7 8], rejected [9]: one row of 6 tokens
    b = collate_shared([TokenizedPair([1, 5, 6], [7, 8], [9])], [0], pad_id=0)
    assert b.input_ids.tolist() == [[1, 5, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]  # rejected restarts after the prompt
    # the rejected token sees the prompt and itself, not the chosen tokens
    assert b.allowed[0, 5].tolist() == [True, True, True, False, False, True]
    assert b.allowed[0, 4].tolist() == [True, True, True, True, True, False]  # causal
    # chosen 7 <- position 2, chosen 8 <- 3; rejected 9 <- 2 (last prompt token), not 4
    assert b.source.tolist() == [2, 3, 2]
    assert b.target.tolist() == [3, 4, 5]
    assert b.sequence.tolist() == [0, 0, 1]
    assert b.tokens == (3 + 2) + (3 + 1)  # counted like the plain batch


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_shared_logps_equal_plain(llama, attn):
    llama.config._attn_implementation = attn
    rows = random_pairs(6)
    want, want_counts = plain_logps(llama, rows)
    got, counts = shared_logps(llama, collate_shared(rows, range(6), 0), 1024)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert counts.tolist() == want_counts.tolist()


def test_prefix_shared_logps_equal_plain_gpt2(tokenizer):
    model = tiny_gpt2(tokenizer, hidden=32, layers=2, heads=4)  # learned absolute positions
    rows = random_pairs(5, seed=1)
    want, _ = plain_logps(model, rows)
    got, _ = shared_logps(model, collate_shared(rows, range(5), 0), 1024)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_packed_pairs_equal_plain(llama):
    # one long pair sets the row width; the short ones then share rows
    rows = [TokenizedPair([1, *range(10, 40)], [5, 6, 7], [8, 9]), *random_pairs(5, seed=2)]
    packed = collate_shared(rows, range(len(rows)), 0, pack=True)
    assert packed.input_ids.shape[0] < len(rows)  # several pairs per row
    want, _ = plain_logps(llama, rows)
    got, _ = shared_logps(llama, packed, 1024)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _dpo_grads(model, batch, ref_c, ref_r, shared: bool):
    model.zero_grad(set_to_none=True)
    logps, _ = shared_logps(model, batch, 7) if shared else sequence_logps(
        model, batch.input_ids, batch.attention_mask, batch.completion_mask, 7
    )
    B = batch.pairs
    loss = dpo(logps[:B], logps[B:], ref_c, ref_r, beta=0.5).losses.mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_prefix_sharing_same_loss_and_gradients_after_one_step(llama):
    rows = random_pairs(4, seed=3)
    ref = copy.deepcopy(llama)
    with torch.no_grad():
        ref_logps, _ = plain_logps(ref, rows)
    # one optimizer step so policy != reference and the loss is not log 2
    opt = torch.optim.SGD(llama.parameters(), lr=0.5)
    plain = collate(rows, range(4), 0)
    _dpo_grads(llama, plain, ref_logps[:4], ref_logps[4:], shared=False)
    opt.step()
    loss_p, grads_p = _dpo_grads(llama, plain, ref_logps[:4], ref_logps[4:], shared=False)
    shared = collate_shared(rows, range(4), 0)
    loss_s, grads_s = _dpo_grads(llama, shared, ref_logps[:4], ref_logps[4:], shared=True)
    assert abs(loss_p.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3
    torch.testing.assert_close(loss_s, loss_p, atol=1e-6, rtol=0)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_s[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_prefix_sharing_needs_a_mask_taking_attention(llama):
    llama.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="prefix_sharing"):
        shared_logps(llama, collate_shared(random_pairs(2), range(2), 0), 1024)


def test_prefix_sharing_refuses_rows_longer_than_a_sliding_window(llama):
    llama.config.sliding_window = 8  # the custom mask would silently drop the window
    with pytest.raises(ConfigError, match="sliding window"):
        shared_logps(llama, collate_shared(random_pairs(2), range(2), 0), 1024)


def test_sft_rows_stay_plain():
    rows = [TokenizedPair([1, 4], [5, 6], [])]
    assert not hasattr(make_batch(rows, [0], 0, prefix_sharing=True), "allowed")


def test_precomputed_reference_with_prefix_sharing_equals_plain(llama):
    rows = random_pairs(7, seed=4)
    cpu = torch.device("cpu")
    a = score_rows(llama, rows, 0, 3, cpu, 1024, progress=False)
    b = score_rows(llama, rows, 0, 3, cpu, 1024, progress=False, prefix_sharing=True)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_train_with_and_without_prefix_sharing_gives_the_same_losses(tmp_path, llama_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    losses = {}
    for flag in (False, True):
        cfg = build_config(TrainConfig, {
            "model": str(llama_dir), "data": str(data), "output_dir": str(tmp_path / f"r{flag}"),
            "cache_dir": str(tmp_path / "cache"), "max_steps": 3, "batch_size": 4, "lr": 1e-3,
            "progress": False, "prefix_sharing": flag,
        })
        from tether.training.loop import train

        run = train(cfg)
        rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "event" not in r]  # health events (tether.tracking)
        losses[flag] = [r["loss"] for r in rows]
    assert losses[True][-1] != pytest.approx(losses[True][0], abs=1e-4)  # it trained
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


# --------------------------------------------------------------------------- chunked LM head


def test_chunked_head_equals_full_logits_with_gradients(llama):
    rows = random_pairs(4, seed=5)
    b = collate(rows, range(4), 0)
    got, _ = sequence_logps(llama, b.input_ids, b.attention_mask, b.completion_mask, chunk=5)
    got.sum().backward()
    g_chunked = {n: p.grad.clone() for n, p in llama.named_parameters()}
    llama.zero_grad(set_to_none=True)
    logits = llama(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
    tok = logits.float().log_softmax(-1).gather(-1, b.input_ids[:, 1:, None])[..., 0]
    want = (tok * b.completion_mask[:, 1:]).sum(1)
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for n, p in llama.named_parameters():
        torch.testing.assert_close(g_chunked[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)


# --------------------------------------------------------------------------- other levers


def _levers(**kw):
    base = {"gradient_checkpointing": False, "compile": False}
    return SimpleNamespace(**{**base, **kw})


def test_gradient_checkpointing_same_gradients(llama):
    rows = random_pairs(4, seed=6)
    b = collate_shared(rows, range(4), 0)
    other = copy.deepcopy(llama)
    apply_levers(_levers(gradient_checkpointing=True), other)
    for m in (llama, other):
        m.train()
        batch_logps(m, b, 1024)[0].sum().backward()
    assert other.model.gradient_checkpointing
    for (n, p), q in zip(llama.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_fused_adamw_same_step_as_default(llama):
    other = copy.deepcopy(llama)
    for m in (llama, other):
        for p in m.parameters():
            p.grad = torch.ones_like(p) * 1e-3 + p.detach() * 0.1
    torch.optim.AdamW(llama.parameters(), lr=1e-2).step()
    torch.optim.AdamW(other.parameters(), lr=1e-2, fused=True).step()
    for p, q in zip(llama.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-6)


def test_bf16_autocast_keeps_fp32_logps_close_to_fp32(llama):
    rows = random_pairs(4, seed=7)
    b = collate_shared(rows, range(4), 0)
    want, counts = shared_logps(llama, b, 1024)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = shared_logps(llama, b, 1024)
    assert got.dtype == torch.float32  # accumulated in fp32 whatever the matmul dtype
    per_token = (got - want).abs() / counts
    assert 0 < per_token.max() < 0.02  # it ran in bf16 (8 mantissa bits), and stayed close


def test_length_grouping_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(800)]

    def padding(group: bool) -> int:
        steps = step_batches(lengths, 8, 0, 0, group_by_length=group)
        return sum(max(lengths[i] for i in s) * len(s) - sum(lengths[i] for i in s) for s in steps)

    assert padding(True) < 0.1 * padding(False)


@pytest.mark.slow
def test_compiled_layers_same_logps(llama):
    rows = random_pairs(3, seed=8)
    b = collate_shared(rows, range(3), 0)
    want, _ = shared_logps(llama, b, 1024)
    apply_levers(_levers(compile=True), llama)
    got, _ = shared_logps(llama, b, 1024)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
