"""Batches: padding and masks, and the per-step order that makes accumulation exact."""

from __future__ import annotations

from tether.data.batching import collate, micro_batches, step_batches
from tether.data.tokenization import TokenizedPair


def test_collate_stacks_chosen_over_rejected_with_masks():
    rows = [TokenizedPair([1, 5], [6, 2], [7, 8, 2]), TokenizedPair([1], [9, 2], [2])]
    b = collate(rows, [4, 7], pad_id=0)
    assert b.pairs == 2 and b.index.tolist() == [4, 7]
    assert b.input_ids.tolist() == [
        [1, 5, 6, 2, 0],  # prompt 0 + chosen 0
        [1, 9, 2, 0, 0],  # prompt 1 + chosen 1
        [1, 5, 7, 8, 2],  # prompt 0 + rejected 0
        [1, 2, 0, 0, 0],  # prompt 1 + rejected 1
    ]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    assert b.completion_mask.tolist() == [
        [0, 0, 1, 1, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]
    ]
    assert b.tokens == 4 + 3 + 5 + 2


def test_collate_sft_rows():
    b = collate([TokenizedPair([1, 5], [6, 2], [])], [0], pad_id=0)
    assert b.input_ids.shape == (1, 4) and b.completion_mask.tolist() == [[0, 0, 1, 1]]


def test_step_batches_cover_each_row_once_and_depend_only_on_rows_per_step():
    lengths = [(i * 7) % 13 + 1 for i in range(40)]
    steps = step_batches(lengths, 8, epoch=0, seed=3)
    flat = [i for s in steps for i in s]
    assert len(steps) == 5 and all(len(s) == 8 for s in steps)
    assert sorted(flat) == list(range(40))
    assert steps == step_batches(lengths, 8, epoch=0, seed=3)  # seeded
    assert steps != step_batches(lengths, 8, epoch=1, seed=3)  # reshuffled each epoch
    # grouping by length: within a step, rows are sorted longest first (a 50-step window)
    assert all([lengths[i] for i in s] == sorted((lengths[i] for i in s), reverse=True)
               for s in steps)


def test_partial_last_step_is_dropped():
    steps = step_batches([1] * 10, 4, epoch=0, seed=0, group_by_length=False)
    assert [len(s) for s in steps] == [4, 4]
    assert [len(s) for s in step_batches([1] * 3, 4, epoch=0, seed=0)] == [3]


def test_micro_batches_split_a_step_in_order():
    assert list(micro_batches([5, 2, 9, 1, 7, 3, 8, 0], 2)) == [[5, 2, 9, 1], [7, 3, 8, 0]]
    assert list(micro_batches([5, 2, 9], 2)) == [[5, 2], [9]]
    assert list(micro_batches([5, 2, 9], 1)) == [[5, 2, 9]]
