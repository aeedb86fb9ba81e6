"""Chunked log-probs against the plain full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import make_pairs
from tether.data.batching import collate
from tether.data.records import PreferenceRecord
from tether.data.tokenization import TokenizedPair, tokenize_records
from tether.errors import ModelError
from tether.model.loading import load_model
from tether.model.logprobs import (
    _HEAD_OPS,
    HeadTransform,
    SequenceLogProbs,
    head_transform,
    sequence_logps,
    split_head,
)
from tether.model.prefix_sharing import collate_shared, shared_logps

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
    assert_matches_full_logits(model, ids, attn, comp, chunk)


def assert_matches_full_logits(model, ids, attn, comp, chunk):
    """Values and parameter gradients of ``sequence_logps`` equal the full-logits computation."""
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
        # fp32 rounding grows with the gradient's size (up to ~40 for the models with large logits)
        tol = {"rtol": 1e-5, "atol": 1e-5 * max(1.0, float(g.abs().max()))}
        torch.testing.assert_close(got_grads[name], g, **tol, msg=lambda m, n=name: f"{n}: {m}")


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


# ------------------------------------------------- models whose forward changes the head's output

# family -> (model class, config class, config key that changes the logits, its test value, the
# value that leaves the logits alone, the HeadTransform tether should derive from it)
TRANSFORMED = {
    "gemma2": (transformers.Gemma2ForCausalLM, transformers.Gemma2Config,
               "final_logit_softcapping", 2.0, None, HeadTransform(1.0, 2.0)),
    "cohere": (transformers.CohereForCausalLM, transformers.CohereConfig,
               "logit_scale", 2.5, 1.0, HeadTransform(2.5, None)),
    "granite": (transformers.GraniteForCausalLM, transformers.GraniteConfig,
                "logits_scaling", 4.0, 1.0, HeadTransform(0.25, None)),
}


def tiny_transformed(family, tokenizer, neutral=False):
    """A tiny random model of ``family`` with the logit-changing key at its test value (or at the
    value that leaves the logits alone). initializer_range 0.2 gives logits of a few units
    (|z| up to ~5), so a softcap of 2 is far from linear over them."""
    model_cls, config_cls, key, test_value, neutral_value, _ = TRANSFORMED[family]
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{key: neutral_value if neutral else test_value},
    )
    return model_cls(config).eval()


@pytest.fixture(params=list(TRANSFORMED))
def family(request):
    return request.param


def test_head_transform_is_read_from_the_config(family, tokenizer, model):
    assert head_transform(tiny_transformed(family, tokenizer)) == TRANSFORMED[family][5]
    assert head_transform(model) == HeadTransform()  # llama, gpt2: logits = the head's output


@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("chunk", [1, 5])
def test_transformed_logits_match_the_models_forward(family, tokenizer, padding, chunk):
    # the model's own forward applies the softcap / scale, so the naive log-probs include it;
    # Gemma 2 and Cohere tie the head to the embeddings, Granite does not
    model = tiny_transformed(family, tokenizer)
    ids, attn, comp = padded_batch(tokenizer) if padding else unpadded_batch(len(tokenizer))
    assert_matches_full_logits(model, ids, attn, comp, chunk)


def test_the_transform_changes_the_logps(family, tokenizer):
    # guards the test above: without the transform the numbers would be clearly different
    ids, attn, comp = padded_batch(tokenizer)
    with torch.no_grad():
        got, _ = sequence_logps(tiny_transformed(family, tokenizer), ids, attn, comp, chunk=4)
        plain, _ = naive_logps(tiny_transformed(family, tokenizer, neutral=True), ids, attn, comp)
    assert (got - plain).abs().min() > 0.1


def test_prefix_shared_logps_apply_the_transform(family, tokenizer):
    model = tiny_transformed(family, tokenizer)
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, len(tokenizer), (n,), generator=g).tolist()  # noqa: E731
    rows = [TokenizedPair([1, *ids(2 + i)], ids(3), ids(1 + i)) for i in range(4)]
    b = collate(rows, range(4), tokenizer.pad_token_id)
    with torch.no_grad():
        want, _ = naive_logps(model, b.input_ids, b.attention_mask, b.completion_mask)
        got, _ = shared_logps(model, collate_shared(rows, range(4), tokenizer.pad_token_id), 3)
    torch.testing.assert_close(got, want, **TOL)


def test_unknown_logit_transform_is_refused(llama_dir):
    # a class tether has no entry for, whose config sets a key some model uses on its logits
    model = load_model(str(llama_dir), dtype=torch.float32)
    model.config.final_logit_softcapping = 30.0
    for call in (head_transform, split_head):
        with pytest.raises(ModelError, match="LlamaForCausalLM: config sets final_logit_") as e:
            call(model)
        assert "\n" not in str(e.value)


def test_scaled_head_with_no_scale_is_refused(tokenizer):
    model = tiny_transformed("cohere", tokenizer)
    model.config.logit_scale = None
    with pytest.raises(ModelError, match=r"CohereForCausalLM: config\.logit_scale is None"):
        head_transform(model)


def test_every_supported_class_exists_in_transformers():
    missing = [name for name in _HEAD_OPS if not hasattr(transformers, name)]
    assert missing == []
