"""``tether push RUN_DIR --repo org/name``: upload ``model/`` and its card to the Hub."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or a model directory)")
    parser.add_argument("--repo", required=True, help="hub repo id, org/name")
    parser.add_argument("--public", action="store_true",
                        help="make a new repo public (default: private)")
    parser.epilog = ("The token is read from the HF_TOKEN environment variable only; "
                     "HF_ENDPOINT selects another Hub.")


def run(args: argparse.Namespace) -> int:
    from tether.model.push import push_model

    url = push_model(args.run_dir, args.repo, private=not args.public)
    print(f"pushed: {url}")
    return 0
