"""``tether report RUN_DIR [RUN_DIR ...]``: redraw a run's report.md, or overlay several runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from tether.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (each with metrics.jsonl); two or more: overlaid")
    parser.add_argument("--out", default=None,
                        help="where the comparison goes (default: the first run directory)")


def run(args: argparse.Namespace) -> int:
    from tether.tracking.report import compare_runs, write_report  # late: matplotlib

    runs = [Path(r).expanduser() for r in args.runs]
    for r in runs:
        if not (r / "metrics.jsonl").is_file():
            raise ConfigError(f"{r}: no metrics.jsonl here; give the output_dir of a "
                              "tether train or sft run")
    if len(runs) == 1:
        print(f"report: {write_report(runs[0])}")
    else:
        print(f"comparison: {compare_runs(runs, Path(args.out) if args.out else runs[0])}")
    return 0
