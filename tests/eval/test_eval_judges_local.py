"""Rule and reward-model judges (the local, deterministic ones)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from tether.errors import JudgeError
from tether.eval.judges.base import Judge, JudgeItem
from tether.eval.judges.reward_model import RewardModelJudge
from tether.eval.judges.rule import RuleJudge
from tether.model.tiny import train_tokenizer


def test_rule_scoring_exact_answer_reads_the_row():
    judge = RuleJudge("tether.eval.rules:exact_answer")
    assert isinstance(judge, Judge) and judge.deterministic
    row = {"answer": "Paris"}
    assert judge("Capital of France?", " paris.", "Lyon", row).winner == "A"
    assert judge("Capital of France?", "Lyon", "PARIS", row).winner == "B"
    assert judge("q", "Lyon", "Nice", row).winner == "tie"
    v = judge("q", "Paris", "Nice", {"label": "Paris"})  # wrong field: unparsed, not a loss
    assert v.winner == "unparsed" and "label" in v.raw and v.error


def test_rule_args_bind_keyword_parameters():
    judge = RuleJudge("tether.eval.rules:exact_answer", {"field": "label"})
    assert judge("q", "Paris", "Nice", {"label": "Paris"}).winner == "A"
    assert judge.identity == 'rule:tether.eval.rules:exact_answer{"field": "label"}'
    limit = RuleJudge("tether.eval.rules:length_limit", {"max_chars": "5"})
    assert limit("q", "short", "too long", None).winner == "A"
    rx = RuleJudge("tether.eval.rules:regex", {"pattern": r"^\d+$"})
    assert rx("q", "forty-two", "42", None).winner == "B"
    rx_row = RuleJudge("tether.eval.rules:regex", {"field": "pat"})
    assert rx_row("q", "abc", "xyz", {"pat": "y"}).winner == "B"


def test_rule_comparing_two_answers():
    judge = RuleJudge("tether.eval.rules:shorter")
    assert judge("q", "a", "bbb").winner == "A"
    assert judge("q", "aaa", "b").winner == "B"
    assert judge("q", "", "b").winner == "B"  # an empty answer never wins
    items = [JudgeItem("q", "a", "bb"), JudgeItem("q", "cc", "c")]
    assert [v.winner for v in judge.judge_many(items)] == ["A", "B"]


@pytest.mark.parametrize(
    ("spec", "args", "fragment"),
    [
        ("no_colon", {}, "module:function"),
        ("tether.nonexistent_module:f", {}, "cannot import"),
        ("tether.eval.rules:missing", {}, "no attribute"),
        ("tether.eval.rules:exact_answer", {"nope": "1"}, "no parameter 'nope'"),
        ("os.path:join", {}, "(prompt, answer, row)"),
    ],
)
def test_rule_setup_errors_are_one_line(spec, args, fragment):
    with pytest.raises(JudgeError) as e:
        RuleJudge(spec, args)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def _reward_model(tmp_path, num_labels=1):
    tok = train_tokenizer(["the answer is a number", "hello there friend"] * 5, vocab_size=300)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=len(tok), num_labels=num_labels,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    return model, tok, str(tmp_path / "rm")


def test_reward_model_probability_is_sigmoid_of_reward_difference(tmp_path):
    model, tok, path = _reward_model(tmp_path)
    judge = RewardModelJudge(path, batch_size=3, memo_dir=tmp_path)
    assert judge.deterministic

    @torch.no_grad()
    def reward(prompt, answer):  # one unpadded sequence, computed independently of the judge
        ids = tok(f"{prompt}\n{answer}", return_tensors="pt")["input_ids"]
        return model.eval()(input_ids=ids).logits[0, 0].item()

    items = [
        JudgeItem("hello", "the answer", "a number is the answer here friend"),
        JudgeItem("what?", "hello there", "hi"),
        JudgeItem("what?", "hi", "hello there"),
    ]
    verdicts = judge.judge_many(items)  # batched with padding
    for item, v in zip(items, verdicts, strict=True):
        ra, rb = reward(item.prompt, item.answer_a), reward(item.prompt, item.answer_b)
        assert v.p_a == pytest.approx(1 / (1 + math.exp(-(ra - rb))), abs=1e-5)
        assert v.winner == ("A" if ra > rb else "B")
    assert verdicts[1].p_a == pytest.approx(1 - verdicts[2].p_a, abs=1e-6)  # order-symmetric
    same = judge("q", "same answer", "same answer")
    assert same.winner == "tie" and same.p_a == pytest.approx(0.5)


def test_reward_model_identity_tracks_weights(tmp_path):
    model, _, path = _reward_model(tmp_path)
    first = RewardModelJudge(path, memo_dir=tmp_path).template_hash
    assert RewardModelJudge(path, memo_dir=tmp_path).template_hash == first
    with torch.no_grad():
        model.score.weight.add_(1.0)
    model.save_pretrained(path)
    assert RewardModelJudge(path, memo_dir=tmp_path).template_hash != first


def test_reward_model_with_two_labels_is_rejected(tmp_path):
    _, _, path = _reward_model(tmp_path, num_labels=2)
    with pytest.raises(JudgeError, match="num_labels=1"):
        RewardModelJudge(path)
    with pytest.raises(JudgeError, match="cannot load"):
        RewardModelJudge(str(tmp_path / "missing"))


def test_registry_builds_a_reward_model_judge(tmp_path):
    from tether.config import build_config
    from tether.eval.config import EvalConfig
    from tether.eval.judges.registry import build_judge

    _, _, path = _reward_model(tmp_path)
    cfg = build_config(EvalConfig, {"model": "m", "data": "d", "judge": "reward_model",
                                    "judge_model": path, "device": "cpu"})
    judge = build_judge(cfg, tmp_path)
    assert isinstance(judge, RewardModelJudge) and judge.identity == f"reward_model:{path}"
    assert judge("q", "a", "b").p_a == pytest.approx(1 - judge("q", "b", "a").p_a, abs=1e-6)


def test_rule_cache_key_follows_helpers_in_the_rule_module(tmp_path, monkeypatch):
    """Editing a helper the rule calls (not the rule itself) must invalidate cached verdicts."""
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "my_rules.py"

    def load(helper_body: str) -> RuleJudge:
        module.write_text(f"def _bonus(answer):\n    {helper_body}\n\n\n"
                          "def score(prompt, answer, row):\n    return _bonus(answer)\n")
        sys.modules.pop("my_rules", None)
        return RuleJudge("my_rules:score")

    first = load("return len(answer)")
    again = load("return len(answer)")
    edited = load("return -len(answer)")
    sys.modules.pop("my_rules", None)
    assert first.template_hash == again.template_hash
    assert edited.template_hash != first.template_hash
    assert first("q", "long answer", "short", None).winner == "A"
    assert edited("q", "long answer", "short", None).winner == "B"
