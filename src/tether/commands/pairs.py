"""``tether pairs``: import, sample or rewrite preference pairs into standard JSONL."""

from __future__ import annotations

import argparse

from tether.commands import add_config_arguments, config_from_args
from tether.workflows.pairs import PairsConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PairsConfig)


def run(args: argparse.Namespace) -> int:
    from tether.workflows.pairs import run as make_pairs  # tether.pairs is this function

    cfg = config_from_args(args, PairsConfig)
    stats = make_pairs(cfg)
    print(f"{stats['written']} pairs written to {cfg.output}  ({stats})")
    return 0
