"""Win-rate evaluation: generate from the policy and the reference, judge, and report.

``tether.eval.evaluate(EvalConfig(...))`` is the entry point; it is imported lazily so that
reading ``EvalConfig`` (the CLI's ``--help``) does not load torch and transformers.
"""

from __future__ import annotations

from typing import Any

from tether.eval.config import EvalConfig

__all__ = ["EvalConfig", "evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from tether.eval.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'tether.eval' has no attribute {name!r}")
