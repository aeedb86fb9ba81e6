"""What every config class shares: ``opt`` fields (a default, a one-line help and, for numbers,
their range) and checks on construction (``Checked``).

``range_problems`` checks every numeric field of a config against its declared range; a float
must also be finite and an integer must fit in 64 bits. A numeric field without a declared
range is a bug in tether (``TypeError``), so a new key cannot skip the check (issue 14).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "SEED_MAX", "Bounds", "Checked", "deferred_checks", "field_help", "opt", "range_problems",
]

_DEFERRED = contextvars.ContextVar("tether_deferred_checks", default=False)

# numpy's legacy seeding (np.random.seed, used by seed_everything) takes [0, 2**32 - 1].
SEED_MAX = 2**32 - 1
_INT64 = (-(2**63), 2**63 - 1)  # torch and numpy hold integers in 64 bits


@dataclass(frozen=True)
class Bounds:
    """An interval: ``ge``/``gt`` below, ``le``/``lt`` above; ``None`` leaves that side open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``<= 5`` or ``in [0, 0.5)``, as the error messages put it."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
        high = ("]", self.le) if self.le is not None else (")", self.lt)
        if low[1] is not None and high[1] is not None:
            return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low[1] is not None:
            return f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
        if high[1] is not None:
            return f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def opt(
    default: Any,
    help: str | Callable[[], str],
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field with a default and a one-line description (shown by ``--help``; a
    callable help is rendered when shown, for lists that must follow a registry).

    Numeric fields (int, float, their lists and optionals) must give their range with
    ``ge``/``gt``/``le``/``lt``; ``range_problems`` enforces it on every loaded config.
    """
    metadata: dict[str, Any] = {"help": help}
    if (ge, gt, le, lt) != (None, None, None, None):
        metadata["bounds"] = Bounds(ge, gt, le, lt)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _numeric(tp: Any) -> tuple[type | None, bool]:
    """``(int or float or None, is a list)`` of a field's type; ``X | None`` counts as X."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            return None, False  # e.g. bool | Literal["auto"]: not a number
        tp = args[0]
    is_list = typing.get_origin(tp) is list
    if is_list:
        (tp,) = typing.get_args(tp)
    return (tp if tp in (int, float) else None), is_list


def _in_range(x: Any, kind: type, bounds: Bounds) -> bool:
    if kind is float and not math.isfinite(x):
        return False
    if kind is int and not _INT64[0] <= x <= _INT64[1]:
        return False
    return x in bounds


def range_problems(cfg: Any) -> list[str]:
    """One ``key: must be ...`` line per numeric field of ``cfg`` outside its range.

    NaN and ±inf are out of every range: nothing downstream means anything by them, and an
    ``lr=inf`` run used to finish with every weight non-finite (issue 14).
    """
    hints = typing.get_type_hints(type(cfg))
    out = []
    for f in dataclasses.fields(cfg):
        kind, is_list = _numeric(hints[f.name])
        if kind is None:
            continue
        bounds = f.metadata.get("bounds")
        if bounds is None:  # a bug in tether, caught by the first test that loads the config
            raise TypeError(f"{type(cfg).__name__}.{f.name}: a numeric config field declares "
                            "its range, e.g. opt(1, '...', ge=1)")
        value = getattr(cfg, f.name)
        items = value if is_list else [] if value is None else [value]
        if all(_in_range(x, kind, bounds) for x in items):
            continue
        finite = kind is int or all(math.isfinite(x) for x in items)
        # "fits in 64 bits" only where the declared range alone would have allowed the value
        big = kind is int and any(x in bounds and not _INT64[0] <= x <= _INT64[1] for x in items)
        out.append(
            f"{f.name}: {'every item ' if is_list else ''}must be "
            f"{'' if finite else 'a finite number '}{bounds.describe()}"
            f"{' and fit in 64 bits' if big else ''}, "
            f"got {value!r}"
        )
    return out


def field_help(f: Any) -> str:
    """The help text of a config field made by ``opt``."""
    text = f.metadata.get("help", "")
    return str(text() if callable(text) else text)


class Checked:
    """A config that checks its values on construction: ``TrainConfig(lr=-1)`` raises the
    one-line ``ConfigError`` that ``load_config`` gives, listing every problem at once."""

    def problems(self) -> list[str]:
        return []

    def __post_init__(self) -> None:
        if _DEFERRED.get():
            return
        out = self.problems()  # as build_config: a class's own message first, then the ranges
        reported = {p.split(":", 1)[0] for p in out}
        out += [p for p in range_problems(self) if p.split(":", 1)[0] not in reported]
        if out:
            from tether.errors import ConfigError

            raise ConfigError(f"{type(self).__name__}: " + "; ".join(out))


@contextmanager
def deferred_checks() -> Iterator[None]:
    """Inside, ``Checked`` configs skip their checks (``build_config`` runs them itself, with
    the problems of keys that did not even parse)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)
