"""bench/gpu.py: its FLOP counts, its table logic, and its CPU smoke run (tether's side only:
TRL's virtualenv is not needed, and its absence is reported, not an error)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu


def test_parameter_counts_are_the_published_ones():
    assert gpu.SHAPES["1b"].params() == 1_235_814_400  # Llama-3.2-1B: 1.24 B
    assert gpu.SHAPES["8b"].params() == 8_030_261_248  # Llama-3.1-8B: 8.03 B


def test_parameter_count_is_the_built_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    s = gpu.SHAPES["smoke"]
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, vocab_size=s.vocab,
        tie_word_embeddings=s.tied))
    assert s.params() == sum(p.numel() for p in model.parameters())


def test_flops_per_token_hand_computed():
    # tied: every parameter counts (the embedding is the LM head); 12·16 layers·2048·T
    assert gpu.SHAPES["1b"].flops_per_token(2048) == 6 * 1_235_814_400 + 12 * 16 * 2048 * 2048
    # untied: the input embedding (128,256 × 4,096) is a lookup, not a matmul
    n = 8_030_261_248 - 128_256 * 4096
    assert gpu.SHAPES["8b"].flops_per_token(1024) == 6 * n + 12 * 32 * 4096 * 1024


def test_what_fits():
    gib = 2**30
    assert gpu.fits(gpu.SHAPES["1b"], 1, 80 * gib)  # 16 B × 1.24 B × 1.25 = 23 GiB
    assert not gpu.fits(gpu.SHAPES["8b"], 1, 141 * gib)  # 150 GiB on one H200: no
    assert gpu.fits(gpu.SHAPES["8b"], 8, 80 * gib)  # FSDP2 over 8 H100s: 19 GiB each


def test_longest_fit_and_ratios_skip_what_ran_out_of_memory():
    def ok(tool, seq, tps, gb):
        return {"model": "m", "tool": tool, "seq": seq, "oom": False, "tokens_per_s": tps,
                "peak_gpu_gb": gb}

    rows = [ok("tether", 1024, 300.0, 10.0), ok("tether", 2048, 280.0, 20.0),
            {"model": "m", "tool": "tether", "seq": 4096, "oom": True},
            ok("trl", 1024, 100.0, 40.0), {"model": "m", "tool": "trl", "seq": 2048, "oom": True}]
    assert gpu.longest(rows) == {("m", "tether"): 2048, ("m", "trl"): 1024}
    ratios = gpu._ratios(rows)
    assert "| m | 1024 | 3.00× | 0.25× |" in ratios
    assert not any("| 2048 |" in line for line in ratios)  # TRL has no 2048 to compare


def test_smoke_run_without_trl(tmp_path):
    res = gpu.main(["--smoke", "--seqs", "32", "--peak-tflops", "0.001", "--workdir",
                    str(tmp_path / "w"), "--out", str(tmp_path / "out"),
                    "--trl-python", str(tmp_path / "no-trl" / "python")])
    (row,) = res["rows"]
    assert (row["model"], row["tool"], row["seq"], row["oom"]) == ("tiny Llama", "tether", 32,
                                                                    False)
    assert row["tokens_per_s"] > 0 and row["pairs_per_step"] == 4  # 256 tokens ÷ (2 × 32)
    flops = gpu.SHAPES["smoke"].flops_per_token(32)
    assert row["mfu"] == pytest.approx(flops * row["tokens_per_s"] / 1e9)
    assert "does not exist" in res["skipped"]["trl"]
    md = (tmp_path / "out" / "gpu-smoke.md").read_text()
    assert "| tiny Llama | 32 | tether | 4 |" in md and "Not run: trl:" in md
