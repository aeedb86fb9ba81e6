"""``tether label``: load items into the labeling database, serve the page, or export votes.

    tether label --items answers.jsonl --mode collect --db label.db     # serve (127.0.0.1:8765)
    tether label --db label.db --export prefs.jsonl --summary summary.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tether.errors import ConfigError, DataError, TetherError
from tether.io import check_writable
from tether.locking import exclusive_lock
from tether.ui.export import export_preferences, summary, write_json
from tether.ui.inputs import read_items
from tether.ui.server import serve
from tether.ui.store import LabelStore

__all__ = ["add_arguments", "main", "run"]

TOKEN_ENV = "TETHER_LABEL_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Blind side-by-side judging in the browser: collect preference pairs from people, or "
        "judge the trained model against the reference. Votes are stored in --db (SQLite)."
    )
    parser.add_argument("--items", type=Path, metavar="FILE.jsonl",
                        help="comparisons to add: {prompt, responses} or {prompt, chosen, "
                             "rejected} rows (collect); {prompt, policy, reference} rows or "
                             "tether eval's eval/judgments.jsonl (winrate)")
    parser.add_argument("--mode", choices=["collect", "winrate"],
                        help="collect preferences or judge a win-rate (fixed when --db is "
                             "created; default collect)")
    parser.add_argument("--judgments", type=Path, metavar="FILE.jsonl",
                        help="an automatic judge's verdicts on the same items "
                             "(e.g. eval/judgments.jsonl), to measure agreement with people")
    parser.add_argument("--db", type=Path, default=Path("label.db"),
                        help="labeling database (default: label.db)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs --token)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another name the page answers to on loopback, e.g. a name in "
                             "/etc/hosts (repeatable; 127.0.0.1, localhost and [::1] always "
                             "work; other names are refused to stop DNS rebinding)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    parser.add_argument("--token", default=None,
                        help=f"access token asked at login (or set {TOKEN_ENV}, which keeps it "
                             "out of the process list); required with a non-loopback --host")
    parser.add_argument("--overlap", type=float, default=None,
                        help="fraction of items judged by several annotators, for agreement "
                             "(fixed when --db is created; default 0.1)")
    parser.add_argument("--overlap-annotators", type=int, default=None,
                        help="how many annotators judge each shared item (fixed when --db is "
                             "created; default 0: every annotator)")
    parser.add_argument("--session-hours", type=float, default=12.0,
                        help="a login lasts this long, then the annotator logs in again "
                             "(default 12)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of item order and side shuffling (fixed at creation; default 0)")
    parser.add_argument("--export", type=Path, metavar="OUT.jsonl",
                        help="write the preference pairs {prompt, chosen, rejected, ...} and exit")
    parser.add_argument("--summary", type=Path, metavar="OUT.json",
                        help="write counts, agreement (kappa) and the win-rate, and exit")


def _report_only(args: argparse.Namespace) -> bool:
    return args.export is not None or args.summary is not None


def _print_summary(data: dict) -> None:
    agree = data["agreement"]
    if agree["kappa"] is not None:
        print(f"agreement: {agree['kappa_kind']} kappa {agree['kappa']:.3f} over "
              f"{agree['items']} shared items, {agree['annotators']} annotators")
    for judge, report in data["judge_agreement"].items():
        if report["kappa"] is not None:
            print(f"people vs {judge}: kappa {report['kappa']:.3f}, agreement "
                  f"{report['agreement']:.3f} over {report['n']} items")
    win = data.get("winrate")
    if win and win["win_rate"] is not None:
        lo, hi = win["ci95"]
        print(f"win-rate {win['win_rate']:.3f} (95% Wilson {lo:.3f}-{hi:.3f}): "
              f"{win['wins']} wins, {win['ties']} ties, {win['losses']} losses, "
              f"{win['unparsed']} not judged")


def run(args: argparse.Namespace) -> int:
    """Serving or adding items writes the database: one writer per --db at a time, like one
    run per output_dir; a second is refused in one line rather than serving the same items
    from two places. Export and summary only read: they run beside the server."""
    if _report_only(args) and args.items is None and args.judgments is None:
        return _run(args)
    lock = args.db.with_name(args.db.name + ".lock")
    with exclusive_lock(lock, f"--db {args.db}",
                        "stop the other tether label on it first, or use another --db"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if _report_only(args) and args.items is None and not args.db.exists():
        raise ConfigError(f"--db {args.db}: no such database; give the --db you labeled with")
    if args.db.parent.is_dir():  # the store writes even to export (WAL, settings)
        check_writable(args.db.parent, "--db")
    store = LabelStore(args.db, mode=args.mode, seed=args.seed, overlap=args.overlap,
                       overlap_annotators=args.overlap_annotators,
                       session_ttl=3600 * args.session_hours)
    if args.items is not None:
        rep = store.add_items(read_items(args.items, store.mode))
        print(f"{args.items}: {rep.added} new items, {rep.already} already stored, "
              f"{rep.identical} with identical answers (not shown), {rep.verdicts} judge verdicts")
    if args.judgments is not None:
        stored, unknown = store.add_verdicts(read_items(args.judgments, store.mode))
        print(f"{args.judgments}: {stored} judge verdicts stored, "
              f"{unknown} rows not among the items")
    if _report_only(args):
        if args.export is not None:
            print(f"{args.export}: {export_preferences(store, args.export).line()}")
        if args.summary is not None:
            data = summary(store)
            write_json(args.summary, data)
            _print_summary(data)
        return 0
    if not any(not it.identical for it in store.items()):
        raise DataError(f"--db {args.db} has no items to judge; add some with --items FILE.jsonl")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    serve(store, host=args.host, port=args.port, token=token, allowed_hosts=args.allowed_host)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m tether.ui``) until ``tether label`` is wired in."""
    parser = argparse.ArgumentParser(prog="tether label")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except TetherError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
