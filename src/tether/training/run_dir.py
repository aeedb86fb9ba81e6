"""The run directory: resolved config, metrics, data audit, model (see DESIGN.md)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.config import save_config
from tether.io import make_dir, output_error, write_json, write_text

if TYPE_CHECKING:
    from tether.training.distributed import Dist

__all__ = ["QuietRunDir", "RunDir", "open_run_dir"]


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, output_dir: str, cfg: Any) -> RunDir:
        path = make_dir(output_dir, "output_dir")
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
        try:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as e:
            raise output_error(self.metrics_path, e) from None

    def truncate_metrics(self, lines: int) -> None:
        """Keep the first ``lines`` lines (atomically): what a resumed run has not redone."""
        kept = self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] \
            if self.metrics_path.exists() else []
        write_text(self.metrics_path, "".join(kept))

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]


class QuietRunDir(RunDir):
    """The run directory as ranks other than 0 see it: readable, never written."""

    @property
    def metrics_path(self) -> Path:
        # A path that never exists, so the loop's "fresh run: remove old metrics" and the
        # resume's truncation leave rank 0's file alone.
        return self.path / f".metrics-rank-{os.environ.get('RANK', '?')}.absent"

    def log_metrics(self, row: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, lines: int) -> None:
        pass

    def write_json(self, name: str, obj: Any) -> None:
        pass


def open_run_dir(output_dir: str, cfg: Any, d: Dist) -> RunDir:
    """Rank 0 creates the run directory (and writes config.yaml); the others only read it."""
    if d.main:
        return RunDir.create(output_dir, cfg)
    return QuietRunDir(Path(output_dir).expanduser())
