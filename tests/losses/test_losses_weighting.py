"""LD-DPO's token weights and WPO's pair weights: by hand, through the chunked LM head, and in
a few training steps on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.config import TrainConfig, build_config
from tether.errors import ConfigError
from tether.losses.weighting import ld_token_weights, wpo_weights
from tether.model.loading import load_model
from tether.model.logprobs import sequence_logps, sequence_logps_wpo
from tether.training.loop import train


def test_ld_token_weights_by_hand():
    # pair 0: chosen 3 completion tokens, rejected 1 -> l_p = 1; pair 1: 2 and 2 -> l_p = 2
    mask = torch.tensor([
        [0, 1, 1, 1, 0],  # chosen 0
        [0, 0, 1, 1, 0],  # chosen 1
        [0, 1, 0, 0, 0],  # rejected 0
        [0, 1, 1, 0, 0],  # rejected 1
    ])
    w = ld_token_weights(mask, pairs=2, alpha=0.25)
    torch.testing.assert_close(w, torch.tensor([
        [0, 1, 0.25, 0.25, 0],
        [0, 0, 1, 1, 0],
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
    ]))
    assert torch.equal(ld_token_weights(mask, 2, 1.0), mask.float())  # α = 1: plain sums


def test_wpo_weights_by_hand():
    # w = exp(aligned/|y|): chosen exp(-2/4) = e^-0.5, rejected exp(-1/1) = e^-1
    w = wpo_weights(torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([4]),
                    torch.tensor([1]))
    torch.testing.assert_close(w, torch.tensor([math.exp(-1.5)]))


def test_weighted_mask_sums_weighted_token_logps(llama_dir: Path):
    model = load_model(str(llama_dir))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (4, 9), generator=g)
    attn = torch.ones_like(ids)
    mask = torch.zeros_like(ids)
    mask[:, 3:] = 1
    mask[0, 7:] = 0
    weights = ld_token_weights(mask, 2, 0.3)
    with torch.no_grad():
        sums, counts = sequence_logps(model, ids, attn, weights, chunk=3)
        plain, plain_counts = sequence_logps(model, ids, attn, mask, chunk=3)
        logits = model(input_ids=ids, attention_mask=attn).logits.float()  # (B, T, V)
    per_token = logits[:, :-1].log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]  # (B, T-1)
    torch.testing.assert_close(sums, (per_token * weights[:, 1:]).sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, (per_token * mask[:, 1:]).sum(1), rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, plain_counts)  # counts stay token counts


def test_ld_dpo_config():
    cfg = build_config(TrainConfig, {"model": "m", "data": "d", "ld_alpha": 0.5})
    assert cfg.ld_alpha == 0.5
    for bad in ({"ld_alpha": 0.0}, {"ld_alpha": 1.5}, {"ld_alpha": 0.5, "loss": "simpo"},
                {"ld_alpha": 0.5, "reference": "precomputed"}):
        with pytest.raises(ConfigError, match="ld_alpha"):
            build_config(TrainConfig, {"model": "m", "data": "d", **bad})


def test_ld_dpo_trains_and_alpha_one_is_dpo(tmp_path: Path, llama_dir: Path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    common = {"model": str(llama_dir), "data": str(data), "max_steps": 6, "log_every": 1,
              "reference": "copy"}
    ld = read_metrics(train(train_config(tmp_path / "ld", **common, ld_alpha=0.5)))
    assert ld[-1]["rewards/margins"] > ld[0]["rewards/margins"] + 0.05
    one = read_metrics(train(train_config(tmp_path / "one", **common, ld_alpha=1.0)))
    dpo = read_metrics(train(train_config(tmp_path / "dpo", **common)))
    for a, b in zip(one, dpo, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    # the chosen completions (3 tokens) are longer than most rejected ones (2): α < 1 scores
    # less of them, so the logged log-probs differ from plain DPO's
    assert ld[0]["logps/chosen"] != pytest.approx(dpo[0]["logps/chosen"])


def test_wpo_sums_from_the_chunked_head_equal_full_logits(llama_dir: Path):
    model = load_model(str(llama_dir))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (4, 8), generator=g)
    attn = torch.ones_like(ids)
    mask = torch.zeros_like(ids)
    mask[:, 2:] = 1
    mask[1, 6:] = 0
    sums, counts, aligned = sequence_logps_wpo(model, ids, attn, mask, chunk=5)
    plain, _ = sequence_logps(model, ids, attn, mask, chunk=5)
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=attn).logits.float()[:, :-1].log_softmax(-1)
    token = logp.gather(2, ids[:, 1:, None])[..., 0]  # (B, T-1)
    log_sum_sq = (2 * logp).logsumexp(-1)  # (B, T-1) log Σ_v p_v²
    want = ((token - log_sum_sq) * mask[:, 1:]).sum(1)
    torch.testing.assert_close(aligned, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, plain)
    assert counts.tolist() == [6, 4, 6, 6]
    assert not aligned.requires_grad and sums.requires_grad  # the weight carries no gradient


def test_wpo_trains_and_logs_its_weights(tmp_path: Path, llama_dir: Path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    rows = read_metrics(train(train_config(tmp_path, model=str(llama_dir), data=str(data),
                                           max_steps=6, log_every=1, use_weighting=True)))
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"] + 0.01
    assert all(r["wpo_weight"] > 0 and math.isfinite(r["wpo_weight"]) for r in rows)
    # the first step's loss is log 2 times the mean WPO weight (policy == reference)
    assert rows[0]["loss"] == pytest.approx(math.log(2) * rows[0]["wpo_weight"], rel=1e-4)
