"""What every config class shares: ``opt`` fields with one-line help, checks on construction."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import field
from typing import Any

__all__ = ["Checked", "deferred_checks", "field_help", "opt"]

_DEFERRED = contextvars.ContextVar("tether_deferred_checks", default=False)


def opt(default: Any, help: str | Callable[[], str]) -> Any:
    """A config field with a default and a one-line description (shown by ``--help``); a
    callable help is rendered when shown, for lists that must follow a registry."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


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
        problems = self.problems()
        if problems:
            from tether.errors import ConfigError

            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems))


@contextmanager
def deferred_checks() -> Iterator[None]:
    """Inside, ``Checked`` configs skip their checks (``build_config`` runs them itself, with
    the problems of keys that did not even parse)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)
