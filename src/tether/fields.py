"""``opt``: a config field with a default and a one-line help (shared by every config)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["opt"]


def opt(default: Any, help: str) -> Any:
    """A config field with a default and a one-line description (shown by ``--help``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})
