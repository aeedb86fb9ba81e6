"""Everything `tether label` keeps, in one SQLite file (WAL mode; votes fsynced on commit).

Tables: ``items`` (prompt and two answers, JSON), ``judge_verdicts`` (automatic verdicts on
items), ``annotators``, ``sessions`` (hashed ids, each with its CSRF token), ``assignments`` (which
annotator saw which item, and whether the sides were swapped) and ``votes``.

Every write is its own ``BEGIN IMMEDIATE`` transaction, committed before the caller answers the
HTTP request; votes are fsynced (synchronous=FULL), so a vote that was acknowledged survives
``kill -9`` and a power cut. Each thread of the web app's pool has its own connection.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from tether.errors import ConfigError
from tether.ui.inputs import Mode, PairItem
from tether.ui.schema import ELIGIBLE, OPEN, SCHEMA

__all__ = [
    "CHOICES",
    "ImportReport",
    "Item",
    "LabelStore",
    "Progress",
    "Session",
    "Shown",
    "VoteRejected",
    "VoteRow",
]

# What the annotator can answer, in the displayed sides' terms.
CHOICES = ("A", "B", "tie", "both_bad", "skip")
Choice = Literal["A", "B", "tie", "both_bad", "skip"]
NAME_MAX = 64
REASON_MAX = 2000

class VoteRejected(Exception):
    """A vote the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    id: int
    key: str
    prompt: Any
    answer_1: Any
    answer_2: Any
    label_1: str
    label_2: str
    origin: str
    overlap: bool
    identical: bool


@dataclass(frozen=True)
class Shown:
    """An item as one annotator sees it: ``swapped`` puts answer 2 on side A."""

    item: Item
    swapped: bool

    @property
    def answer_a(self) -> Any:
        return self.item.answer_2 if self.swapped else self.item.answer_1

    @property
    def answer_b(self) -> Any:
        return self.item.answer_1 if self.swapped else self.item.answer_2


@dataclass(frozen=True)
class Progress:
    done: int
    skipped: int
    remaining: int


@dataclass(frozen=True)
class Session:
    annotator_id: int
    name: str
    csrf: str


@dataclass(frozen=True)
class VoteRow:
    """A stored vote; ``outcome`` is in answer terms: "1", "2", "tie", "both_bad" or "skip"."""

    item_id: int
    annotator: str
    choice: str
    outcome: str
    reason: str
    swapped: bool
    created: float


@dataclass(frozen=True)
class ImportReport:
    added: int
    already: int
    identical: int
    verdicts: int


def _hash(*parts: object) -> bytes:
    return hashlib.sha256(":".join(map(str, parts)).encode()).digest()


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _outcome(choice: str, swapped: bool) -> str:
    """The displayed choice in terms of the stored answers (A is answer 2 when swapped)."""
    if choice == "A":
        return "2" if swapped else "1"
    if choice == "B":
        return "1" if swapped else "2"
    return choice


