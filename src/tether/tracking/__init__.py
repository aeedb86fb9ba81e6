"""What a run reports: ``metrics.jsonl``, the experiment trackers, health warnings, report.md.

The loop holds one ``Tracking`` object, decided in set-up, and calls it at three places: each
logged row (``log``), each checkpoint (``checkpoint``) and the end (``finish``). Under torchrun
only rank 0 writes or sends anything; the other ranks get a ``Tracking`` that does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.tracking.health import HealthWarning, detect, length_bias
from tether.tracking.report import read_history, write_report
from tether.tracking.trackers import TRACKERS, Logger, build_loggers

if TYPE_CHECKING:
    from tether.config import TrainConfig
    from tether.data.tokenization import TokenizedPair
    from tether.training.distributed import Dist
    from tether.training.run_dir import RunDir

__all__ = ["TRACKERS", "Logger", "Tracking", "open_tracking", "report_eval"]

log = logging.getLogger("tether")


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in ("step", "event")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracking:
    """The loop's one handle on everything it reports."""

    def __init__(self, run: RunDir, loggers: list[Logger], history: list[dict[str, Any]],
                 main: bool, report: bool = True) -> None:
        self.run, self.loggers, self.history, self.main = run, loggers, history, main
        self.report = main and report  # drawn by rank 0 only
        self.fired = {r["name"] for r in history if r.get("event") == "health"}
        self.pending: list[HealthWarning] = []  # found at set-up, written with the first row

    def log(self, row: dict[str, Any]) -> int:
        """Write one row to metrics.jsonl and every tracker, then any health warning that now
        holds for the first time; returns the lines written (the loop counts them for resume)."""
        self.run.log_metrics(row)
        self.history.append(row)
        for logger in self.loggers:
            logger.log(_numbers(row), int(row["step"]))
        found, self.pending = [*self.pending, *detect(self.history, self.fired)], []
        return 1 + sum(self.warn(w) for w in found)

    def warn(self, w: HealthWarning) -> int:
        self.fired.add(w.name)
        if not self.main:
            return 1  # rank 0 writes the line; every rank counts it
        log.warning("health: %s", w.line())
        self.run.log_metrics(w.event())
        self.history.append(w.event())
        return 1

    def checkpoint(self) -> None:
        if self.report:
            write_report(self.run.path)

    def finish(self) -> None:
        """The final numbers to every tracker, then report.md."""
        summary: dict[str, float] = {}
        for row in self.history:
            if "event" not in row:
                summary.update(_numbers(row))  # the last value of each metric
        summary["health_warnings"] = float(len(self.fired))
        for logger in self.loggers:
            logger.finish(summary)
        if self.report:
            log.info("report: %s", write_report(self.run.path))


def open_tracking(cfg: TrainConfig, run: RunDir, dist: Dist,
                  train_rows: Sequence[TokenizedPair]) -> Tracking:
    """Rank 0: the trackers ``report_to`` names (config sent once), the data's token-length
    histogram and its length check; other ranks: a Tracking that only counts lines."""
    loggers: list[Logger] = []
    if dist.main:
        run_name = cfg.run_name or Path(cfg.output_dir).name
        loggers = build_loggers(list(cfg.report_to), run.path, run_name, cfg.project)
        config = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
        for logger in loggers:
            logger.log_config(config)
    stats = data_lengths(train_rows, cfg.max_length)
    run.write_json("data_lengths.json", stats)  # rank 0 only (QuietRunDir)
    # a resumed run continues its history (rank 0's file; every rank reads it to count alike)
    history = read_history(run.path)
    track = Tracking(run, loggers, history, main=dist.main, report=cfg.report)
    w = length_bias({**stats["pairs"], "what": "chosen (training data)"})
    if w is not None and w.name not in track.fired:
        track.pending.append(w)  # every rank counts its line with the first row
    return track


def _histogram(values: list[int], top: int, bins: int = 40) -> dict[str, Any]:
    width = max(1, math.ceil(top / bins))
    counts = [0] * math.ceil((top + 1) / width)
    for v in values:
        counts[min(v // width, len(counts) - 1)] += 1
    return {"edges": [i * width for i in range(len(counts) + 1)], "counts": counts,
            "mean": sum(values) / max(1, len(values)), "max": max(values, default=0)}


def data_lengths(rows: Sequence[TokenizedPair], max_length: int) -> dict[str, Any]:
    """Histograms of prompt+completion tokens per row, and how chosen and rejected compare."""
    parts = {"prompt + chosen": [len(r.prompt) + len(r.chosen) for r in rows]}
    paired = [r for r in rows if r.rejected]
    if paired:
        parts["prompt + rejected"] = [len(r.prompt) + len(r.rejected) for r in paired]
    top = max(max_length, *(max(v, default=0) for v in parts.values()))
    pairs: dict[str, Any] = {}
    if paired:
        chosen = sum(len(r.chosen) for r in paired)
        pairs = {"chosen_longer_fraction": sum(len(r.chosen) > len(r.rejected)
                                               for r in paired) / len(paired),
                 "length_ratio": chosen / max(1, sum(len(r.rejected) for r in paired))}
    return {"max_length": max_length, "pairs": pairs,
            "train": {k: _histogram(v, top) for k, v in parts.items()}}


def report_eval(run_dir: Path, results: dict[str, Any], run_config: dict[str, Any]) -> None:
    """``tether eval`` on a run directory: its win-rate to the trackers the run reported to
    (as a run named ``<run_name>-eval``, at the run's last step) and into its report.md."""
    history = read_history(run_dir)
    step = max((int(r.get("step", 0)) for r in history), default=0)
    names = [str(t) for t in run_config.get("report_to") or [] if t in TRACKERS]
    numbers = {k: float(v) for k, v in {
        "eval/win_rate": results.get("win_rate"),
        "eval/win_rate_ci95_low": (results.get("ci95") or [None])[0],
        "eval/win_rate_ci95_high": (results.get("ci95") or [None, None])[1],
        "eval/lc_win_rate": results.get("lc_win_rate"),
        "eval/n": results.get("n"),
    }.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    name = f"{run_config.get('run_name') or run_dir.name}-eval"
    for logger in build_loggers(names, run_dir, name, str(run_config.get("project") or "tether")):
        logger.log_config({"judge": results.get("judge"), "models": results.get("models"),
                           "data": results.get("data")})
        logger.log(numbers, step)
        logger.finish(numbers)
    if history:
        write_report(run_dir)
