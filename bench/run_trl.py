"""Child process: train with TRL's DPOTrainer on the benchmark workload and report timings.

Runs in the TRL virtualenv (it imports nothing from tether). Usage:
``python bench/run_trl.py SPEC.json OUT.json``. SPEC names the model directory, the pairs (in
the order tether visits them) and the token ids tether trains on; the run stops if TRL's own
tokenization of the same text gives any other ids.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    step_ends: list[float] = []
    step_cpu: list[float] = []  # CPU seconds of this process (all threads): robust to load
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(
        lambda *_: (step_ends.append(time.perf_counter()), step_cpu.append(time.process_time()))
    )
    ref_seconds = [0.0, 0.0]  # wall, CPU

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                ref_seconds[0] += time.perf_counter() - t
                ref_seconds[1] += time.process_time() - c

        return wrapper

    # time the reference pass (precompute) or every reference forward (default)
    DPOTrainer._precompute_ref_logps = timed(DPOTrainer._precompute_ref_logps)
    rows = [json.loads(x) for x in Path(spec["pairs"]).read_text().splitlines() if x.strip()]
    model_dir = spec["model_dir"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            # adjusted for comparability with tether (everything else is TRL's default):
            per_device_train_batch_size=spec["batch_size"],
            learning_rate=spec["lr"],
            beta=spec["beta"],
            max_steps=spec["steps"],
            bf16=spec["bf16"],
            precompute_ref_log_probs=spec["precompute"],
            train_sampling_strategy="sequential",
            max_length=None,  # no truncation: both tools see every token
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=spec.get("device", "cpu") == "cpu",
            seed=spec["seed"],
            **spec.get("trl_overrides", {}),
        )
        trainer = DPOTrainer(
            model=model, args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
        )
        _check_ids(trainer.train_dataset, spec["expected_ids"])
        if trainer.ref_model is not None:
            trainer.ref_model.forward = timed(trainer.ref_model.forward)
        losses: list[float] = []
        logps: dict[str, list[float]] = {"logps/chosen": [], "logps/rejected": []}
        compute_loss = trainer.compute_loss

        def recording(*a: Any, **k: Any) -> Any:
            loss = compute_loss(*a, **k)
            losses.append(float(loss.detach()))
            for key, values in logps.items():  # TRL clears its metrics when it logs
                values.append(trainer._metrics["train"][key][-1])
            return loss

        trainer.compute_loss = recording  # type: ignore[method-assign]
        t_train = time.perf_counter()
        trainer.train()
    result = {
        "tool": "trl",
        "step_ends": step_ends,
        "step_cpu": step_cpu,
        "train_start": t_train,
        "setup_seconds": t_train - t0,
        "ref_seconds": ref_seconds[0],
        "ref_cpu_seconds": ref_seconds[1],
        "losses": losses,
        "logps_chosen": logps["logps/chosen"],
        "logps_rejected": logps["logps/rejected"],
        "torch": torch.__version__,
        "versions": _versions(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch: rank 0 reports
        Path(out_path).write_text(json.dumps(result, indent=2))


def _check_ids(dataset: Any, expected: dict[str, list[list[int]]]) -> None:
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        got = [list(x) for x in dataset[key]]
        if got != expected[key]:
            bad = next(i for i, (g, e) in enumerate(zip(got, expected[key], strict=True)) if g != e)
            raise SystemExit(f"TRL tokenized row {bad} {key} unlike tether: not comparable")


def _versions() -> dict[str, str]:
    import datasets
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
