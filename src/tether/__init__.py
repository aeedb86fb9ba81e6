"""tether: Direct Preference Optimization and its family, readable and lean."""

from __future__ import annotations

from tether.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    JudgeError,
    ModelError,
    TetherError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "JudgeError",
    "ModelError",
    "TetherError",
    "__version__",
]
