"""Example rule judges: name one as ``judge_rule=tether.eval.rules:exact_answer``.

Scoring rules take ``(prompt, answer, row)`` and return a number (higher is better); comparing
rules take ``(prompt, answer_a, answer_b, row)``. Keyword arguments come from
``judge_rule_args`` as strings, e.g. ``judge_rule_args.field=label``.
"""

from __future__ import annotations

import re
import string

__all__ = ["exact_answer", "length_limit", "regex", "shorter"]

_STRIP = string.whitespace + string.punctuation.replace("-", "")


def _normalise(text: str) -> str:
    # "The answer is 42." vs "42" stays a mismatch on purpose: exact means exact, modulo case,
    # spacing and surrounding punctuation.
    return " ".join(text.split()).strip(_STRIP).casefold()


def _field(row: dict | None, field: str) -> str:
    if not row or field not in row:
        keys = sorted(row) if row else []
        raise KeyError(f"row has no field {field!r} (fields: {keys}); set judge_rule_args.field")
    return str(row[field])


def exact_answer(prompt: str, answer: str, row: dict | None, field: str = "answer") -> float:
    """1 when the answer equals ``row[field]`` (ignoring case, spacing, outer punctuation)."""
    return float(_normalise(answer) == _normalise(_field(row, field)))


def regex(
    prompt: str, answer: str, row: dict | None, pattern: str = "", field: str = ""
) -> float:
    """1 when ``pattern`` (or the pattern in ``row[field]``) matches somewhere in the answer."""
    if not pattern:
        if not field:
            raise ValueError("regex rule: set judge_rule_args.pattern or judge_rule_args.field")
        pattern = _field(row, field)
    return float(re.search(pattern, answer, flags=re.MULTILINE) is not None)


def length_limit(prompt: str, answer: str, row: dict | None, max_chars: str = "500") -> float:
    """1 when the answer has at most ``max_chars`` characters (after stripping), else 0."""
    return float(len(answer.strip()) <= int(max_chars))


def shorter(prompt: str, answer_a: str, answer_b: str, row: dict | None) -> str:
    """A comparing rule: the shorter non-empty answer wins; equal lengths tie."""
    la, lb = len(answer_a.strip()), len(answer_b.strip())
    if la == lb or not la or not lb:
        return "tie" if la == lb else ("A" if la else "B")
    return "A" if la < lb else "B"
