"""After the loop: the best checkpoint's weights (keep_best), run.json's end-of-run summary,
the model card in ``model/README.md`` and ``push_to_hub``; and, on resume, the metrics of a
checkpoint taken from another run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_model as load_weights

from tether.errors import CheckpointError
from tether.io import write_text
from tether.model.card import model_card
from tether.training.best import BestCheckpoint
from tether.training.provenance import summary_line
from tether.training.run_dir import RunDir

if TYPE_CHECKING:
    from tether.training.loop import Setup

__all__ = ["adopt_metrics", "finish_run", "restore_best"]

log = logging.getLogger("tether")


def restore_best(policy: torch.nn.Module, best: BestCheckpoint) -> None:
    """Load the best checkpoint's weights into ``policy`` (TRL's load_best_model_at_end)."""
    path = best.path
    if path is None:
        log.warning("keep_best: no checkpoint had a value of %s; model/ is the last step",
                    best.metric)
        return
    missing, unexpected = load_weights(policy, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}/model.safetensors: weights do not match the model")
    log.info("keep_best: model/ is %s (%s = %.4f)", path.name, best.metric, best.value)


def adopt_metrics(run: RunDir, checkpoint: Path) -> None:
    """Resuming from another run's checkpoint: start from that run's metrics.jsonl, which
    the checkpoint's ``metrics_lines`` counts."""
    source = checkpoint.parent.parent / "metrics.jsonl"
    if checkpoint.parent.parent.resolve() == run.path.resolve() or not source.is_file():
        return
    write_text(run.metrics_path, source.read_text(encoding="utf-8"))


def finish_run(s: Setup, finished: bool, start: tuple[int, int]) -> None:
    """run.json's summary (printed too), then, for a finished run, the card and the push."""
    cfg = s.cfg
    steps_here = s.state.step - start[0]
    samples = steps_here * cfg.batch_size * cfg.grad_accum * s.dist.world_size
    tokens = s.dist.total(s.state.tokens - start[1])  # every rank's tokens
    if not s.dist.main:
        return
    summary = s.record.finish(steps=s.state.step, samples=samples, tokens=int(tokens),
                              device=s.device, model_dir=s.run.model_dir if finished else None,
                              completed=finished)
    print(summary_line(summary))
    if not finished:
        return
    name = cfg.push_to_hub or s.run.path.name
    card = model_card(cfg, s.record.record, s.run.read_metrics(), name)
    write_text(s.run.model_dir / "README.md", card)
    if cfg.push_to_hub:
        from tether.model.push import push_model

        url = push_model(s.run.model_dir, cfg.push_to_hub)
        print(f"pushed: {url}")
