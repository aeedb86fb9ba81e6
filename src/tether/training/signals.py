"""Stopping a run cleanly: SIGTERM/SIGINT finish the step, checkpoint, and exit 128 + signal."""

from __future__ import annotations

import signal
import threading
from typing import Any

from tether.errors import Stopped

__all__ = ["StopOnSignal"]


class StopOnSignal:
    """SIGTERM/SIGINT ask the loop to finish its step, checkpoint and return; a second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def stopped(self, step: int) -> Stopped:
        """The error a stopped run ends with: exit code 128 + the signal (143 SIGTERM)."""
        signum = signal.Signals[self.requested] if self.requested else signal.SIGTERM
        return Stopped(
            f"stopped by {self.requested or 'another rank'} at step {step}; checkpoint written. "
            "Resume with the same command plus resume=true", signum,
        )

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
