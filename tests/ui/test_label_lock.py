"""One writer per labeling database (issue 14): a second server, or an import of items, on a
--db that a running server holds is refused in one line; export and summary still run beside
it, and a server killed with SIGKILL leaves no stale lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tether.cli import main

from .helpers import SRC, collect_rows, write_jsonl


def test_a_second_writer_on_a_served_database_is_refused(tmp_path: Path, live_server, capsys):
    items = write_jsonl(tmp_path / "items.jsonl", collect_rows(4))
    db = tmp_path / "label.db"
    server = live_server(["--items", str(items), "--db", str(db)])
    fix = "stop the other tether label on it first, or use another --db"
    second = subprocess.run(
        [sys.executable, "-m", "tether", "label", "--db", str(db), "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=120,
    )
    assert second.returncode == 2
    assert second.stderr == (f"tether label: error: --db {db}: in use by another tether process "
                             f"(pid {server.proc.pid}); {fix}\n")
    more = write_jsonl(tmp_path / "more.jsonl", collect_rows(6))
    assert main(["label", "--db", str(db), "--items", str(more), "--export",
                 str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err.endswith(f"{fix}\n")
    # reading beside the server is fine
    assert main(["label", "--db", str(db), "--export", str(tmp_path / "prefs.jsonl")]) == 0
    server.kill9()
    # the kernel dropped the lock with the process: the import now goes through
    assert main(["label", "--db", str(db), "--items", str(more), "--export",
                 str(tmp_path / "x.jsonl")]) == 0
    assert "2 new items" in capsys.readouterr().out
