"""Padding-free batches give the padded batch's log-probs, gradients and training losses."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from conftest import make_pairs, train_config, write_jsonl
from tether.data.batching import collate
from tether.data.tokenization import TokenizedPair
from tether.model.logprobs import SequenceLogProbs, sequence_logps
from tether.model.packing import collate_packed, scorer_inputs
from tether.model.prefix_sharing import SharedPrefixBatch, batch_logps, make_batch
from tether.model.tiny import tiny_gpt2, tiny_llama
from tether.training.loop import train


def random_rows(n: int, seed: int = 0, answers: int = 2) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, 300) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair([1, *ids(1, 12)], ids(1, 9), ids(1, 9) if answers == 2 else [])
            for _ in range(n)]


def padded_logps(model, rows):
    b = collate(rows, range(len(rows)), 0)
    return sequence_logps(model, b.input_ids, b.attention_mask, b.completion_mask, 7)


def test_packed_layout_hand_built():
    rows = [TokenizedPair([1, 5], [6, 7], [8]), TokenizedPair([1], [9], [10, 11])]
    b = collate_packed(rows, [3, 4])
    # chosen of row 0, chosen of row 1, rejected of row 0, rejected of row 1 (collate's order)
    assert b.input_ids.tolist() == [[1, 5, 6, 7, 1, 9, 1, 5, 8, 1, 10, 11]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]]
    assert b.completion_mask.tolist() == [[0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1]]
    assert b.sequence.tolist() == [[0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3]]
    assert (b.sequences, b.pairs, b.tokens, b.attention_mask) == (4, 2, 12, None)
    assert b.tokens == int(collate(rows, [3, 4], 0).attention_mask.sum())  # no padding counted


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logps_and_gradients_equal_padded(tokenizer, attn):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    model.config._attn_implementation = attn
    other = copy.deepcopy(model)
    rows = random_rows(5, seed=1)
    want, want_counts = padded_logps(model, rows)
    got, counts = batch_logps(other, collate_packed(rows, range(5)), 7)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert counts.tolist() == want_counts.tolist()
    (want * torch.linspace(-1, 1, 10)).sum().backward()  # unequal weights per sequence
    (got * torch.linspace(-1, 1, 10)).sum().backward()
    for (n, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=n)


def test_packed_equals_padded_gpt2_sft_rows_and_an_empty_prompt(tokenizer):
    model = tiny_gpt2(tokenizer, hidden=32, layers=2, heads=4)  # learned absolute positions
    rows = [*random_rows(4, seed=2, answers=1), TokenizedPair([], [7, 8, 9], [])]
    want, want_counts = padded_logps(model, rows)
    got, counts = SequenceLogProbs(model, 7)(**scorer_inputs(collate_packed(rows, range(5))))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert counts.tolist() == want_counts.tolist() and counts[-1] == 2  # token 7 is unscored


def test_ranked_rows_with_fewer_answers_score_zero_as_padded(tokenizer):
    model = tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2)
    rows = random_rows(3, seed=3)
    rows[1] = TokenizedPair(rows[1].prompt, rows[1].chosen, [])  # one answer, K = 2
    want, want_counts = padded_logps(model, rows)
    got, counts = batch_logps(model, collate_packed(rows, range(3)), 7)
    assert got[4] == 0 and counts[4] == 0  # row 1's missing rejected
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert counts.tolist() == want_counts.tolist()


def test_make_batch_packs_plain_rows_and_pairs_under_prefix_sharing():
    rows = random_rows(4, seed=4)
    assert make_batch(rows, range(4), 0, prefix_sharing=False, packing=True).input_ids.shape[0] == 1
    shared = make_batch(rows, range(4), 0, prefix_sharing=True, packing=True)
    assert isinstance(shared, SharedPrefixBatch) and shared.input_ids.shape[0] == 1
    assert shared.input_ids.numel() == sum(len(r.prompt) + len(r.chosen) + len(r.rejected)
                                           for r in rows)  # not one padding position


def test_train_packed_gives_the_padded_losses(tmp_path, llama_dir):
    # reference=copy: the frozen copy scores packed batches too
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    losses = {}
    for packing in (False, True):
        run = train(train_config(tmp_path / str(packing), model=str(llama_dir), data=str(data),
                                 max_steps=3, prefix_sharing=False, packing=packing,
                                 reference="copy"))
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[packing] = [r["loss"] for r in rows if "loss" in r]  # not health events
    assert losses[True][-1] != pytest.approx(losses[True][0], abs=1e-4)  # it trained
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
