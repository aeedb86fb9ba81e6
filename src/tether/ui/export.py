"""Turn votes into tether's preference JSONL and into a win-rate / agreement summary.

Each item's verdict is the plurality of its non-skip votes. Only a clear "answer 1 better" or
"answer 2 better" becomes a preference pair; ties, both-bad, split votes (two outcomes with the
same count) and unvoted items are left out and counted, so nothing is silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tether.errors import ConfigError
from tether.eval.stats import bootstrap_win_rate, wilson_interval
from tether.io import write_text
from tether.ui.agreement import annotator_agreement, item_outcomes, judge_agreement
from tether.ui.store import LabelStore, VoteRow

__all__ = [
    "ExportReport",
    "export_preferences",
    "preference_records",
    "summary",
    "winrate_summary",
    "write_json",
]

Z95 = 1.959963984540054  # standard normal quantile at 0.975


@dataclass(frozen=True)
class ExportReport:
    written: int
    ties: int
    both_bad: int
    disagreements: int
    unvoted: int
    identical: int

    def line(self) -> str:
        return (
            f"{self.written} pairs written; left out: {self.ties} ties, {self.both_bad} both bad, "
            f"{self.disagreements} split votes, {self.unvoted} not voted (or only skipped), "
            f"{self.identical} with identical answers"
        )


def _by_item(votes: Iterable[VoteRow]) -> dict[int, list[VoteRow]]:
    out: dict[int, list[VoteRow]] = {}
    for v in votes:
        if v.outcome != "skip":
            out.setdefault(v.item_id, []).append(v)
    return out


def preference_records(store: LabelStore) -> tuple[list[dict[str, Any]], ExportReport]:
    """Records ``{prompt, chosen, rejected}`` plus provenance, in item order."""
    votes = store.votes()
    verdicts, voters = item_outcomes(votes), _by_item(votes)
    counts: Counter[str] = Counter()
    records = []
    for item in store.items():
        if item.identical:
            counts["identical"] += 1
            continue
        verdict = verdicts.get(item.id)
        if verdict not in ("1", "2"):
            counts[verdict or "unvoted"] += 1
            continue
        first = verdict == "1"
        mine = voters[item.id]
        records.append({
            "prompt": item.prompt,
            "chosen": item.answer_1 if first else item.answer_2,
            "rejected": item.answer_2 if first else item.answer_1,
            "item_id": item.id,
            "annotators": sorted(v.annotator for v in mine),
            "votes": len(mine),
            "agreeing": sum(v.outcome == verdict for v in mine),
            "chosen_label": item.label_1 if first else item.label_2,
            "rejected_label": item.label_2 if first else item.label_1,
            "origin": item.origin,
            "reasons": [v.reason for v in mine if v.reason],
        })
    report = ExportReport(
        written=len(records),
        ties=counts["tie"],
        both_bad=counts["both_bad"],
        disagreements=counts["disagree"],
        unvoted=counts["unvoted"],
        identical=counts["identical"],
    )
    return records, report


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file next to ``path`` and rename it, so readers never see half."""
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: folder {path.parent} does not exist")
    write_text(path, text)


def export_preferences(store: LabelStore, path: str | Path) -> ExportReport:
    """Write the preference JSONL (one record per decided item) and return what was left out."""
    records, report = preference_records(store)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    _atomic_write(Path(path), lines)
    return report


def winrate_summary(store: LabelStore) -> dict[str, Any]:
    """People's win-rate of the policy (answer 1) over the reference (answer 2).

    Ties, both-bad and split votes count half a win; identical answers are ties without a vote
    (as in ``tether eval``); items without a non-skip vote are ``unparsed``, excluded and
    counted. ``ci95`` is the evaluation's seeded bootstrap interval of ``win_rate``;
    ``wilson95`` the Wilson interval of wins / (wins + losses), as in ``eval/results.json``.
    """
    if store.mode != "winrate":
        raise ConfigError(
            f"--db {store.path} is a collect-mode database; a win-rate needs --mode winrate "
            "(policy vs reference answers)"
        )
    verdicts = item_outcomes(store.votes())
    wins = losses = ties = unparsed = identical = 0
    for item in store.items():
        if (item.label_1, item.label_2) != ("policy", "reference"):
            continue  # e.g. pairs the human judge stored in the caller's A/B order
        verdict = verdicts.get(item.id)
        if item.identical:
            identical += 1
        elif verdict is None:
            unparsed += 1
        elif verdict == "1":
            wins += 1
        elif verdict == "2":
            losses += 1
        else:
            ties += 1
    ties += identical
    n = wins + ties + losses
    decisive = wins + losses
    # The same statistics as `tether eval`: ties 0.5, a seeded bootstrap over items (each item
    # is its own prompt here), and the Wilson interval on the decisive votes.
    scores = [1.0] * wins + [0.5] * ties + [0.0] * losses
    return {
        "win_rate": (wins + 0.5 * ties) / n if n else None,
        "ci95": list(bootstrap_win_rate(scores, list(range(n)))) if n else None,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "unparsed": unparsed,
        "identical": identical,
        "n": n,
        "decisive_win_rate": wins / decisive if decisive else None,
        "wilson95": list(wilson_interval(wins, decisive)) if decisive else None,
        "judge": "human",
    }


def summary(store: LabelStore) -> dict[str, Any]:
    """Counts, agreement between annotators and with automatic judges, and (winrate mode)
    the people's win-rate."""
    votes = store.votes()
    _, report = preference_records(store)
    out: dict[str, Any] = {
        "mode": store.mode,
        "items": len(store.items()),
        "votes": len(votes),
        "skips": sum(v.outcome == "skip" for v in votes),
        "annotators": store.annotators(),
        "preferences": asdict(report),
        "agreement": annotator_agreement(votes),
        "judge_agreement": judge_agreement(votes, store.judge_verdicts()),
    }
    if store.mode == "winrate":
        out["winrate"] = winrate_summary(store)
    return out


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    _atomic_write(Path(path), json.dumps(data, indent=2, ensure_ascii=False) + "\n")
