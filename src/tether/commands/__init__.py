"""Subcommands of the ``tether`` CLI: each has ``add_arguments(parser)`` and ``run(args)``."""

from __future__ import annotations

import argparse
from typing import Any

from tether.config import config_help, load_config


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """``[CONFIG.yaml] [key=value ...]`` plus the key reference in ``--help``."""
    parser.add_argument(
        "items", nargs="*", metavar="[CONFIG.yaml] key=value",
        help="a YAML config file and/or key=value overrides (later ones win)",
    )
    parser.epilog = "config keys:\n" + config_help(cls)


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    items = list(args.items)
    path = None
    if items and "=" not in items[0]:
        path = items.pop(0)
    return load_config(cls, path, items)
