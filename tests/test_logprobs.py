"""Chunked log-probs against the plain full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import make_pairs
from tether.batching import collate
from tether.data import PreferenceRecord
from tether.logprobs import SequenceLogProbs, sequence_logps
from tether.modeling import load_model
from tether.tokenization import tokenize_records

TOL = {"rtol": 1e-5, "atol": 1e-5}


def naive_logps(model, input_ids, attention_mask, completion_mask):
    """The textbook way: full (B, T, V) logits, log-softmax, gather, mask, sum."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    mask = completion_mask[:, 1:].float()
    return (token_logps * mask).sum(1), completion_mask[:, 1:].sum(1)


def padded_batch(tokenizer):
    """Real pairs of different lengths, right-padded by ``collate``: (2B, T) with padding."""
    records = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"]) for r in make_pairs(4)]
    rows, _ = tokenize_records(tokenizer, records, chat=False, max_length=64)
    b = collate(rows, range(len(rows)), tokenizer.pad_token_id)
    assert (b.attention_mask == 0).any(), "the batch should contain padding"
    return b.input_ids, b.attention_mask, b.completion_mask


def unpadded_batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 14), generator=g)
    attn = torch.ones_like(ids)
    comp = torch.zeros_like(ids)
    comp[:, 5:] = 1
    return ids, attn, comp


@pytest.fixture(params=["llama", "gpt2"])
def model(request, llama_dir, gpt2_dir):
    path = llama_dir if request.param == "llama" else gpt2_dir
    return load_model(str(path), dtype=torch.float32)


@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("chunk", [1, 5])
def test_chunked_logps_match_full_logits(model, tokenizer, padding, chunk):
    ids, attn, comp = padded_batch(tokenizer) if padding else unpadded_batch(len(tokenizer))
    assert chunk < int(comp[:, 1:].sum()), "chunks must be smaller than the token count"
    weights = torch.linspace(-1.0, 2.0, ids.shape[0])  # a non-trivial upstream gradient

    model.zero_grad(set_to_none=True)
    want, want_counts = naive_logps(model, ids, attn, comp)
    (want * weights).sum().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad(set_to_none=True)
    got, counts = sequence_logps(model, ids, attn, comp, chunk=chunk)
    (got * weights).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(counts, want_counts)
    assert want_grads.keys() == got_grads.keys()
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_padding_does_not_change_a_rows_logps(model, tokenizer):
    ids, attn, comp = padded_batch(tokenizer)
    batch, _ = sequence_logps(model, ids, attn, comp, chunk=4)
    for i in range(ids.shape[0]):
        n = int(attn[i].sum())
        alone, _ = sequence_logps(model, ids[i : i + 1, :n], attn[i : i + 1, :n],
                                  comp[i : i + 1, :n], chunk=4)
        torch.testing.assert_close(batch[i : i + 1], alone, **TOL)


def test_lm_head_is_never_run_on_the_whole_sequence(model, tokenizer):
    # The (B, T, V) logits come from calling the LM head module on every position; the
    # chunked path uses its weight directly on completion positions only.
    calls = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda *a: calls.append(1))
    try:
        ids, attn, comp = padded_batch(tokenizer)
        sequence_logps(model, ids, attn, comp, chunk=4)
        assert calls == []
        naive_logps(model, ids, attn, comp)
        assert calls == [1]  # the hook does fire on a full forward
    finally:
        handle.remove()


def test_module_wrapper_equals_function(model, tokenizer):
    ids, attn, comp = padded_batch(tokenizer)
    with torch.no_grad():
        a, ca = sequence_logps(model, ids, attn, comp, chunk=3)
        b, cb = SequenceLogProbs(model, chunk=7)(ids, attn, comp)
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ca, cb)


def test_bf16_model_gives_fp32_logps_close_to_fp32(llama_dir, tokenizer):
    ids, attn, comp = padded_batch(tokenizer)
    fp32 = load_model(str(llama_dir), dtype=torch.float32)
    bf16 = load_model(str(llama_dir), dtype=torch.bfloat16)
    with torch.no_grad():
        want, _ = sequence_logps(fp32, ids, attn, comp, chunk=4)
        got, _ = sequence_logps(bf16, ids, attn, comp, chunk=4)
    assert got.dtype == torch.float32
    # bf16 has ~3 significant digits; sums of ~10 log-probs of ~-6 each stay within a few 0.1.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0.3)
