"""The judge registry: the one list of judge names, each with its builder and required keys.

A judge is one module that defines its class and registers a builder next to it:

    @register_judge("mine", requires={"judge_model": " (the model to ask)"})
    def _build(cfg: JudgeConfig, memo_dir: Path | None) -> Judge: ...

``judge=mine`` then works in ``EvalConfig``, ``tether eval``, ``tether pairs`` and
``tether iterate`` alike. The built-in judges (rule, reward_model, openai, and human, whose
votes come from the labeling page) register themselves the same way, in their own modules,
imported here on first use. ``judge=none`` is not a judge: evaluation then reports the implicit
reward only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import JudgeError
from tether.eval.judges.base import Judge

if TYPE_CHECKING:
    from tether.eval.config import JudgeConfig

__all__ = ["JUDGES", "NO_JUDGE", "JudgeSpec", "build_judge", "judge_problems", "judges",
           "register_judge"]

NO_JUDGE = "none"
JudgeBuilder = Callable[["JudgeConfig", "Path | None"], Judge]


@dataclass(frozen=True)
class JudgeSpec:
    build: JudgeBuilder
    # config keys that must be set for this judge -> the hint after "required for judge=NAME"
    requires: Mapping[str, str] = field(default_factory=dict)


JUDGES: dict[str, JudgeSpec] = {}
_BUILTIN = ("tether.eval.judges.rule", "tether.eval.judges.reward_model",
            "tether.eval.judges.openai", "tether.ui.human_judge")


def register_judge(
    name: str, requires: Mapping[str, str] | None = None
) -> Callable[[JudgeBuilder], JudgeBuilder]:
    """Make ``judge=name`` build a judge with ``builder(cfg, memo_dir)``; ``requires`` names
    the config keys it needs (each with the hint shown when it is missing)."""

    def add(builder: JudgeBuilder) -> JudgeBuilder:
        JUDGES[name] = JudgeSpec(builder, dict(requires or {}))
        return builder

    return add


def judges() -> dict[str, JudgeSpec]:
    """Every registered judge, the built-in ones included."""
    for module in _BUILTIN:
        importlib.import_module(module)  # each registers itself once
    return JUDGES


def judge_problems(cfg: Any) -> list[str]:
    """Config problems of ``cfg.judge``: an unknown name, or a key the judge needs unset."""
    if cfg.judge == NO_JUDGE:
        return []
    spec = judges().get(cfg.judge)
    if spec is None:
        valid = ", ".join([*sorted(JUDGES), NO_JUDGE])
        return [f"judge: unknown '{cfg.judge}'; valid: {valid} (or one added with "
                "tether.eval.judges.register_judge)"]
    return [f"{key}: required for judge={cfg.judge}{hint}"
            for key, hint in spec.requires.items() if not getattr(cfg, key, None)]


def build_judge(cfg: JudgeConfig, memo_dir: Path | None = None) -> Judge:
    spec = judges().get(cfg.judge)
    if spec is None:
        raise JudgeError(judge_problems(cfg)[0])
    return spec.build(cfg, memo_dir)
