"""Fixtures for the labeling page's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import LiveServer


@pytest.fixture
def live_server() -> Iterator[type[LiveServer]]:
    """Factory: ``live_server([...cli args])``; every server started is stopped afterwards."""
    started: list[LiveServer] = []

    class _Tracked(LiveServer):
        def __init__(self, args: list[str]) -> None:
            super().__init__(args)
            started.append(self)

    yield _Tracked
    for server in started:
        server.stop()
