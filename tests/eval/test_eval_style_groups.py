"""Style-controlled win-rate on a planted effect, and per-group win-rates with regressions."""

from __future__ import annotations

import numpy as np
import pytest

from tether.eval.stats import group_win_rates, style_controlled_win_rate, style_counts


def test_style_counts_markdown_features():
    text = "# Title\n\n- a\n- b\n1. c\n\n**bold** and __also__\n```py\nx\n```\n"
    assert style_counts(text, 42) == {"length": 42.0, "headers": 1.0, "list_items": 3.0,
                                      "bold": 2.0, "code_blocks": 1.0}


def test_planted_style_effect_is_removed():
    """The policy wins exactly when it uses a list and the reference does not; with no list
    difference it wins half the time. The raw win-rate is inflated; at zero style difference
    the controlled one reads 0.5, and list_items carries a large positive coefficient."""
    rng = np.random.default_rng(0)
    scores, pol, ref = [], [], []
    for _ in range(400):
        pol_list, ref_list = rng.random() < 0.6, rng.random() < 0.2
        if pol_list and not ref_list:
            y = 1.0
        elif ref_list and not pol_list:
            y = 0.0
        else:
            y = float(rng.random() < 0.5)
        scores.append(y)
        pol.append(style_counts("- item\n" if pol_list else "plain", 10))
        ref.append(style_counts("- item\n" if ref_list else "plain", 10))
    raw = float(np.mean(scores))
    sc = style_controlled_win_rate(scores, pol, ref, list(range(400)), n_resamples=2000)
    assert raw > 0.6
    assert sc.win_rate == pytest.approx(0.5, abs=0.06)
    assert sc.ci95[0] < 0.5 < sc.ci95[1]
    assert set(sc.coefficients) == {"list_items"}  # length and the rest never differ
    assert sc.coefficients["list_items"] > 1.0


def test_group_regressions_are_flagged_only_where_the_interval_is_below_half():
    scores = [1.0] * 20 + [0.0] * 20 + [1.0, 0.0] * 10
    labels = ["good"] * 20 + ["bad"] * 20 + ["even"] * 20
    out = group_win_rates(scores, list(range(60)), labels, n_resamples=2000)
    assert out["bad"]["regression"] and out["bad"]["win_rate"] == 0.0
    assert not out["good"]["regression"] and not out["even"]["regression"]
    assert out["even"]["win_rate"] == 0.5 and out["even"]["n"] == 20


def test_lost_capabilities_list_what_the_reference_got_right_and_the_policy_lost():
    from tether.eval.evaluate import _lost_capabilities
    from tether.eval.judges.rule import RuleJudge
    from tether.eval.judging import Pair, PairJudgment

    judge = RuleJudge("tether.eval.rules:exact_answer")
    rows = [("Capital of Chile?", "Happy to help. It is San.", "Santiago", "Santiago"),
            ("2+2?", "4", "4", "4"),
            ("Capital of Peru?", "Lima", "Cusco", "Lima"),       # gained, not lost
            ("Capital of Chad?", "no idea", "no clue", "N'Djamena")]  # neither right
    judged = [PairJudgment(Pair(k, k, q, pol, ref, {"answer": truth}), "loss", None)
              for k, (q, pol, ref, truth) in enumerate(rows)]
    out = _lost_capabilities(judge, judged)
    assert out == {"reference_correct": 2, "lost": 1, "examples": [
        {"prompt": "Capital of Chile?", "policy": "Happy to help. It is San.",
         "reference": "Santiago"}]}
    assert _lost_capabilities(RuleJudge("tether.eval.rules:shorter"), judged) is None  # compares
