"""Which config classes (and tables) the README documents (scripts/readme_config.py)."""

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
    "trl": "tether.trl_names:trl_markdown",  # a function: the "Migrating from TRL" table
}


def render_table(name: str) -> str:
    module, attr = CONFIG_TABLES[name].split(":")
    obj = getattr(importlib.import_module(module), attr)
    return config_markdown(obj) if isinstance(obj, type) else str(obj())
