"""Preference export (ties and both-bad left out and counted) and the win-rate summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tether.errors import ConfigError
from tether.eval.stats import bootstrap_win_rate, wilson_interval
from tether.ui.export import export_preferences, summary, winrate_summary
from tether.ui.inputs import PairItem
from tether.ui.store import LabelStore


def vote_answers(store: LabelStore, name: str, wanted: dict[str, str]) -> None:
    """Vote as ``name`` so that the outcome for the item whose prompt is the key is the value
    ("1": answer 1 better, "2": answer 2, or tie / both_bad / skip), whatever side it is on."""
    _, who = store.login(name)
    while (shown := store.current(who)) is not None:
        want = wanted[shown.item.prompt]
        choice = want
        if want in ("1", "2"):  # answer 1 is on side A unless the sides were swapped
            choice = "A" if (want == "1") != shown.swapped else "B"
        store.vote(who, shown.item.id, choice, f"{name} on {shown.item.prompt}")


def test_export_writes_decided_pairs_with_provenance(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=1.0, seed=1)
    items = [PairItem(p, f"{p}-one", f"{p}-two", "chosen", "rejected", f"in.jsonl:{i + 1}")
             for i, p in enumerate(["p1", "p2", "p3", "p4", "p5", "p6"])]
    items.append(PairItem("p7", "same", "same", "chosen", "rejected", "in.jsonl:7"))
    store.add_items(items)
    vote_answers(store, "ann", {"p1": "1", "p2": "2", "p3": "tie", "p4": "both_bad",
                                "p5": "1", "p6": "skip"})
    vote_answers(store, "bob", {"p1": "1", "p2": "2", "p3": "tie", "p4": "both_bad",
                                "p5": "2", "p6": "skip"})
    report = export_preferences(store, tmp_path / "prefs.jsonl")
    assert (report.written, report.ties, report.both_bad, report.disagreements,
            report.unvoted, report.identical) == (2, 1, 1, 1, 1, 1)
    lines = (tmp_path / "prefs.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in records] == [
        ("p1", "p1-one", "p1-two"), ("p2", "p2-two", "p2-one")
    ]
    first = records[0]
    assert first["annotators"] == ["ann", "bob"] and first["votes"] == 2
    assert first["agreeing"] == 2 and first["origin"] == "in.jsonl:1"
    assert (first["chosen_label"], first["rejected_label"]) == ("chosen", "rejected")
    assert first["reasons"] == ["ann on p1", "bob on p1"]
    assert records[1]["chosen_label"] == "rejected"  # people overturned the file's order
    assert list(tmp_path.glob(".prefs.jsonl.*")) == []  # no temporary file left behind


def test_winrate_summary_counts_and_interval(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "w.db", mode="winrate", overlap=0.0, seed=2)
    prompts = ["w1", "w2", "w3", "t1", "l1", "u1"]
    store.add_items([PairItem(p, f"pol {p}", f"ref {p}", "policy", "reference", "x")
                     for p in prompts])
    store.add_items([PairItem("same", "s", "s", "policy", "reference", "x")])
    wanted = {"w1": "1", "w2": "1", "w3": "1", "t1": "both_bad", "l1": "2", "u1": "skip"}
    vote_answers(store, "ann", wanted)
    out = winrate_summary(store)
    # 3 wins, ties: both-bad + the identical pair = 2, 1 loss, 1 skipped (unparsed)
    assert (out["wins"], out["ties"], out["losses"], out["unparsed"], out["n"]) == (3, 2, 1, 1, 6)
    assert out["identical"] == 1
    assert out["win_rate"] == pytest.approx(4 / 6)
    # the evaluation's statistics: bootstrap over items, Wilson on decisive votes
    scores = [1.0, 1.0, 1.0, 0.5, 0.5, 0.0]
    assert out["ci95"] == pytest.approx(list(bootstrap_win_rate(scores, list(range(6)))))
    assert out["decisive_win_rate"] == pytest.approx(3 / 4)
    assert out["wilson95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert out["judge"] == "human"
    lo, hi = out["ci95"]
    assert lo < 4 / 6 < hi and not math.isnan(lo)


def test_summary_in_collect_mode_has_no_winrate(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "c.db")
    store.add_items([PairItem("p", "a", "b", "chosen", "rejected", "x", (("source", "1"),))])
    vote_answers(store, "ann", {"p": "1"})
    data = summary(store)
    assert "winrate" not in data
    assert data["votes"] == 1 and data["annotators"] == ["ann"]
    assert data["judge_agreement"]["source"]["agreement"] == 1.0
    with pytest.raises(ConfigError, match="collect-mode database"):
        winrate_summary(store)
