"""Child process: ``tether.training.loop`` on the benchmark workload, reporting timings.

Usage: ``python bench/run_tether.py SPEC.json OUT.json`` (with tether importable). The step
boundaries come from a global optimizer-step hook, the same one the TRL child uses, so both
tools' step times are measured between the same events.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    import torch

    from tether.config import TrainConfig, build_config
    from tether.training import reference
    from tether.training.loop import train

    torch.set_num_threads(spec["threads"])
    step_ends: list[float] = []
    step_cpu: list[float] = []  # CPU seconds of this process (all threads): robust to load
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(
        lambda *_: (step_ends.append(time.perf_counter()), step_cpu.append(time.process_time()))
    )
    ref_seconds = [0.0, 0.0]  # wall, CPU
    build = reference.Precomputed.build.__func__  # type: ignore[attr-defined]

    def timed_build(cls: Any, *args: Any, **kwargs: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        try:
            return build(cls, *args, **kwargs)
        finally:
            ref_seconds[0] += time.perf_counter() - t
            ref_seconds[1] += time.process_time() - c

    reference.Precomputed.build = classmethod(timed_build)  # type: ignore[method-assign,assignment]
    frozen_call = reference.FrozenCopy.__call__

    def timed_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        try:
            return frozen_call(self, *args, **kwargs)
        finally:
            ref_seconds[0] += time.perf_counter() - t
            ref_seconds[1] += time.process_time() - c

    reference.FrozenCopy.__call__ = timed_call  # type: ignore[method-assign]
    if spec.get("full_logits"):  # lever (a) switched off: the whole (B, T, V) logits
        import tether.training.loop

        tether.training.loop.batch_logps = _full_logits  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(TrainConfig, {
            "model": spec["model_dir"],
            "data": spec["pairs"],
            "output_dir": f"{tmp}/run",
            "cache_dir": f"{tmp}/cache",  # empty: the reference pass is timed, not read back
            "loss": "dpo",
            "beta": spec["beta"],
            "lr": spec["lr"],
            "batch_size": spec["batch_size"],
            "max_steps": spec["steps"],
            "max_length": 1 << 20,  # no truncation: both tools see every token
            "dtype": "float32",
            "autocast": "on" if spec["bf16"] else "off",
            "seed": spec["seed"],
            "device": spec.get("device", "auto"),
            "progress": False,
            "log_every": 1,
            **spec.get("tether_overrides", {}),
        })
        t_train = time.perf_counter()
        run = train(cfg)
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    result = {
        "tool": "tether",
        "step_ends": step_ends,
        "step_cpu": step_cpu,
        "train_start": t_train,
        "setup_seconds": t_train - t0,
        "ref_seconds": ref_seconds[0],
        "ref_cpu_seconds": ref_seconds[1],
        "losses": [m["loss"] for m in metrics],
        "logps_chosen": [m["logps/chosen"] for m in metrics],
        "logps_rejected": [m["logps/rejected"] for m in metrics],
        "torch": torch.__version__,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: rank 0 reports
        Path(out_path).write_text(json.dumps(result, indent=2))


def _full_logits(model: Any, batch: Any, chunk: int) -> Any:
    """Per-sequence log-prob sums from the model's full logits, the way most trainers do."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).logits[:, :-1]  # (B, T-1, V)
    token = logits.float().log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.completion_mask[:, 1:]
    return (token * mask).sum(1), mask.sum(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
