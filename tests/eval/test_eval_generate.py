"""Batched left-padded generation with the KV cache, finish reasons, seeds and the disk cache."""

from __future__ import annotations

import torch

from tether.data.tokenization import prompt_ids
from tether.eval.generate import Decoding, Generation, GenerationCache, generate, stop_ids
from tether.model.tiny import tiny_llama

PROMPTS = ["the cat", "a big red dog sat on the mat", "yes", "please the small rug under"]


def _model(tok, seed=0):
    return tiny_llama(tok, hidden=32, layers=2, heads=4, kv_heads=2, seed=seed).eval()


@torch.no_grad()
def _greedy_by_hand(model, ids, eos, max_new):
    """Full forward each step, no padding, no cache: the reference implementation."""
    ids = list(ids)
    out = []
    for _ in range(max_new):
        t = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if t in eos:
            return out, "stop"
        out.append(t)
        ids.append(t)
    return out, "length"


def test_batched_greedy_equals_unpadded_greedy(tokenizer):
    model = _model(tokenizer)
    ids = [prompt_ids(tokenizer, p, chat=False) for p in PROMPTS]
    assert len({len(i) for i in ids}) > 2  # really different lengths: padding is exercised
    gens = generate(model, tokenizer, ids, Decoding(max_new_tokens=12), batch_size=4)
    eos = set(stop_ids(model, tokenizer))
    for g, p in zip(gens, ids, strict=True):
        tokens, reason = _greedy_by_hand(model, p, eos, 12)
        assert g.text == tokenizer.decode(tokens, skip_special_tokens=True)
        assert (g.tokens, g.finish_reason) == (len(tokens), reason)
    one_by_one = generate(model, tokenizer, ids, Decoding(max_new_tokens=12), batch_size=1)
    assert one_by_one == gens


def test_finish_reasons_and_token_counts(chat_tokenizer):
    tok = chat_tokenizer
    ids = [prompt_ids(tok, [{"role": "user", "content": p}], chat=True) for p in PROMPTS[:2]]
    always = {}
    for name, token in (("eos", tok.eos_token_id), ("cat", tok.convert_tokens_to_ids("c"))):
        model = _model(tok)
        with torch.no_grad():  # constant hidden state, one hot LM-head row: always that token
            model.model.embed_tokens.weight.fill_(1.0)
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.lm_head.weight.zero_()
            model.lm_head.weight[token] = 5.0
        always[name] = generate(model, tok, ids, Decoding(max_new_tokens=5), batch_size=2)
    seen = {k: [(g.text, g.tokens, g.finish_reason) for g in v] for k, v in always.items()}
    assert seen["eos"] == [("", 0, "stop")] * 2
    assert seen["cat"] == [("ccccc", 5, "length")] * 2


def test_sampling_is_seeded_and_samples_differ(tokenizer):
    model = _model(tokenizer)
    ids = [prompt_ids(tokenizer, p, chat=False) for p in PROMPTS[:2]]
    d = Decoding(max_new_tokens=8, temperature=1.5, top_p=0.95, num_samples=3, seed=1)
    a = generate(model, tokenizer, ids, d, batch_size=4)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    b = generate(model, tokenizer, ids, d, batch_size=4)
    # the global RNG is left alone: sampling here does not shift the caller's random stream
    assert torch.equal(torch.rand(1), expected)
    c = generate(model, tokenizer, ids, Decoding(**{**d.__dict__, "seed": 2}), batch_size=4)
    assert a == b and a != c
    assert [(g.prompt_index, g.sample) for g in a] == [(p, s) for p in (0, 1) for s in (0, 1, 2)]
    assert len({g.text for g in a[:3]}) > 1  # three samples of one prompt are not copies


def test_generation_cache_round_trip_and_keys(tmp_path):
    cache = GenerationCache(tmp_path / "gen")
    d = Decoding(max_new_tokens=4)
    key = cache.key("w1", [[1, 2], [3]], d)
    assert cache.get(key) is None
    gens = [Generation(0, 0, "hi", 1, "stop"), Generation(1, 0, "x y", 4, "length")]
    cache.put(key, gens)
    assert cache.get(key) == gens
    assert key != cache.key("w2", [[1, 2], [3]], d)
    assert key != cache.key("w1", [[1, 2], [4]], d)
    assert key != cache.key("w1", [[1, 2], [3]], Decoding(max_new_tokens=5))
    (tmp_path / "gen" / f"{key}.json").write_text("{broken")
    assert cache.get(key) is None
    assert GenerationCache(None).get(key) is None


def test_fit_prompts_keeps_the_newest_tokens_and_a_leading_bos():
    from tether.eval.generate import fit_prompts

    prompts = [[1, 10, 11, 12, 13, 14], [10, 11, 12], [10, 11, 12, 13, 14]]
    fitted, cut = fit_prompts(prompts, 4, bos_id=1)
    assert fitted == [[1, 12, 13, 14], [10, 11, 12], [11, 12, 13, 14]] and cut == 2
    assert fit_prompts(prompts, None, bos_id=1) == (prompts, 0)
    assert fit_prompts(prompts, 1, bos_id=1)[0][0] == [14]  # no room for the BOS as well


def test_context_window_is_read_from_the_config_without_the_weights(llama_dir, gpt2_dir, tmp_path):
    import json as _json

    from tether.eval.generate import context_window

    llama = _json.loads((llama_dir / "config.json").read_text())["max_position_embeddings"]
    assert context_window(str(llama_dir)) == llama
    assert context_window(str(gpt2_dir)) == _json.loads(
        (gpt2_dir / "config.json").read_text())["n_positions"]
    assert context_window(str(tmp_path / "missing")) is None


def test_generation_stops_on_every_eos_id_of_the_generation_config(tmp_path, chat_tokenizer):
    # Llama 3.1 stops on <|eot_id|> and <|end_of_text|>, Phi-3.5 on <|end|>: the model's
    # generation_config.json lists them, the tokenizer knows one. A tiny model that always emits
    # the tokenizer's *other* end token ('</s>' here; EOS is '<|im_end|>') must stop on it.
    from tether.model.loading import load_model

    tok = chat_tokenizer
    second = tok.convert_tokens_to_ids("</s>")
    assert second != tok.eos_token_id
    model = _model(tok)
    with torch.no_grad():  # constant hidden state, one hot LM-head row: always `second`
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[second] = 5.0
    ids = [prompt_ids(tok, [{"role": "user", "content": "the cat"}], chat=True)]
    model.generation_config.eos_token_id = tok.eos_token_id
    only_eos = generate(model, tok, ids, Decoding(max_new_tokens=4))
    assert [(g.tokens, g.finish_reason) for g in only_eos] == [(4, "length")]  # not a stop token
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    model.save_pretrained(tmp_path)  # generation_config.json, read back as a run would
    loaded = load_model(str(tmp_path))
    assert loaded.generation_config.eos_token_id == [tok.eos_token_id, second]
    assert stop_ids(loaded, tok) == sorted([tok.eos_token_id, second])
    gens = generate(loaded, tok, ids, Decoding(max_new_tokens=4))
    assert [(g.text, g.tokens, g.finish_reason) for g in gens] == [("", 0, "stop")]
