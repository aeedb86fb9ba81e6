"""The run directory: resolved config, metrics, data audit, model (see DESIGN.md)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.config import save_config

__all__ = ["RunDir"]


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, output_dir: str, cfg: Any) -> RunDir:
        path = Path(output_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, path / "config.yaml")
        return cls(path)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one line; non-finite numbers become null so the file stays valid JSON."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")

    def truncate_metrics(self, lines: int) -> None:
        """Keep the first ``lines`` lines (atomically): what a resumed run has not redone."""
        kept = self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] \
            if self.metrics_path.exists() else []
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

    def write_json(self, name: str, obj: Any) -> None:
        (self.path / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
