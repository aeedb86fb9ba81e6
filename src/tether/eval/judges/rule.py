"""A judge that is a plain Python function, named ``module:function``.

The function either scores one answer, ``f(prompt, answer, row) -> float`` (higher is better;
equal scores are a tie), or compares two, ``f(prompt, answer_a, answer_b, row)`` returning
``"A"`` / ``"B"`` / ``"tie"``, a probability that A is better, or a ``Verdict``. ``row`` is the
held-out data row, so a rule can read ground truth from it. Extra keyword arguments (strings,
from ``judge_rule_args``) are bound once. Examples ship in ``tether.eval.rules``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether.errors import JudgeError
from tether.eval.judges.base import JudgeItem, Verdict
from tether.eval.judges.registry import register_judge

if TYPE_CHECKING:
    from pathlib import Path

    from tether.eval.config import JudgeConfig

__all__ = ["RuleJudge", "load_rule"]


def load_rule(spec: str) -> Callable[..., Any]:
    """Import ``module:function``; a JudgeError says which half is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise JudgeError(
            f"judge_rule: expected 'module:function', got {spec!r} "
            "(e.g. judge_rule=tether.eval.rules:exact_answer)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise JudgeError(f"judge_rule: cannot import module {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise JudgeError(f"judge_rule: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise JudgeError(f"judge_rule: {spec} is not callable")
    return fn


def _arity(fn: Callable[..., Any], spec: str, bound: Mapping[str, str]) -> int:
    """Positional parameters left after binding ``bound``: 3 scores one answer, 4 compares two."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise JudgeError(f"judge_rule: cannot read the signature of {spec}") from None
    names = set(params)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in bound if k not in names and not takes_kwargs]
    if unknown:
        raise JudgeError(
            f"judge_rule_args: {spec} has no parameter {unknown[0]!r}; it takes {sorted(names)}"
        )
    positional = [
        p
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.name not in bound
        and p.default is inspect.Parameter.empty
    ]
    if len(positional) not in (3, 4):
        raise JudgeError(
            f"judge_rule: {spec} must take (prompt, answer, row) to score one answer or "
            f"(prompt, answer_a, answer_b, row) to compare two; it takes {len(positional)} "
            "required positional arguments"
        )
    return len(positional)


def _source_hash(fn: Callable[..., Any]) -> str:
    """Hash of the source of the module that defines ``fn`` (or of ``fn`` alone when the module
    has no readable source): the cache must forget verdicts when the rule's code changes,
    including the helpers it calls in its own module."""
    target = inspect.unwrap(getattr(fn, "func", fn))  # functools.partial and decorators
    for obj in (inspect.getmodule(target), target):
        try:
            source = inspect.getsource(obj)  # type: ignore[arg-type]
        except (OSError, TypeError):
            continue
        return hashlib.sha256(source.encode()).hexdigest()[:16]
    return hashlib.sha256(getattr(fn, "__qualname__", repr(fn)).encode()).hexdigest()[:16]


def _as_score(value: Any) -> float | None:
    if isinstance(value, (bool, int, float)) and not math.isnan(value):
        return float(value)
    return None


def _compare_result(value: Any) -> Verdict:
    """A comparing rule's return value as a Verdict."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        winner = {"a": "A", "b": "B", "tie": "tie"}.get(key)
        if winner is not None:
            return Verdict(winner, raw=value)  # type: ignore[arg-type]
        return Verdict("unparsed", raw=value)
    p_a = _as_score(value)
    if p_a is not None and 0.0 <= p_a <= 1.0:
        winner = "A" if p_a > 0.5 else "B" if p_a < 0.5 else "tie"
        return Verdict(winner, p_a=p_a, raw=repr(value))  # type: ignore[arg-type]
    return Verdict("unparsed", raw=repr(value))


class RuleJudge:
    """``judge_rule=module:function``; deterministic, so each pair is judged once."""

    deterministic = True

    def __init__(self, spec: str, args: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.args = dict(args or {})
        self.fn = load_rule(spec)
        self.arity = _arity(self.fn, spec, self.args)
        suffix = json.dumps(self.args, sort_keys=True) if self.args else ""
        self.identity = f"rule:{spec}{suffix}"
        self.template_hash = _source_hash(self.fn)

    def __call__(
        self, prompt: str, answer_a: str, answer_b: str, row: dict | None = None
    ) -> Verdict:
        try:
            if self.arity == 4:
                return _compare_result(self.fn(prompt, answer_a, answer_b, row, **self.args))
            raw_a = self.fn(prompt, answer_a, row, **self.args)
            raw_b = self.fn(prompt, answer_b, row, **self.args)
        except Exception as e:  # a rule that fails on one row makes that row unparsed
            message = f"{type(e).__name__}: {e}"
            return Verdict("unparsed", raw=message, error=message)
        raw = f"score_a={raw_a!r} score_b={raw_b!r}"
        a, b = _as_score(raw_a), _as_score(raw_b)
        if a is None or b is None:
            return Verdict("unparsed", raw=raw)
        return Verdict("A" if a > b else "B" if b > a else "tie", raw=raw)

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [self(i.prompt, i.answer_a, i.answer_b, i.row) for i in items]

    def score(self, prompt: str, answer: str, row: dict | None = None) -> float | None:
        """One answer's score under a scoring rule (None for a comparing rule or a failure):
        with a ground-truth rule, 1 means correct, which lets eval list lost capabilities."""
        if self.arity == 4:
            return None
        try:
            return _as_score(self.fn(prompt, answer, row, **self.args))
        except Exception:
            return None


@register_judge("rule", requires={"judge_rule": ", e.g. tether.eval.rules:exact_answer"})
def _build(cfg: JudgeConfig, memo_dir: Path | None) -> RuleJudge:
    return RuleJudge(cfg.judge_rule, cfg.judge_rule_args)
