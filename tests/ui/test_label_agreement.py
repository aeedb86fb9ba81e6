"""Kappa statistics against hand-computed values, and agreement with an automatic judge."""

from __future__ import annotations

import pytest

from tether.ui.agreement import (
    annotator_agreement,
    cohen_kappa,
    fleiss_kappa,
    item_outcomes,
    judge_agreement,
    plurality,
)
from tether.ui.store import VoteRow


def votes(table: dict[str, list[str | None]]) -> list[VoteRow]:
    """{annotator: [outcome of item 1, item 2, ...]} (None: not judged) -> VoteRows."""
    out = []
    for name, outcomes in table.items():
        for item_id, outcome in enumerate(outcomes, start=1):
            if outcome is not None:
                out.append(VoteRow(item_id, name, "A", outcome, "", False, 0.0))
    return out


def test_cohen_hand_computed() -> None:
    # agree on 4 of 6: p_o = 4/6. Marginals a: 1:3 2:2 tie:1, b: 1:1 2:3 tie:2
    # p_e = (3*1 + 2*3 + 1*2) / 36 = 11/36; kappa = (24/36 - 11/36) / (25/36) = 13/25
    a = ["1", "1", "2", "2", "tie", "1"]
    b = ["1", "2", "2", "2", "tie", "tie"]
    assert cohen_kappa(a, b) == pytest.approx(13 / 25)
    assert cohen_kappa(b, a) == pytest.approx(13 / 25)


def test_cohen_limits() -> None:
    assert cohen_kappa(["1", "2"], ["1", "2"]) == pytest.approx(1.0)
    # systematic disagreement on a balanced set: p_o = 0, p_e = 1/2 -> -1
    assert cohen_kappa(["1", "2"], ["2", "1"]) == pytest.approx(-1.0)
    assert cohen_kappa(["1", "1"], ["1", "1"]) is None  # one category: chance agreement is 1
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa(["1"], [])


def test_fleiss_hand_computed() -> None:
    # P_1 = (9-3)/6 = 1, P_2 = (1+4-3)/6 = 1/3, P_3 = (4+1-3)/6 = 1/3 -> P_bar = 5/9
    # p: 1 -> 4/9, 2 -> 4/9, tie -> 1/9; P_e = 33/81 = 11/27
    # kappa = (5/9 - 11/27) / (16/27) = 4/16
    ratings = [["1", "1", "1"], ["1", "2", "2"], ["2", "2", "tie"]]
    assert fleiss_kappa(ratings) == pytest.approx(0.25)


def test_fleiss_published_example() -> None:
    # Fleiss (1971)-style worked example: 10 subjects, 14 raters, 5 categories, kappa = 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    ratings = [[str(c) for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.2099, abs=5e-4)


def test_fleiss_with_unequal_raters_and_single_ratings() -> None:
    # the single rating carries no agreement and is ignored; the rest:
    # P_1 = (4-2)/2 = 1, P_2 = (1+4-3)/6 = 1/3 -> P_bar = 2/3
    # counts 1: 3, 2: 2 of 5 -> P_e = 13/25; kappa = (2/3 - 13/25) / (12/25) = 11/36
    ratings = [["1", "1"], ["1", "2", "2"], ["2"]]
    assert fleiss_kappa(ratings) == pytest.approx(11 / 36)
    assert fleiss_kappa([["1"], ["2"]]) is None
    assert fleiss_kappa([["1", "1"], ["1", "1"]]) is None


def test_plurality_and_item_outcomes() -> None:
    assert plurality(["1", "1", "2"]) == "1"
    assert plurality(["1", "2"]) == "disagree"
    assert plurality([]) is None
    rows = votes({"ann": ["1", "2", "skip"], "bob": ["1", "1", "skip"], "cyd": [None, "1", "2"]})
    assert item_outcomes(rows) == {1: "1", 2: "1", 3: "2"}


def test_two_annotators_use_cohen_with_pairwise_detail() -> None:
    rows = votes({
        "ann": ["1", "1", "2", "2", "tie", "1", "skip", "1"],
        "bob": ["1", "2", "2", "2", "tie", "tie", "1", None],
    })
    report = annotator_agreement(rows)
    assert report["kappa_kind"] == "cohen"
    assert report["kappa"] == pytest.approx(13 / 25)  # items 7 (skip) and 8 (one rater) left out
    assert report["items"] == 6 and report["annotators"] == 2
    assert report["agreement"] == pytest.approx(4 / 6)
    assert report["pairwise"] == [
        {"a": "ann", "b": "bob", "n": 6, "agreement": pytest.approx(4 / 6),
         "kappa": pytest.approx(13 / 25)}
    ]


def test_three_annotators_use_fleiss() -> None:
    rows = votes({"ann": ["1", "1", "2"], "bob": ["1", "2", "2"], "cyd": ["1", "2", "tie"]})
    report = annotator_agreement(rows)
    assert report["kappa_kind"] == "fleiss"
    assert report["kappa"] == pytest.approx(0.25)
    assert len(report["pairwise"]) == 3
    # agreeing rater pairs: item 1: 3 of 3, item 2: 1 of 3, item 3: 1 of 3
    assert report["agreement"] == pytest.approx(5 / 9)


def test_no_shared_items_means_no_kappa() -> None:
    report = annotator_agreement(votes({"ann": ["1", None], "bob": [None, "2"]}))
    assert report["kappa"] is None and report["items"] == 0 and report["pairwise"] == []


def test_people_against_a_judge() -> None:
    # per-item plurality: 1 -> "1", 2 -> "2", 3 -> both_bad (-> tie), 4 -> split (-> tie)
    rows = votes({"ann": ["1", "2", "both_bad", "1"], "bob": ["1", "2", "both_bad", "2"]})
    judge = {"rm": {1: "1", 2: "1", 3: "tie", 4: "tie", 9: "1"}}
    report = judge_agreement(rows, judge)["rm"]
    # people: [1, 2, tie, tie]; judge: [1, 1, tie, tie] -> p_o = 3/4
    # marginals people 1:1 2:1 tie:2, judge 1:2 tie:2 -> p_e = (1*2 + 2*2)/16 = 6/16
    # kappa = (12/16 - 6/16) / (10/16) = 3/5
    assert report["n"] == 4
    assert report["agreement"] == pytest.approx(3 / 4)
    assert report["kappa"] == pytest.approx(3 / 5)
    # ann: [1, 2, tie, 1] vs [1, 1, tie, tie]: 2 of 4 agree
    assert report["per_annotator"]["ann"]["agreement"] == pytest.approx(2 / 4)
