"""The labeling database: import, blind assignment with overlap, votes, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.errors import ConfigError
from tether.ui.inputs import PairItem
from tether.ui.store import LabelStore, VoteRejected


def pairs(n: int, prefix: str = "q") -> list[PairItem]:
    return [PairItem(f"{prefix}{i}", f"a{i}", f"b{i}", "chosen", "rejected", f"f:{i + 1}")
            for i in range(n)]


def drain(store: LabelStore, name: str, choice: str = "A") -> list[int]:
    """Log ``name`` in and vote ``choice`` on everything offered; returns the item ids."""
    _, who = store.login(name)
    seen = []
    while (shown := store.current(who)) is not None:
        assert store.vote(who, shown.item.id, choice)
        seen.append(shown.item.id)
    return seen


def test_import_dedupes_flags_identical_and_marks_exact_overlap(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.25)
    items = [*pairs(8), PairItem("q0", "b0", "a0", "x", "y", "g:1"),  # q0 again, other order
             PairItem("same", "t", "t", "x", "y", "g:2")]
    report = store.add_items(items)
    assert (report.added, report.already, report.identical) == (9, 1, 1)
    stored = store.items()
    # round(0.25 * 8 judged items) = 2 shared; the identical pair is never shared or shown
    assert sum(i.overlap for i in stored) == 2
    assert [i.key for i in stored if i.identical] == [items[-1].key]
    assert store.add_items(pairs(8)).added == 0  # importing again adds nothing


def test_verdicts_follow_answer_order_and_disagreements_become_ties(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db")
    first = PairItem("p", "x", "y", "chosen", "rejected", "f:1", (("rm", "1"),))
    store.add_items([first])
    # same pair, answers the other way round: "2" here means "x" is better, i.e. stored "1"
    assert store.add_verdicts([PairItem("p", "y", "x", "a", "b", "g:1", (("rm", "2"),))]) == (1, 0)
    assert store.judge_verdicts() == {"rm": {1: "1"}}
    store.add_verdicts([PairItem("p", "x", "y", "a", "b", "g:2", (("rm", "2"),))])
    assert store.judge_verdicts() == {"rm": {1: "tie"}}
    unknown = PairItem("other", "x", "y", "a", "b", "g:3", (("rm", "1"),))
    assert store.add_verdicts([unknown]) == (0, 1)


def test_settings_are_fixed_at_creation(tmp_path: Path) -> None:
    LabelStore(tmp_path / "l.db", mode="winrate", seed=3, overlap=0.5)
    again = LabelStore(tmp_path / "l.db")
    assert (again.mode, again.seed, again.overlap) == ("winrate", 3, 0.5)
    with pytest.raises(ConfigError, match="created with --mode winrate, not collect"):
        LabelStore(tmp_path / "l.db", mode="collect")
    with pytest.raises(ConfigError, match="--seed 3, not 4"):
        LabelStore(tmp_path / "l.db", seed=4)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        LabelStore(tmp_path / "m.db", overlap=1.5)
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="not a tether label database"):
        LabelStore(tmp_path / "junk.db")


def interleave(store: LabelStore, names: tuple[str, ...], choice: str) -> dict[str, list[int]]:
    """Annotators voting in turn, as people working at the same time; item ids each voted."""
    sessions = [store.login(n)[1] for n in names]
    got: dict[str, list[int]] = {s.name: [] for s in sessions}
    active = list(sessions)
    while active:
        for who in list(active):
            shown = store.current(who)
            if shown is None:
                active.remove(who)
                continue
            store.vote(who, shown.item.id, choice)
            got[who.name].append(shown.item.id)
    return got


def test_overlap_items_go_to_everyone_and_the_rest_to_one_annotator(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.2)
    store.add_items(pairs(20))
    shared = {i.id for i in store.items() if i.overlap}
    assert len(shared) == 4
    ann, bob = drain(store, "ann"), []
    # ann took everything while alone; bob still gets the shared items
    bob = drain(store, "bob")
    assert set(ann) == {i.id for i in store.items()}
    assert set(bob) == shared
    assert len(store.votes()) == 24


def test_interleaved_annotators_split_exclusive_items(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.1)
    store.add_items(pairs(30))
    got = interleave(store, ("ann", "bob", "cyd"), "B")
    shared = {i.id for i in store.items() if i.overlap}
    everyone = [set(v) for v in got.values()]
    assert all(shared <= s for s in everyone)
    exclusive = [s - shared for s in everyone]
    assert sum(len(s) for s in exclusive) == 30 - len(shared)  # each exactly once
    assert set.union(*everyone) == {i.id for i in store.items()}


def test_overlap_annotators_caps_how_many_people_judge_a_shared_item(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.25, overlap_annotators=2)
    store.add_items(pairs(20))
    interleave(store, ("ann", "bob", "cyd", "dee"), "A")
    shared = {i.id for i in store.items() if i.overlap}
    per_item: dict[int, int] = {}
    for v in store.votes():
        per_item[v.item_id] = per_item.get(v.item_id, 0) + 1
    assert len(shared) == 5 and set(per_item) == {i.id for i in store.items()}
    assert all(per_item[i] == 2 for i in shared)  # two people each, not all four
    assert all(n == 1 for i, n in per_item.items() if i not in shared)
    assert LabelStore(tmp_path / "l.db").overlap_annotators == 2  # stored with the database
    with pytest.raises(ConfigError, match="created with --overlap-annotators 2, not 3"):
        LabelStore(tmp_path / "l.db", overlap_annotators=3)
    with pytest.raises(ConfigError, match="--overlap-annotators -1"):
        LabelStore(tmp_path / "m.db", overlap_annotators=-1)


def test_sides_are_seeded_recorded_and_mapped_back(tmp_path: Path) -> None:
    a = LabelStore(tmp_path / "a.db", seed=7)
    b = LabelStore(tmp_path / "b.db", seed=7)
    for store in (a, b):
        store.add_items(pairs(40))
        drain(store, "ann", "A")
    swaps = [v.swapped for v in a.votes()]
    assert swaps == [v.swapped for v in b.votes()]  # same seed, same shuffle
    assert 8 < sum(swaps) < 32  # both sides occur
    for v in a.votes():
        # "A" means answer 2 whenever the sides were swapped
        assert v.outcome == ("2" if v.swapped else "1")
    c = LabelStore(tmp_path / "c.db", seed=8)
    c.add_items(pairs(40))
    drain(c, "ann", "A")
    assert [v.swapped for v in c.votes()] != swaps


def test_resume_returns_the_open_item_and_keeps_progress(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.0)
    store.add_items(pairs(5))
    _, who = store.login("ann")
    first = store.current(who)
    assert first is not None
    store.vote(who, first.item.id, "tie", "  same  ")
    open_item = store.current(who)
    assert open_item is not None
    # a new process, a new login of the same name: same open item, same sides, same counts
    again = LabelStore(tmp_path / "l.db")
    _, who2 = again.login("ann")
    resumed = again.current(who2)
    assert resumed == open_item
    assert again.progress(who2).done == 1 and again.progress(who2).remaining == 4
    assert again.votes()[0].reason == "same"


def test_votes_are_idempotent_and_checked(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.0)
    store.add_items(pairs(3))
    _, ann = store.login("ann")
    _, bob = store.login("bob")
    shown = store.current(ann)
    assert shown is not None
    assert store.vote(ann, shown.item.id, "B") is True
    assert store.vote(ann, shown.item.id, "B") is False  # a resent request
    with pytest.raises(VoteRejected, match="already has a vote") as err:
        store.vote(ann, shown.item.id, "A")
    assert err.value.status == 409
    with pytest.raises(VoteRejected, match="was not shown to bob") as err:
        store.vote(bob, shown.item.id, "A")
    assert err.value.status == 404
    with pytest.raises(VoteRejected, match="choice must be one of"):
        store.vote(ann, shown.item.id, "C")
    with pytest.raises(VoteRejected, match="name must be"):
        store.login("   ")
    assert len(store.votes()) == 1


def test_a_skipped_exclusive_item_goes_back_to_the_pool(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.0)
    store.add_items(pairs(1))
    _, ann = store.login("ann")
    _, bob = store.login("bob")
    shown = store.current(ann)
    assert shown is not None
    assert store.current(bob) is None  # ann holds it
    assert store.progress(bob).remaining == 0
    store.vote(ann, shown.item.id, "skip")
    assert store.progress(ann) .skipped == 1
    again = store.current(bob)
    assert again is not None and again.item.id == shown.item.id
    assert store.current(ann) is None  # ann is not asked again


def test_an_abandoned_claim_expires(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db", overlap=0.0, claim_ttl=0.0)
    store.add_items(pairs(1))
    _, ann = store.login("ann")
    _, bob = store.login("bob")
    assert store.current(ann) is not None
    assert store.current(bob) is not None  # ann's claim is older than the lease
