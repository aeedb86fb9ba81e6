"""``tether eval [CONFIG.yaml] [key=value ...]``: win-rate of the trained model vs its reference."""

from __future__ import annotations

import argparse

from tether.commands import add_config_arguments, config_from_args
from tether.eval.config import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    from tether.eval.evaluate import evaluate  # late: keeps `tether --help` fast

    evaluate(config_from_args(args, EvalConfig))
    return 0
