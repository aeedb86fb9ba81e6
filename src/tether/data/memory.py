"""In-memory training data (``tether.train(train_dataset=...)``) as a named source.

A ``datasets.Dataset`` (a split of a ``DatasetDict``) or a list of dicts is registered under a
name that says what it is and fingerprints its content, ``<in-memory Dataset, 8 rows, sha256
1a2b3c4d5e6f>``. That name is the config's ``data`` (so config.yaml records it and bad rows are
reported as ``<name>[row]``), and ``read_rows`` reads the registered rows for it, through the
same checks as a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tether.errors import DataError

__all__ = ["DATASETS", "dataset_name", "registered"]

# name -> the rows it stands for, while a run that was handed them is set up
DATASETS: dict[str, Any] = {}


def _pick_split(data: Any, split: str, argument: str) -> Any:
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        return data
    if split in data:
        return data[split]
    raise DataError(f"{argument}: the DatasetDict has no split '{split}' (it has "
                    f"{', '.join(data)}); pass {argument}=ds['<split>']")


def dataset_name(data: Any, split: str, argument: str) -> tuple[str, Any]:
    """The registry name of ``data`` and the rows it stands for (a DatasetDict's ``split``)."""
    import datasets

    data = _pick_split(data, split, argument)
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        kind = "list"
    elif isinstance(data, datasets.Dataset):
        kind = "Dataset"
    else:
        raise DataError(f"{argument}: expected a datasets.Dataset, DatasetDict or list of dicts, "
                        f"got {type(data).__name__}")
    digest = hashlib.sha256()
    for row in data:
        digest.update(json.dumps(dict(row), sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return f"<in-memory {kind}, {len(data)} rows, sha256 {digest.hexdigest()[:12]}>", data


@contextmanager
def registered(named: dict[str, Any]) -> Iterator[None]:
    """``named`` readable by ``read_rows`` inside the block."""
    DATASETS.update(named)
    try:
        yield
    finally:
        for name in named:
            DATASETS.pop(name, None)
