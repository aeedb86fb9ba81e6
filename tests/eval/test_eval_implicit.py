"""Implicit-reward accuracy: hand-computed statistics and log-probs checked against logits."""

from __future__ import annotations

import pytest
import torch

from tether.data.records import PreferenceRecord
from tether.data.tokenization import tokenize_records
from tether.eval.implicit import implicit_reward_stats, pair_logps
from tether.model.tiny import tiny_llama


def test_implicit_reward_hand_computed():
    t = torch.tensor
    # rewards = 0.5·(policy − reference): chosen [0.5, 0.0], rejected [−0.5, 0.5]
    # margins [1.0, −0.5]: one of two pairs ranked right; mean margin 0.25
    out = implicit_reward_stats((t([-1.0, -2.0]), t([-3.0, -1.0])),
                                (t([-2.0, -2.0]), t([-2.0, -2.0])), beta=0.5)
    assert out["n"] == 2 and out["accuracy"] == 0.5
    assert out["margin_mean"] == pytest.approx(0.25)
    assert out["chosen_reward_mean"] == pytest.approx(0.25)
    assert out["rejected_reward_mean"] == pytest.approx(0.0)
    # Wilson(1 of 2): center (0.5 + 0.9604) / 2.9208 = 0.5, half 1.96/2.9208·sqrt(0.125+0.2401)
    assert out["wilson95"] == pytest.approx([0.094529, 0.905471], abs=1e-3)


@torch.no_grad()
def test_pair_logps_match_full_logits(tokenizer):
    model = tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1).eval()
    records = [PreferenceRecord("the cat ?", " yes please", " no", "r0"),
               PreferenceRecord("a big red dog sat ?", " thanks", " no no no the mat", "r1")]
    rows, _ = tokenize_records(tokenizer, records, chat=False, max_length=64)
    chosen, rejected = pair_logps(model, rows, tokenizer.pad_token_id, batch_size=2)
    for i, row in enumerate(rows):
        for got, completion in ((chosen[i], row.chosen), (rejected[i], row.rejected)):
            ids = torch.tensor([row.prompt + completion])
            logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # (T-1, V)
            targets = ids[0, 1:]
            per_token = logp[torch.arange(len(targets)), targets][len(row.prompt) - 1 :]
            assert got.item() == pytest.approx(per_token.sum().item(), abs=1e-4)
