"""SQLite (WAL) cache of judge verdicts, so an interrupted evaluation resumes without repeats.

A verdict is keyed by the judge's identity, its template hash, the prompt, the two answers in
display order and the data row (rules read ground truth from it). Only parsed verdicts (A, B,
tie) are stored: a judge that never answered (``error``) or whose answer could not be read
(``unparsed``: a glitch, a server since fixed) is asked again by the next run, never cached
for good. ``unparsed`` rows that older versions stored are ignored on reading.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from tether.eval.hashing import digest
from tether.eval.judges.base import Verdict
from tether.io import make_dir

__all__ = ["JudgmentCache", "judgment_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    winner TEXT NOT NULL,
    p_a REAL,
    raw TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def judgment_key(
    identity: str, template_hash: str, prompt: str, answer_a: str, answer_b: str, row: dict | None
) -> str:
    return digest("judgment/v1", identity, template_hash, prompt, answer_a, answer_b, row)


class JudgmentCache:
    """``get_many`` / ``put_many`` over one SQLite file (``None``: in memory, for no caching)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            make_dir(path.parent, "cache_dir")
        self.path = path
        self._conn = sqlite3.connect(
            str(path) if path is not None else ":memory:", check_same_thread=False, timeout=30
        )
        self._lock = threading.Lock()
        with self._lock:
            if path is not None:
                # WAL: readers never block the writer, and a crash mid-write loses nothing
                # already committed.
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            self._conn.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Verdict]:
        out: dict[str, Verdict] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, winner, p_a, raw FROM judgments WHERE key IN ({marks}) "
                    "AND winner != 'unparsed'", chunk
                ).fetchall()
                for key, winner, p_a, raw in rows:
                    out[key] = Verdict(winner, p_a=p_a, raw=raw)
        return out

    def put_many(self, entries: Iterable[tuple[str, str, str, Verdict]]) -> int:
        """Store (key, identity, template_hash, verdict) rows that hold a parsed verdict;
        returns how many were stored."""
        rows = [
            (key, identity, template_hash, v.winner, v.p_a, v.raw, time.time())
            for key, identity, template_hash, v in entries
            if v.error is None and v.winner != "unparsed"
        ]
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )
            self._conn.commit()
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
