"""The labeling database's SQL: its tables, and the queries that pick an annotator's next item.

Kept apart from ``tether.ui.store`` (which runs them) so the schema reads in one place.
"""

from __future__ import annotations

__all__ = ["ELIGIBLE", "OPEN", "SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    answer_1 TEXT NOT NULL,
    answer_2 TEXT NOT NULL,
    label_1 TEXT NOT NULL,
    label_2 TEXT NOT NULL,
    origin TEXT NOT NULL,
    rank TEXT NOT NULL,
    overlap INTEGER NOT NULL,
    identical INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_rank ON items (identical, rank);
CREATE TABLE IF NOT EXISTS judge_verdicts (
    item_id INTEGER NOT NULL REFERENCES items (id),
    judge TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('1', '2', 'tie')),
    PRIMARY KEY (item_id, judge)
);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    annotator_id INTEGER NOT NULL REFERENCES annotators (id),
    csrf TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items (id),
    annotator_id INTEGER NOT NULL REFERENCES annotators (id),
    swapped INTEGER NOT NULL,
    assigned REAL NOT NULL,
    PRIMARY KEY (item_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments (annotator_id, assigned);
CREATE TABLE IF NOT EXISTS votes (
    item_id INTEGER NOT NULL,
    annotator_id INTEGER NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad', 'skip')),
    outcome TEXT NOT NULL CHECK (outcome IN ('1', '2', 'tie', 'both_bad', 'skip')),
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (item_id, annotator_id),
    FOREIGN KEY (item_id, annotator_id) REFERENCES assignments (item_id, annotator_id)
);
"""

# Items this annotator may be given next: not seen by them yet, and not held by enough others.
# An item is held by an annotator with an open claim younger than the lease, or with a vote
# other than skip. Exclusive items may be held by one annotator; shared (overlap) items by
# :k of them (:k = 0: by everyone).
HOLDERS = """(
      SELECT COUNT(*) FROM assignments a
      LEFT JOIN votes v ON v.item_id = a.item_id AND v.annotator_id = a.annotator_id
      WHERE a.item_id = i.id
        AND ((v.choice IS NULL AND a.assigned > :stale) OR v.choice != 'skip'))"""

ELIGIBLE = f"""
FROM items i
WHERE i.identical = 0
  AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.annotator_id = :me)
  AND (CASE WHEN i.overlap = 1 THEN :k = 0 OR {HOLDERS} < :k ELSE {HOLDERS} = 0 END)
"""

OPEN = """
FROM assignments a
LEFT JOIN votes v ON v.item_id = a.item_id AND v.annotator_id = a.annotator_id
WHERE a.annotator_id = :me AND v.item_id IS NULL
"""
