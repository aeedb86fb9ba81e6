"""Fixtures of the data tests: released tokenizers and chat templates (``real_tokenizers``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from real_tokenizers import FAMILIES, tokenizer_dir

from tether.model.loading import load_tokenizer


@pytest.fixture(scope="session")
def real_dirs() -> dict[str, Path]:
    # Download and build everything once, here: a skip (offline) is then one skip per session.
    return {name: tokenizer_dir(name) for name in FAMILIES}


@pytest.fixture(scope="session")
def real(real_dirs: dict[str, Path]) -> Callable[[str], Any]:
    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:  # through tether's own loader, as a run would
            loaded[name] = load_tokenizer(str(real_dirs[name]))
        return loaded[name]

    return get
