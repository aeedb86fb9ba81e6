"""What training tells the user: rows past the model's context window are warned about (once,
with the count), and a skipped non-finite step is logged as skipped, never as a loss of 0."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.losses import LOSS_SPECS, LOSSES, LossOutput, register
from tether.model.tiny import tiny_llama
from tether.training.loop import train


def test_rows_beyond_the_context_window_are_warned_once_with_the_count(tokenizer, tmp_path,
                                                                       caplog):
    model = tmp_path / "short"
    tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1,
               max_positions=24).save_pretrained(model)
    tokenizer.save_pretrained(model)
    rows = make_pairs(12)
    for r in rows[:5]:  # about 40 tokens: past the 24-token window
        r["prompt"] = "the cat sat on the mat " * 6 + r["prompt"]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="tether"):
        run = train(train_config(tmp_path, model=str(model), data=str(data), max_steps=1))
    warned = [r.getMessage() for r in caplog.records if "context window" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "train: 5 of 12 rows" in warned[0] and "24 tokens" in warned[0]
    assert "max_length=24" in warned[0]
    audit = json.loads((run / "data_audit.json").read_text())
    assert audit["train_rows_beyond_context"] == 5


def test_rows_within_the_window_are_not_warned(llama_dir, tmp_path, caplog):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    with caplog.at_level(logging.WARNING, logger="tether"):
        run = train(train_config(tmp_path, model=str(llama_dir), data=str(data), max_steps=1))
    assert "context window" not in caplog.text
    assert json.loads((run / "data_audit.json").read_text())["train_rows_beyond_context"] == 0


@pytest.fixture
def nan_on():
    """A test objective: DPO, except non-finite on the calls listed in the returned set."""
    bad: set[int] = set()
    calls = {"n": 0}

    @register("nan_on_call")
    def nan_on_call(pc, pr, rc, rr, *, beta):
        calls["n"] += 1
        out = LOSSES["dpo"](pc, pr, rc, rr, beta=beta)
        if calls["n"] in bad:
            return LossOutput(out.losses * float("nan"), out.chosen_rewards, out.rejected_rewards)
        return out

    yield bad
    del LOSSES["nan_on_call"], LOSS_SPECS["nan_on_call"]


def test_skipped_step_is_logged_as_skipped_not_as_a_zero_loss(llama_dir, tmp_path, nan_on):
    nan_on.add(2)
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(data),
                             loss="nan_on_call", max_steps=3))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    skipped = rows[1]
    assert skipped["skipped"] is True and skipped["skipped_steps"] == 1
    assert "loss" not in skipped and "rewards/accuracies" not in skipped
    assert "grad_norm" not in skipped
    for r in (rows[0], rows[2]):
        assert "skipped" not in r and r["loss"] > 0.5


def test_a_window_with_a_skipped_step_averages_only_the_finite_ones(llama_dir, tmp_path,
                                                                   nan_on):
    """log_every=2: step 2 is skipped, so the line for steps 1-2 is step 1's numbers."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    one = train(train_config(tmp_path / "a", model=str(llama_dir), data=str(data),
                             loss="nan_on_call", max_steps=1))
    nan_on.add(3)  # the second run's step 2 (call 1 was the first run's only step)
    two = train(train_config(tmp_path / "b", model=str(llama_dir), data=str(data),
                             loss="nan_on_call", max_steps=2, log_every=2))
    (first,) = read_metrics(one)
    (line,) = read_metrics(two)
    assert "skipped" not in line and line["skipped_steps"] == 1
    for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
        assert line[key] == pytest.approx(first[key], rel=1e-6), key
