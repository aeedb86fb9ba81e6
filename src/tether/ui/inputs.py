"""Read the JSONL files `tether label` judges: candidate answers, win-rate pairs, judge verdicts.

Every line is one JSON object. A prompt or an answer is a string or a chat (a list of
``{"role", "content"}`` messages). Accepted rows:

``collect`` mode (preference collection)
    ``{"prompt": P, "responses": [R1, R2, ...]}``: every unordered pair of distinct responses
    becomes one item (``answers`` is accepted for ``responses``).
    ``{"prompt": P, "chosen": C, "rejected": R, ...}``: one item (tether's standard format, and
    what ``tether pairs`` writes). The file's own preference is kept as an automatic verdict,
    named by the row's ``judge`` field (default ``"source"``), so people can be compared with it.

``winrate`` mode (judging the trained model against the reference)
    ``{"prompt": P, "policy": X, "reference": Y}``: the trained model's answer X against the
    reference's Y. Rows of ``tether eval``'s ``eval/judgments.jsonl`` are read as well: the
    answers are either under ``policy``/``reference``, or under ``answer_a``/``answer_b`` with
    ``order`` (``["policy", "reference"]``, ``"policy_first"`` or ``"reference_first"``). When the
    row carries a verdict (``winner`` or ``verdict``: ``"policy"``/``"reference"``/``"A"``/``"B"``/
    ``"tie"``; ``"unparsed"`` is ignored) it is kept, named by ``judge``. Several rows for one
    pair (both display orders, repeated samples) that disagree make a tie, as in ``tether eval``.

The file is read here rather than through ``tether.data.read_rows`` because labeling needs the
raw rows (all responses, verdict fields) with their line numbers and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from tether.errors import DataError

__all__ = ["Mode", "PairItem", "item_key", "read_items", "read_rows"]

Mode = Literal["collect", "winrate"]
Outcome = Literal["1", "2", "tie"]
_ORDERS = {"policy_first": True, "reference_first": False}


@dataclass(frozen=True)
class PairItem:
    """One comparison: a prompt and two answers. ``verdicts`` are (judge, outcome) pairs where
    outcome ``"1"``/``"2"`` names the better answer and ``"tie"`` neither."""

    prompt: Any
    answer_1: Any
    answer_2: Any
    label_1: str
    label_2: str
    origin: str
    verdicts: tuple[tuple[str, Outcome], ...] = field(default=())

    @property
    def key(self) -> str:
        return item_key(self.prompt, self.answer_1, self.answer_2)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def item_key(prompt: Any, answer_1: Any, answer_2: Any) -> str:
    """Identity of a comparison, independent of which answer is shown first."""
    answers = sorted([_canon(answer_1), _canon(answer_2)])
    return hashlib.sha256(_canon([_canon(prompt), *answers]).encode()).hexdigest()


def read_rows(path: Path) -> Iterator[tuple[dict, str]]:
    """Yield (row, "file:line") for each non-blank line of a JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a .jsonl file with one JSON object per line")
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{where}: not valid JSON ({err.msg}); one object per line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
            yield row, where


def _text(row: dict, name: str, where: str) -> Any:
    """A field that must be a string or a list of chat messages."""
    if name not in row:
        raise DataError(f"{where}: missing field '{name}'; fields found: {sorted(row)}")
    value = row[name]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(_is_message(m) for m in value):
        return value
    raise DataError(
        f"{where}: field '{name}' must be a string or a list of {{role, content}} messages"
    )


def _is_message(m: Any) -> bool:
    return (
        isinstance(m, dict)
        and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str)
    )


def _judge_name(row: dict, default: str) -> str:
    judge = row.get("judge")
    if judge is None:
        return default
    return judge if isinstance(judge, str) else _canon(judge)


def _collect_items(row: dict, where: str) -> list[PairItem]:
    prompt = _text(row, "prompt", where)
    name = "responses" if "responses" in row else "answers" if "answers" in row else None
    if name is not None:
        values = row[name]
        if not isinstance(values, list) or len(values) < 2:
            raise DataError(f"{where}: '{name}' must be a list of at least 2 answers")
        answers = [_text({name: v}, name, where) for v in values]
        return [
            PairItem(prompt, answers[i], answers[j], f"{name}[{i}]", f"{name}[{j}]", where)
            for i, j in combinations(range(len(answers)), 2)
        ]
    if "chosen" in row or "rejected" in row:
        chosen, rejected = _text(row, "chosen", where), _text(row, "rejected", where)
        verdict: tuple[str, Outcome] = (_judge_name(row, "source"), "1")
        return [PairItem(prompt, chosen, rejected, "chosen", "rejected", where, (verdict,))]
    raise DataError(
        f"{where}: collect mode expects 'responses' (a list) or 'chosen' and 'rejected'; "
        f"fields found: {sorted(row)} (policy/reference rows need --mode winrate)"
    )


def _policy_first(row: dict, where: str) -> bool:
    order = row.get("order")
    if isinstance(order, str) and order in _ORDERS:
        return _ORDERS[order]
    if isinstance(order, list) and sorted(order) == ["policy", "reference"]:
        return bool(order[0] == "policy")
    raise DataError(
        f"{where}: 'order' must be [\"policy\", \"reference\"], [\"reference\", \"policy\"], "
        f"'policy_first' or 'reference_first' to tell which of answer_a/answer_b is the policy's"
    )


def _winrate_verdict(row: dict, where: str, policy_first: bool | None) -> Outcome | None:
    raw = row.get("winner", row.get("verdict"))
    if isinstance(raw, dict):
        raw = raw.get("winner")
    if raw is None or raw == "unparsed":
        return None
    if raw in ("policy", "reference", "tie"):
        return {"policy": "1", "reference": "2", "tie": "tie"}[raw]  # type: ignore[return-value]
    if raw in ("A", "B"):
        if policy_first is None:
            raise DataError(
                f"{where}: verdict '{raw}' needs 'order' to tell whether A is the policy's answer"
            )
        return "1" if (raw == "A") == policy_first else "2"
    raise DataError(
        f"{where}: verdict {raw!r} not understood; "
        "expected policy, reference, A, B, tie or unparsed"
    )


def _winrate_items(row: dict, where: str) -> list[PairItem]:
    prompt = _text(row, "prompt", where)
    policy_first: bool | None = None
    if "policy" in row or "reference" in row:
        policy, reference = _text(row, "policy", where), _text(row, "reference", where)
        if "order" in row:
            policy_first = _policy_first(row, where)
    elif "answer_a" in row and "answer_b" in row:
        policy_first = _policy_first(row, where)
        first, second = _text(row, "answer_a", where), _text(row, "answer_b", where)
        policy, reference = (first, second) if policy_first else (second, first)
    else:
        raise DataError(
            f"{where}: winrate mode expects 'policy' and 'reference' (or answer_a, answer_b and "
            f"order); fields found: {sorted(row)} (candidate answers need --mode collect)"
        )
    outcome = _winrate_verdict(row, where, policy_first)
    verdicts: tuple[tuple[str, Outcome], ...] = ()
    if outcome is not None:
        verdicts = ((_judge_name(row, "judge"), outcome),)
    return [PairItem(prompt, policy, reference, "policy", "reference", where, verdicts)]


def read_items(path: Path, mode: Mode) -> list[PairItem]:
    """All comparisons in a JSONL file, in file order (see the module docstring for rows)."""
    parse = _collect_items if mode == "collect" else _winrate_items
    items: list[PairItem] = []
    for row, where in read_rows(path):
        items.extend(parse(row, where))
    if not items:
        raise DataError(f"{path}: no rows; expected one JSON object per line")
    return items
