"""Reference strategies: the precomputed cache equals a frozen copy, and is keyed correctly."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.data.batching import collate
from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.model.loading import load_model
from tether.model.logprobs import sequence_logps
from tether.model.tiny import tiny_llama
from tether.training.loop import train
from tether.training.reference import FrozenCopy, Precomputed, score_rows, weights_fingerprint

METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected"]


def rows_of(tokenizer, n, seed=0):
    records = [PreferenceRecord(r["prompt"], r["chosen"], r["rejected"])
               for r in make_pairs(n, seed)]
    return tokenize_records(tokenizer, records, chat=False, max_length=64)[0]


def build(model, splits, tokenizer, cache_dir, **settings):
    return Precomputed.build(
        model, splits, pad_id=tokenizer.pad_token_id, batch_size=3, device=torch.device("cpu"),
        chunk=4, cache_dir=cache_dir, settings={"dtype": "float32", **settings}, progress=False,
    )


@pytest.fixture
def policy(llama_dir):
    return load_model(str(llama_dir))


def test_weights_fingerprint(policy, tokenizer):
    same = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)  # the fixture's seed
    assert weights_fingerprint(policy) == weights_fingerprint(same)
    with torch.no_grad():
        same.model.norm.weight[0] += 1e-3
    assert weights_fingerprint(policy) != weights_fingerprint(same)


def test_precomputed_equals_frozen_copy_and_direct_scoring(policy, tokenizer, tmp_path):
    rows = rows_of(tokenizer, 7)
    ref = build(policy, {"train": rows}, tokenizer, tmp_path)
    copy = FrozenCopy(policy, chunk=5)
    for idx in ([0, 1, 2], [6, 3], [4, 5]):
        batch = collate([rows[i] for i in idx], idx, tokenizer.pad_token_id)
        with torch.no_grad():
            direct, _ = sequence_logps(policy, batch.input_ids, batch.attention_mask,
                                       batch.completion_mask)
        pc, pr = ref(batch, "train")
        cc, cr = copy(batch, "train")
        torch.testing.assert_close(pc, direct[: len(idx)], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pr, direct[len(idx):], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cc, pc, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cr, pr, rtol=1e-5, atol=1e-5)


def test_cache_hit_and_every_kind_of_miss(policy, tokenizer, tmp_path):
    rows, eval_rows = rows_of(tokenizer, 6), rows_of(tokenizer, 3, seed=1)
    splits = {"train": rows, "eval": eval_rows}
    first = build(policy, splits, tokenizer, tmp_path)
    files = sorted(tmp_path.glob("ref-*.safetensors"))
    assert first.cache_hits == 0 and len(files) == 2

    again = build(policy, splits, tokenizer, tmp_path)
    assert again.cache_hits == 2
    assert sorted(tmp_path.glob("ref-*.safetensors")) == files
    for split in splits:
        for a, b in zip(first.table[split], again.table[split], strict=True):
            assert torch.equal(a, b)

    other_data = build(policy, {"train": rows_of(tokenizer, 6, seed=2)}, tokenizer, tmp_path)
    assert other_data.cache_hits == 0
    other_settings = build(policy, {"train": rows}, tokenizer, tmp_path, dtype="bfloat16")
    assert other_settings.cache_hits == 0
    with torch.no_grad():
        policy.lm_head.weight[0, 0] += 1e-3
    other_weights = build(policy, {"train": rows}, tokenizer, tmp_path)
    assert other_weights.cache_hits == 0
    assert len(list(tmp_path.glob("ref-*.safetensors"))) == 5
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_frozen_copy_is_frozen_and_keeps_dtype(llama_dir, tokenizer):
    policy = load_model(str(llama_dir), dtype=torch.bfloat16)
    copy = FrozenCopy(policy, chunk=4)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.model.parameters())
    rows = rows_of(tokenizer, 2)
    batch = collate(rows, [0, 1], tokenizer.pad_token_id)
    before = copy(batch, "train")
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(0.5)  # training the policy must not move the reference
    after = copy(batch, "train")
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_score_rows_restores_training_mode(policy, tokenizer):
    policy.train()
    chosen, rejected = score_rows(policy, rows_of(tokenizer, 3), tokenizer.pad_token_id, 2,
                                  torch.device("cpu"), 4, progress=False)
    assert policy.training and chosen.shape == rejected.shape == (3,)
    assert (chosen < 0).all() and (rejected < 0).all()


# --------------------------------------------------------------------------- through train()


def test_precomputed_trains_like_copy_and_second_run_reads_cache(
    llama_dir, pairs_file, tmp_path, tokenizer, caplog
):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", make_pairs(8, seed=3))
    common = {"model": str(llama_dir), "data": str(pairs_file), "eval_data": str(eval_file),
              "max_steps": 3, "lr": 1e-2, "cache_dir": str(tmp_path / "cache")}
    copy_run = train(train_config(tmp_path / "copy", reference="copy", **common))
    with caplog.at_level(logging.INFO, logger="tether"):
        pre_run = train(train_config(tmp_path / "pre", reference="precomputed", **common))
    assert "read from cache" not in caplog.text
    cache = tmp_path / "cache" / "reference"
    files = sorted(cache.glob("ref-*.safetensors"))
    assert len(files) == 2  # train and eval splits

    copy_m, pre_m = read_metrics(copy_run), read_metrics(pre_run)
    assert len(copy_m) == len(pre_m) == 4  # 3 steps + final eval
    for a, b in zip(copy_m, pre_m, strict=True):
        for key in [*METRICS, *(f"eval/{m}" for m in METRICS)]:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    assert copy_m[-1]["eval/rewards/margins"] != 0  # the policy moved: a real comparison

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tether"):
        again = train(train_config(tmp_path / "again", reference="precomputed", **common))
    assert caplog.text.count("read from cache") == 2
    assert sorted(cache.glob("ref-*.safetensors")) == files
    assert [r["loss"] for r in read_metrics(again)[:3]] == [r["loss"] for r in pre_m[:3]]

    # Different data: a miss (a new cache file), not a stale hit.
    other = write_jsonl(tmp_path / "other.jsonl", make_pairs(16, seed=5))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tether"):
        train(train_config(tmp_path / "other", **{**common, "data": str(other),
                                                  "eval_data": None}))
    assert "read from cache" not in caplog.text
    assert len(list(cache.glob("ref-*.safetensors"))) == 3


def test_ranked_reference_is_cached_on_disk_and_trains_like_copy(llama_dir, tmp_path, caplog):
    """Plackett-Luce over 3 responses: the precomputed (N, K) table equals a frozen copy, and a
    second run reads it from the cache instead of scoring again."""
    def ranked(n: int, seed: int) -> list[dict]:
        return [{"prompt": p["prompt"], "ranking": [3, 1, 2],
                 "responses": [p["rejected"], " yes please thanks", " yes"]}
                for p in make_pairs(n, seed=seed)]

    data = write_jsonl(tmp_path / "ranked.jsonl", ranked(12, 1))
    held = write_jsonl(tmp_path / "held.jsonl", ranked(6, 2))
    common = {"model": str(llama_dir), "data": str(data), "eval_data": str(held),
              "loss": "plackett_luce", "max_steps": 3, "lr": 1e-2,
              "cache_dir": str(tmp_path / "cache")}
    copy_m = read_metrics(train(train_config(tmp_path / "copy", reference="copy", **common)))
    pre_m = read_metrics(train(train_config(tmp_path / "pre", reference="precomputed",
                                            **common)))
    files = sorted((tmp_path / "cache" / "reference").glob("ref-*.safetensors"))
    assert len(files) == 2  # train and eval tables
    for a, b in zip(copy_m, pre_m, strict=True):
        for key in ("loss", "rewards/margins", "eval/rewards/margins"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tether"):
        again = read_metrics(train(train_config(tmp_path / "again", reference="precomputed",
                                                **common)))
    assert caplog.text.count("read from cache") == 2
    assert sorted((tmp_path / "cache" / "reference").glob("ref-*.safetensors")) == files
    assert [r.get("loss") for r in again] == [r.get("loss") for r in pre_m]
