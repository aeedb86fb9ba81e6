"""``tether sft``: supervised fine-tuning, loss on completion tokens only."""

from __future__ import annotations

import argparse
import os

from tether.commands import add_config_arguments, config_from_args
from tether.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from tether.training.loop import sft

    args.items = [*args.items, "loss=sft"]
    path = sft(config_from_args(args, TrainConfig))
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per process
        print(f"run directory: {path}  (model: {path / 'model'})")
    return 0
