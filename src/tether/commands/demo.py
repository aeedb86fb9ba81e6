"""``tether demo [key=value ...]``: the whole method end to end on an embedded task, offline."""

from __future__ import annotations

import argparse

from tether.commands import add_config_arguments, config_from_args
from tether.demo.run import DemoConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DemoConfig)
    parser.description = (
        "Build a tiny Llama and a tokenizer, SFT it on a synthetic assistant task, DPO it "
        "against the SFT model on preference pairs from the same generator, and measure the "
        "win-rate on held-out prompts with a rule judge. No download; minutes on a CPU. "
        "Example: tether demo seed=1 size=small output_dir=runs/demo-small"
    )


def run(args: argparse.Namespace) -> int:
    from tether.demo.report import targets_met
    from tether.demo.run import demo

    cfg = config_from_args(args, DemoConfig)
    summary = demo(cfg.output_dir, cfg.seed, cfg.size, device=cfg.device, progress=cfg.progress)
    print(f"run directory: {cfg.output_dir}  report: {cfg.output_dir}/report.md")
    missed = [name for name, ok in targets_met(summary).items() if not ok]
    if cfg.check_targets and missed:
        print(f"tether demo: target missed: {', '.join(missed)} (check_targets=true)")
        return 1
    return 0