class LabelStore:
    """The labeling database. ``mode``, ``seed`` and ``overlap`` are fixed when it is created;
    passing a different value later is a ConfigError (the seeded order and the overlap set
    would silently change under annotators who already started)."""

    def __init__(
        self,
        path: str | Path,
        *,
        mode: Mode | None = None,
        seed: int | None = None,
        overlap: float | None = None,
        overlap_annotators: int | None = None,
        claim_ttl: float = 3600.0,
        session_ttl: float = 12 * 3600.0,
    ) -> None:
        self.path = Path(path)
        self.claim_ttl = claim_ttl
        if session_ttl <= 0:
            raise ConfigError(f"--session-hours {session_ttl / 3600:g}: expected a positive number")
        self.session_ttl = session_ttl
        self._local = threading.local()
        if overlap is not None and not 0.0 <= overlap <= 1.0:
            raise ConfigError(f"--overlap {overlap}: expected a fraction between 0 and 1")
        if overlap_annotators is not None and overlap_annotators < 0:
            raise ConfigError(f"--overlap-annotators {overlap_annotators}: expected 0 (everyone) "
                              "or the number of annotators per shared item (e.g. 2)")
        if not self.path.parent.is_dir():
            raise ConfigError(f"--db {self.path}: folder {self.path.parent} does not exist")
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            conn.commit()
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"--db {self.path}: not a tether label database ({err})") from None
        finally:
            conn.close()
        meta = self._settle_meta({"mode": mode, "seed": seed, "overlap": overlap,
                                  "overlap_annotators": overlap_annotators})
        self.mode = cast(Mode, meta["mode"])
        self.seed = int(meta["seed"])
        self.overlap = float(meta["overlap"])
        self.overlap_annotators = int(meta["overlap_annotators"])

    def _settle_meta(self, given: dict[str, Any]) -> dict[str, str]:
        defaults = {"mode": "collect", "seed": 0, "overlap": 0.1, "overlap_annotators": 0}
        with self._db(write=True) as db:
            stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
            for name, value in given.items():
                flag = "--" + name.replace("_", "-")
                if name in stored:
                    if value is not None and str(value) != stored[name]:
                        raise ConfigError(
                            f"--db {self.path} was created with {flag} {stored[name]}, "
                            f"not {value}; drop {flag} or use a new --db"
                        )
                    continue
                stored[name] = str(defaults[name] if value is None else value)
                db.execute("INSERT INTO meta VALUES (?, ?)", (name, stored[name]))
        return stored

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread, kept open: the web app answers from a thread pool, and
        # closing the last connection to a WAL database checkpoints it (an fsync each time).
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _db(self, write: bool = False, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction. ``durable``: fsync the commit (votes, imports), so it survives a
        power cut too; otherwise WAL with synchronous=NORMAL, which survives a killed process
        (claims and sessions, which are cheap to redo, skip one fsync per request)."""
        conn = self._connection()
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # also after a failed COMMIT (disk full): this thread's connection is reused
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- items -------------------------------------------------------------------------------

    def add_items(self, items: Sequence[PairItem]) -> ImportReport:
        """Store new comparisons (duplicates of stored ones only add their verdicts)."""
        with self._db(write=True, durable=True) as db:
            known: dict[str, Any] = {
                r["key"]: r for r in db.execute("SELECT id, key, answer_1 FROM items")
            }
            fresh: dict[str, PairItem] = {}
            for it in items:
                if it.key not in known and it.key not in fresh:
                    fresh[it.key] = it
            identical = {k for k, it in fresh.items() if _dump(it.answer_1) == _dump(it.answer_2)}
            judged = sorted(set(fresh) - identical, key=lambda k: _hash(self.seed, "overlap", k))
            shared = set(judged[: round(self.overlap * len(judged))])
            for key, it in fresh.items():
                cur = db.execute(
                    "INSERT INTO items (key, prompt, answer_1, answer_2, label_1, label_2, origin,"
                    " rank, overlap, identical) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, _dump(it.prompt), _dump(it.answer_1), _dump(it.answer_2), it.label_1,
                     it.label_2, it.origin, _hash(self.seed, "order", key).hex(),
                     int(key in shared), int(key in identical)),
                )
                known[key] = {"id": cur.lastrowid, "key": key, "answer_1": _dump(it.answer_1)}
            verdicts = _put_verdicts(db, items, known)
        return ImportReport(len(fresh), len(items) - len(fresh), len(identical), verdicts)

    def add_verdicts(self, items: Sequence[PairItem]) -> tuple[int, int]:
        """Store the automatic verdicts of comparisons already stored; others are not added.
        Returns (verdicts stored, rows whose comparison is not in the database)."""
        with self._db(write=True, durable=True) as db:
            known = {r["key"]: r for r in db.execute("SELECT id, key, answer_1 FROM items")}
            matched = [it for it in items if it.key in known]
            return _put_verdicts(db, matched, known), len(items) - len(matched)

    def items(self) -> list[Item]:
        with self._db() as db:
            return [_item(r) for r in db.execute("SELECT * FROM items ORDER BY id")]

    def item(self, item_id: int) -> Item | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else _item(row)

    def find_item(self, key: str) -> Item | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM items WHERE key = ?", (key,)).fetchone()
        return None if row is None else _item(row)

    def judge_verdicts(self) -> dict[str, dict[int, str]]:
        """judge -> item id -> outcome ("1", "2" or "tie")."""
        out: dict[str, dict[int, str]] = {}
        with self._db() as db:
            for r in db.execute("SELECT item_id, judge, outcome FROM judge_verdicts"):
                out.setdefault(r["judge"], {})[r["item_id"]] = r["outcome"]
        return out

    # --- annotators and sessions ---------------------------------------------------------------

    def login(self, name: str) -> tuple[str, Session]:
        """Start a session for ``name`` (creating the annotator); returns (session id, session)."""
        name = name.strip()
        if not name or len(name) > NAME_MAX or not name.isprintable():
            raise VoteRejected(400, f"name must be 1 to {NAME_MAX} printable characters")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._db(write=True) as db:
            # expired sessions go on every login, so the table does not grow without bound
            db.execute("DELETE FROM sessions WHERE created < ?", (time.time() - self.session_ttl,))
            db.execute(
                "INSERT INTO annotators (name, created) VALUES (?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, time.time()),
            )
            (annotator_id,) = db.execute(
                "SELECT id FROM annotators WHERE name = ?", (name,)
            ).fetchone()
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?)",
                (_hash(sid).hex(), annotator_id, csrf, time.time()),
            )
        return sid, Session(annotator_id, name, csrf)

    def session(self, sid: str) -> Session | None:
        """The live session of cookie ``sid``; None when unknown or older than ``session_ttl``
        (the annotator logs in again; their votes and open item stay theirs)."""
        with self._db() as db:
            row = db.execute(
                "SELECT s.annotator_id, a.name, s.csrf FROM sessions s"
                " JOIN annotators a ON a.id = s.annotator_id"
                " WHERE s.id_hash = ? AND s.created >= ?",
                (_hash(sid).hex(), time.time() - self.session_ttl),
            ).fetchone()
        return None if row is None else Session(row[0], row[1], row[2])

    def logout(self, sid: str) -> None:
        with self._db(write=True) as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (_hash(sid).hex(),))

    def annotators(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT name FROM annotators ORDER BY id")]

    # --- the queue -----------------------------------------------------------------------------

    def _queue_params(self, who: Session) -> dict[str, Any]:
        return {"me": who.annotator_id, "stale": time.time() - self.claim_ttl,
                "k": self.overlap_annotators}

    def current(self, who: Session) -> Shown | None:
        """The item this annotator is on: the open one, else the next eligible one (claimed now).
        ``None`` when nothing is left for them."""
        params = self._queue_params(who)
        with self._db(write=True) as db:
            row: Any = db.execute(
                f"SELECT a.item_id, a.swapped {OPEN} ORDER BY a.assigned, a.item_id LIMIT 1",
                params,
            ).fetchone()
            if row is None:
                nxt = db.execute(f"SELECT i.id, i.key {ELIGIBLE} ORDER BY i.rank LIMIT 1",
                                 params).fetchone()
                if nxt is None:
                    return None
                swapped = _hash(self.seed, "swap", nxt["key"], who.name)[0] & 1
                db.execute(
                    "INSERT INTO assignments VALUES (?, ?, ?, ?)",
                    (nxt["id"], who.annotator_id, swapped, time.time()),
                )
                row = {"item_id": nxt["id"], "swapped": swapped}
            item = db.execute("SELECT * FROM items WHERE id = ?", (row["item_id"],)).fetchone()
        return Shown(_item(item), bool(row["swapped"]))

    def progress(self, who: Session) -> Progress:
        params = self._queue_params(who)
        with self._db() as db:
            (eligible,) = db.execute(f"SELECT COUNT(*) {ELIGIBLE}", params).fetchone()
            (open_,) = db.execute(f"SELECT COUNT(*) {OPEN}", params).fetchone()
            counts = dict(
                db.execute(
                    "SELECT choice = 'skip', COUNT(*) FROM votes WHERE annotator_id = ?"
                    " GROUP BY choice = 'skip'",
                    (who.annotator_id,),
                ).fetchall()
            )
        return Progress(counts.get(0, 0), counts.get(1, 0), eligible + open_)

    def vote(self, who: Session, item_id: int, choice: str, reason: str = "") -> bool:
        """Record a vote on an item shown to this annotator; committed when this returns.

        Returns True when stored now, False when the same vote was already stored (a resent
        request). A different vote on an already voted item, or a vote on an item never shown
        to this annotator, raises VoteRejected.
        """
        if choice not in CHOICES:
            raise VoteRejected(400, f"choice must be one of {', '.join(CHOICES)}")
        reason = reason.strip()
        if len(reason) > REASON_MAX:
            raise VoteRejected(400, f"reason is longer than {REASON_MAX} characters")
        with self._db(write=True, durable=True) as db:
            shown = db.execute(
                "SELECT swapped FROM assignments WHERE item_id = ? AND annotator_id = ?",
                (item_id, who.annotator_id),
            ).fetchone()
            if shown is None:
                raise VoteRejected(404, f"item {item_id} was not shown to {who.name}")
            before = db.execute(
                "SELECT choice FROM votes WHERE item_id = ? AND annotator_id = ?",
                (item_id, who.annotator_id),
            ).fetchone()
            if before is not None:
                if before["choice"] != choice:
                    raise VoteRejected(409, f"item {item_id} already has a vote from {who.name}")
                return False
            db.execute(
                "INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?)",
                (item_id, who.annotator_id, choice, _outcome(choice, bool(shown["swapped"])),
                 reason, time.time()),
            )
        return True

    def votes(self) -> list[VoteRow]:
        with self._db() as db:
            rows = db.execute(
                "SELECT v.item_id, n.name, v.choice, v.outcome, v.reason, a.swapped, v.created"
                " FROM votes v JOIN annotators n ON n.id = v.annotator_id"
                " JOIN assignments a ON a.item_id = v.item_id AND a.annotator_id = v.annotator_id"
                " ORDER BY v.created, v.item_id"
            ).fetchall()
        return [VoteRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]


def _put_verdicts(db: sqlite3.Connection, items: Sequence[PairItem], known: dict[str, Any]) -> int:
    count = 0
    for it in items:
        row = known[it.key]
        flip = row["answer_1"] != _dump(it.answer_1)
        for judge, outcome in it.verdicts:
            if flip and outcome != "tie":
                outcome = "2" if outcome == "1" else "1"
            # Two verdicts of one judge on one pair that disagree make a tie.
            db.execute(
                "INSERT INTO judge_verdicts VALUES (?, ?, ?) ON CONFLICT (item_id, judge)"
                " DO UPDATE SET outcome = CASE WHEN outcome = excluded.outcome"
                " THEN outcome ELSE 'tie' END",
                (row["id"], judge, outcome),
            )
            count += 1
    return count


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=row["id"],
        key=row["key"],
        prompt=json.loads(row["prompt"]),
        answer_1=json.loads(row["answer_1"]),
        answer_2=json.loads(row["answer_2"]),
        label_1=row["label_1"],
        label_2=row["label_2"],
        origin=row["origin"],
        overlap=bool(row["overlap"]),
        identical=bool(row["identical"]),
    )
