"""Experiment trackers behind one small Protocol: TensorBoard, W&B, MLflow, trackio.

Each backend is an optional extra (``pip install 'tether[wandb]'``), imported only when
``report_to`` names it. A backend receives the resolved config (never environment variables,
so API keys and tokens cannot reach it), one dict of numbers per logged step, and a final
summary. Add one: a class with ``log_config``/``log``/``finish`` and one line in ``TRACKERS``.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from tether.errors import ConfigError

__all__ = ["TRACKERS", "Logger", "TrackerSpec", "build_loggers"]


class Logger(Protocol):
    """What a tracker does for tether: the config once, numbers per step, a summary at the end."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self, summary: Mapping[str, float]) -> None: ...


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` as text (MLflow params, TensorBoard text)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if not isinstance(v, str) else v
    return out


class TensorBoardLogger:
    """Event files under ``<run>/tensorboard/`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: Path, run_name: str, project: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.last_step = 0

    def log_config(self, config: Mapping[str, Any]) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in _flat(config).items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.last_step = step
        self.writer.flush()

    def finish(self, summary: Mapping[str, float]) -> None:
        for k, v in summary.items():
            self.writer.add_scalar(f"summary/{k}", v, self.last_step)
        self.writer.close()


class WandbLogger:
    """A W&B run whose files go to ``<run>/wandb/``; ``WANDB_MODE=offline`` keeps it local
    (``wandb sync`` uploads it later)."""

    def __init__(self, run_dir: Path, run_name: str, project: str) -> None:
        import wandb

        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir),
                              reinit="create_new")

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, summary: Mapping[str, float]) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in summary.items()})
        self.run.finish()


class MlflowLogger:
    """An MLflow run in experiment ``project``; the store is ``MLFLOW_TRACKING_URI`` when set,
    else the SQLite file ``<run>/mlflow.db`` (``mlflow ui --backend-store-uri
    sqlite:///runs/x/mlflow.db``); MLflow's file store is in maintenance mode."""

    def __init__(self, run_dir: Path, run_name: str, project: str) -> None:
        from mlflow.tracking import MlflowClient

        db = (run_dir / "mlflow.db").resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{db}"
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(project)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.last_step = 0

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()])
        self.last_step = step

    def finish(self, summary: Mapping[str, float]) -> None:
        self.log({f"summary/{k}": v for k, v in summary.items()}, self.last_step)
        self.client.set_terminated(self.run_id)


class TrackioLogger:
    """A trackio run in project ``project``: a local SQLite store under ``TRACKIO_DIR``
    (default ``~/.cache/huggingface/trackio``; ``trackio show`` opens the dashboard)."""

    def __init__(self, run_dir: Path, run_name: str, project: str) -> None:
        import trackio

        self.trackio = trackio
        self.project, self.name = project, run_name
        self.run: Any = None
        self.last_step = 0

    def log_config(self, config: Mapping[str, Any]) -> None:
        # trackio takes the config when the run starts
        self.run = self.trackio.init(project=self.project, name=self.name, config=dict(config),
                                     embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)
        self.last_step = step

    def finish(self, summary: Mapping[str, float]) -> None:
        self.run.log({f"summary/{k}": v for k, v in summary.items()}, step=self.last_step)
        self.run.finish()


class TrackerSpec:
    """A backend: its class, the module it needs and the extra that installs it."""

    def __init__(self, factory: Callable[[Path, str, str], Logger], module: str,
                 extra: str) -> None:
        self.factory, self.module, self.extra = factory, module, extra


TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec(TensorBoardLogger, "tensorboard", "tensorboard"),
    "wandb": TrackerSpec(WandbLogger, "wandb", "wandb"),
    "mlflow": TrackerSpec(MlflowLogger, "mlflow", "mlflow"),
    "trackio": TrackerSpec(TrackioLogger, "trackio", "trackio"),
}


def build_loggers(names: list[str], run_dir: Path, run_name: str, project: str) -> list[Logger]:
    """One logger per name in ``report_to`` (``none`` is no logger); a missing library is a
    one-line ConfigError naming its extra."""
    out = []
    for name in names:
        if name == "none":
            continue
        spec = TRACKERS[name]  # names are checked with the config
        try:
            importlib.import_module(spec.module)
        except ImportError as e:
            raise ConfigError(
                f"report_to={name}: the {spec.module} package is not installed ({e}); "
                f"pip install 'tether[{spec.extra}]' or remove {name} from report_to"
            ) from None
        out.append(spec.factory(run_dir, run_name, project))
    return out
