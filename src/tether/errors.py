"""One exception tree for everything a user can cause.

The CLI maps every ``TetherError`` to a one-line message and exit code 2 (a run stopped by a
signal: 128 + the signal's number, as a shell reports it); anything else is a bug in tether
and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "JudgeError",
    "ModelError",
    "OutputError",
    "Stopped",
    "TetherError",
    "TrainingError",
]


class TetherError(Exception):
    """Base of every error a user can cause and fix. ``str(err)`` is one line."""

    exit_code = 2


class ConfigError(TetherError):
    """An unknown key, a value of the wrong type, or an invalid value in a config."""


class DataError(TetherError):
    """A data file that cannot be read, or a row that breaks the format (names file and line)."""


class ModelError(TetherError):
    """A model or tokenizer that cannot be loaded or does not fit the run."""


class CheckpointError(TetherError):
    """A checkpoint that cannot be written, read, or resumed into this run."""


class JudgeError(TetherError):
    """A judge that cannot be set up (bad URL, missing API key variable, bad rule name)."""


class TrainingError(TetherError):
    """Training cannot go on (e.g. the loss stayed non-finite for ``max_bad_steps`` steps)."""


class OutputError(TetherError, OSError):
    """An output that cannot be written (read-only location, full disk, a file in the way).

    Also an ``OSError``, so code that cleans up after a failed write (a checkpoint's temporary
    directory) handles it like the error it replaces; ``strerror`` is the system's reason."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return str(self.args[0]) if self.args else ""


class Stopped(TrainingError):
    """SIGTERM/SIGINT stopped a run before its end (after a checkpoint): not a success, so
    ``tether train && tether eval`` must not go on. Exit code 128 + the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
