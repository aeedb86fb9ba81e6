"""tether: Direct Preference Optimization and its family, readable and lean.

The public API, one function per command::

    import tether
    cfg = tether.load_config(tether.TrainConfig, "dpo.yaml", ["beta=0.1"])
    run_dir = tether.train(cfg)              # tether train  (tether.sft: tether sft)
    results = tether.evaluate(tether.EvalConfig(model=str(run_dir), data="heldout.jsonl",
                                                judge="rule", judge_rule="mymod:score"))

As with TRL, objects may stand in for paths, and callbacks watch the run::

    run_dir = tether.train({"learning_rate": 5e-7, "loss_type": "sigmoid"}, model=model,
                           tokenizer=tok, train_dataset=ds, peft_config=LoraConfig(r=16),
                           callbacks=[tether.EarlyStopping("eval/loss", patience=2)])

``tether.pairs`` and ``tether.iterate`` run ``tether pairs`` and ``tether iterate``. Extension
points are registries: ``register_loss`` (an objective, ``LOSSES``), ``register_shape`` (a data
shape, ``SHAPES``), ``register_judge`` (a judge, ``JUDGES``). Names load on first use, so
``import tether`` stays light (no torch until a model is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

from tether.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    JudgeError,
    ModelError,
    TetherError,
    TrainingError,
)

__version__ = "0.1.0"

# public name -> "module:attribute", imported on first use
_LAZY = {
    "train": "tether.training.loop:train",
    "sft": "tether.training.loop:sft",
    "evaluate": "tether.eval.evaluate:evaluate",
    "pairs": "tether.workflows.pairs:run",
    "iterate": "tether.workflows.iterate:iterate",
    "TrainConfig": "tether.config:TrainConfig",
    "EvalConfig": "tether.eval.config:EvalConfig",
    "PairsConfig": "tether.workflows.pairs:PairsConfig",
    "IterateConfig": "tether.workflows.iterate:IterateConfig",
    "load_config": "tether.config:load_config",
    "LOSSES": "tether.losses:LOSSES",
    "LOSS_SPECS": "tether.losses:LOSS_SPECS",
    "LossSpec": "tether.losses:LossSpec",
    "LossOutput": "tether.losses:LossOutput",
    "register_loss": "tether.losses:register",
    "SHAPES": "tether.shapes:SHAPES",
    "register_shape": "tether.shapes:register_shape",
    "JUDGES": "tether.eval.judges.registry:JUDGES",
    "register_judge": "tether.eval.judges.registry:register_judge",
    "Callback": "tether.training.callbacks:Callback",
    "EarlyStopping": "tether.training.callbacks:EarlyStopping",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "JudgeError",
    "ModelError",
    "TetherError",
    "TrainingError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
