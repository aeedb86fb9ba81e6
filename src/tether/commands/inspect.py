"""``tether inspect DATA [key=value ...]``: a report on a preference file before training."""

from __future__ import annotations

import argparse

from tether.commands import add_config_arguments, config_from_args
from tether.insight.inspect import InspectConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, InspectConfig)


def run(args: argparse.Namespace) -> int:
    from tether.insight.inspect import inspect_data

    items = list(args.items)
    if items and "=" not in items[0] and not items[0].endswith((".yaml", ".yml")):
        items[0] = f"data={items[0]}"  # tether inspect pairs.jsonl
    args.items = items
    result = inspect_data(config_from_args(args, InspectConfig))
    warn = [f for f in result["findings"] if f["severity"] == "warn"]
    for f in warn:
        print(f"{f['name']}: {f['summary']}")
    print(f"{len(warn)} findings to look at; report: {result['report']}")
    return 0
