"""Unpaired (KTO) and ranked rows: reading, validation with file:line, tokenizing, batching,
and the ranked reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import make_pairs, write_jsonl
from tether.data.batching import collate
from tether.data.tokenization import TokenizedPair
from tether.errors import DataError
from tether.model.tiny import tiny_llama
from tether.shapes import (
    TokenizedRanked,
    TokenizedUnpaired,
    TokenizedWeightedPair,
    UnpairedRecord,
    load_ranked,
    load_unpaired,
    shape_of,
)
from tether.shapes.unpaired import _mismatched
from tether.training.reference import FrozenCopy, Precomputed


def load_shaped(cfg, path, tokenizer):
    """The objective's data shape loads the file: (rows, truncation audit, report, chat)."""
    loaded = shape_of(cfg.loss).load(cfg, path, tokenizer)
    return loaded.rows, loaded.truncation, loaded.report, loaded.chat_template


class Cfg:
    """The fields of TrainConfig that a shape's load reads."""

    def __init__(self, loss: str, **over: object) -> None:
        self.loss, self.seed, self.split, self.data_format = loss, 0, "train", "auto"
        self.field_map: dict[str, str] = {}
        self.prompt_template = None
        self.chat_template, self.max_length, self.max_prompt_length = "auto", 64, None
        self.chat_template_kwargs: dict = {}
        self.rank_pairs, self.rank_weight_by_gap = "all", False
        self.__dict__.update(over)


RANKED = [
    {"prompt": "the cat ?", "responses": [" no red", " yes please thanks", " yes"],
     "scores": [0.0, 2.0, 1.0]},
    {"prompt": "a dog ran ?", "responses": [" yes please", " no", " no mat", " yes thanks"],
     "ranking": [1, 3, 3, 2]},
]


# ------------------------------------------------------------------ unpaired


def test_unpaired_rows_and_labels(tmp_path: Path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "a ?", "completion": " yes", "label": True},
        {"prompt": "b ?", "completion": " no", "label": "false"},  # CSV-style strings
        {"prompt": "c ?", "completion": " yes", "label": 1},
    ])
    records, report = load_unpaired(str(path))
    assert [r.label for r in records] == [True, False, True]
    assert records[1].source == f"{path}:2" and report.kept == 3


def test_unpaired_bad_label_names_file_line_and_field(tmp_path: Path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "a ?", "completion": " yes", "label": True},
        {"prompt": "b ?", "completion": " no", "label": "maybe"},
    ])
    with pytest.raises(DataError, match=rf"{path}:2: field 'label' must be true or false"):
        load_unpaired(str(path))
    missing = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "label": True}])
    with pytest.raises(DataError, match=r"m.jsonl:1: missing field 'completion'"):
        load_unpaired(str(missing))


def test_pairs_split_into_desirable_and_undesirable_rows(tmp_path: Path):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(3))
    records, report = load_unpaired(str(path))
    assert [r.label for r in records] == [True, False] * 3
    assert records[0].completion == " yes please thanks" and records[0].prompt == records[1].prompt
    assert "split" in report.notes[0]


def test_mismatched_completions_come_from_other_prompts():
    # pairs split in two share their prompt: the mismatch must skip the twin row too
    records = [UnpairedRecord(f"p{i // 2}", f"c{i}", i % 2 == 0) for i in range(10)]
    for seed in range(5):
        match = _mismatched(records, seed)
        assert all(records[j].prompt != records[i].prompt for i, j in enumerate(match))
    with pytest.raises(DataError, match="same prompt"):
        _mismatched([UnpairedRecord("p", "a", True), UnpairedRecord("p", "b", False)], 0)


def test_kto_rows_carry_label_and_mismatched_completion(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    shaped = load_shaped(Cfg("kto"), str(path), tokenizer)
    assert shaped is not None
    rows, audit, _, chat = shaped
    assert len(rows) == 8 and audit.rows == 8 and not chat
    assert all(isinstance(r, TokenizedUnpaired) for r in rows)
    assert [r.label for r in rows] == [True, False] * 4  # type: ignore[attr-defined]
    yes = tokenizer(" yes please thanks", add_special_tokens=False)["input_ids"]
    assert rows[0].chosen[: len(yes)] == yes  # the labelled completion
    assert rows[0].rejected != rows[0].chosen and rows[0].rejected != rows[1].chosen


# ------------------------------------------------------------------ ranked


def test_ranked_rows_ranks_become_scores_and_ties_drop(tmp_path: Path):
    tied = {"prompt": "x", "responses": [" a", " b"], "scores": [1, 1]}
    path = write_jsonl(tmp_path / "r.jsonl", [*RANKED, tied])
    records, report = load_ranked(str(path))
    assert [r.scores for r in records] == [[0.0, 2.0, 1.0], [-1.0, -3.0, -3.0, -2.0]]
    assert report.kept == 2 and "1 rows dropped" in report.notes[0]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "x", "responses": [" a", " b"], "scores": [1, 2], "ranking": [1, 2]},
         "exactly one of 'scores'"),
        ({"prompt": "x", "responses": [" a", " b"], "scores": [1]},
         "field 'scores' must be a list of 2"),
        ({"prompt": "x", "responses": [" a", " b"], "ranking": [0, 1]},
         "field 'ranking[0]' must be a rank >= 1"),
        ({"prompt": "x", "responses": [" a", " b"], "scores": [1, True]},
         "field 'scores[1]' must be a finite"),
        ({"prompt": "x", "responses": [" a"], "scores": [1]}, "at least 2 answers"),
        ({"prompt": "x", "responses": [" a", 3], "scores": [1, 2]},
         "field 'responses[1]' must be a string"),
        ({"responses": [" a", " b"], "scores": [1, 2]}, "missing field 'prompt'"),
    ],
)
def test_ranked_row_problems_name_file_line_and_field(tmp_path: Path, row: dict, message: str):
    path = write_jsonl(tmp_path / "r.jsonl", [RANKED[0], row])
    with pytest.raises(DataError, match=r"r\.jsonl:2: .*" + re.escape(message)):
        load_ranked(str(path))


