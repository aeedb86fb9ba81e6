"""Which config classes the README documents (``scripts/readme_config.py`` writes them)."""

from __future__ import annotations

import importlib

from tether.config import config_markdown

__all__ = ["CONFIG_TABLES", "render_table"]

# README marker name -> "module:Class"
CONFIG_TABLES = {
    "train": "tether.config:TrainConfig",
    "eval": "tether.eval.config:EvalConfig",
    "pairs": "tether.workflows.pairs:PairsConfig",
    "iterate": "tether.workflows.iterate:IterateConfig",
}


def render_table(name: str) -> str:
    module, cls = CONFIG_TABLES[name].split(":")
    return config_markdown(getattr(importlib.import_module(module), cls))
