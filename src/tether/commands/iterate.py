"""``tether iterate``: rounds of sample -> judge -> pairs -> DPO, win-rate after each."""

from __future__ import annotations

import argparse

from tether.commands import add_config_arguments, config_from_args
from tether.workflows.iterate import IterateConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, IterateConfig)


def run(args: argparse.Namespace) -> int:
    from tether.workflows.iterate import iterate

    cfg = config_from_args(args, IterateConfig)
    for h in iterate(cfg):
        print(f"round {h['round']}: {h['pairs']} pairs, win-rate {h['win_rate']:.3f} "
              f"[{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}] vs the starting model")
    print(f"plot: {cfg.output_dir}/winrate.png")
    return 0