def test_ranked_rows_tokenize_best_first(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "r.jsonl", RANKED)
    shaped = load_shaped(Cfg("plackett_luce"), str(path), tokenizer)
    assert shaped is not None
    rows = shaped[0]
    assert all(isinstance(r, TokenizedRanked) for r in rows)
    first = rows[0]
    assert isinstance(first, TokenizedRanked)
    ids = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert first.scores == (2.0, 1.0, 0.0)
    assert first.responses[0][:-1] == ids(" yes please thanks")  # best first, then EOS
    assert first.responses[2][:-1] == ids(" no red")
    assert rows[1].scores == (-1.0, -2.0, -3.0, -3.0)  # type: ignore[attr-defined]


def test_ranked_file_with_a_pairwise_loss_expands_into_weighted_pairs(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "r.jsonl", RANKED)
    shaped = load_shaped(Cfg("dpo", rank_weight_by_gap=True), str(path), tokenizer)
    assert shaped is not None
    rows = shaped[0]
    # row 1: 3 pairs; row 2: 4 responses with one tie -> 6 - 1 = 5 pairs
    assert len(rows) == 8 and all(isinstance(r, TokenizedWeightedPair) for r in rows)
    weights = [r.weight for r in rows]  # type: ignore[attr-defined]
    assert sum(weights) / len(weights) == pytest.approx(1.0)  # rescaled to mean 1
    # row 1 gaps over range 2: 0.5, 1, 0.5 ; row 2 (range 2): 0.5, 1, 1, 0.5, 0.5
    raw = [0.5, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5]
    assert weights == pytest.approx([w / (sum(raw) / 8) for w in raw])
    plain = load_shaped(Cfg("dpo"), str(write_jsonl(tmp_path / "p.jsonl", make_pairs(2))),
                        tokenizer)[0]
    assert len(plain) == 2 and all(type(r) is TokenizedPair for r in plain)  # no weights


def test_pairs_file_with_a_ranked_loss_reads_rankings_of_two(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", make_pairs(3))
    shaped = load_shaped(Cfg("rrhf"), str(path), tokenizer)
    assert shaped is not None
    rows, _, report, _ = shaped
    assert [r.scores for r in rows] == [(1.0, 0.0)] * 3  # type: ignore[attr-defined]
    assert rows[0].responses[0] == rows[0].chosen  # type: ignore[attr-defined]
    assert "rankings of two" in report.notes[0]


def test_collate_lays_out_k_completions_and_pads_short_rows(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "r.jsonl", RANKED)
    rows = load_shaped(Cfg("rrhf"), str(path), tokenizer)[0]  # type: ignore[index]
    batch = collate(rows, [0, 1], tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4 * 2 and batch.pairs == 2  # K = 4 blocks of B = 2
    counts = batch.completion_mask.sum(1).view(4, 2)  # (K, B)
    assert counts[3, 0] == 0 and counts[3, 1] > 0  # row 0 has 3 responses: its 4th is empty
    assert counts[0, 0] == len(rows[0].responses[0])  # type: ignore[attr-defined]


def test_ranked_precomputed_reference_matches_a_frozen_copy(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "r.jsonl", RANKED)
    rows = load_shaped(Cfg("plackett_luce"), str(path), tokenizer)[0]  # type: ignore[index]
    torch.manual_seed(0)
    model = tiny_llama(tokenizer, hidden=32, layers=1, heads=4, kv_heads=2)
    table = Precomputed.build(model, {"train": rows}, pad_id=tokenizer.pad_token_id,
                              batch_size=1, device=torch.device("cpu"), chunk=64,
                              progress=False)
    batch = collate(rows, [0, 1], tokenizer.pad_token_id)
    first, rest = table(batch, "train")
    copy_first, copy_rest = FrozenCopy(model, 64)(batch, "train")
    torch.testing.assert_close(first, copy_first)
    # the copy scores the empty 4th response of row 0 as 0, as the table does
    torch.testing.assert_close(rest, copy_rest)
