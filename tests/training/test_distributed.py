"""torchrun data parallelism on CPU (gloo): 2 processes give the numbers 1 process gives.

Every run here is a real ``python -m torch.distributed.run`` launch of ``tether train``. The
one-process runs use the same global batch (batch_size × grad_accum × world_size rows per
step), so losses, metrics and final weights must agree to float tolerance; the reference
log-probs that 2 ranks precompute (each half the rows, all-gathered) must equal the
one-process cache; a sharded checkpoint must resume at 2 ranks and at 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs, write_jsonl
from tether.config import TrainConfig, load_config
from tether.training.loop import train

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[2] / "src")
COMPARED = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
            "grad_norm", "lr")


def _args(root: Path, model: Path, out: str, *extra: str) -> list[str]:
    return [f"model={model}", f"data={root / 'pairs.jsonl'}", f"output_dir={root / out}",
            "lr=1e-3", "max_steps=4", "scheduler=constant", f"cache_dir={root / 'cache' / out}",
            "progress=false", *extra]


def _torchrun(nproc: int, args: list[str], timeout: float = 240,
              script: Path | None = None) -> subprocess.CompletedProcess:
    """Launch ``tether train`` (or ``script``); on a hang, make the workers print their stacks
    (faulthandler) and fail."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    target = [str(script)] if script else ["-m", "tether", "--quiet", "train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *target, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                 text=True).stdout.split()
        for pid in workers:
            os.kill(int(pid), signal.SIGABRT)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout} s; worker stacks:\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun_ok(nproc: int, args: list[str], script: Path | None = None) -> None:
    proc = _torchrun(nproc, args, script=script)
    assert proc.returncode == 0, proc.stderr[-3000:]


# A torchrun worker: ``tether train`` with spies on what each rank communicates and loads.
# DDP: a communication hook counts all-reduce rounds (one call per bucket per synchronising
# backward; a round = bucket 0). FSDP2: reduce-scatters go through
# dist.reduce_scatter_single, one call per FSDP unit per synchronising backward.
# from_pretrained: which ranks read the checkpoint's weights; meta: whether the policy handed
# to wrap_policy had no parameter data at all (built on the meta device).
SPY = """
import json, os, sys
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM
import tether.training.distributed as td

seen = {"allreduce_rounds": 0, "reduce_scatters": 0, "from_pretrained": 0, "meta": None}

def count_rounds(state, bucket):
    seen["allreduce_rounds"] += bucket.index() == 0
    return allreduce_hook(state, bucket)

def wrap_policy(policy, *args, **kwargs):
    seen["meta"] = all(p.is_meta for p in policy.parameters())
    scorer = wrap(policy, *args, **kwargs)
    if isinstance(scorer, DistributedDataParallel):
        scorer.register_comm_hook(None, count_rounds)
    return scorer

def reduce_scatter_single(*args, **kwargs):
    seen["reduce_scatters"] += 1
    return reduce_scatter(*args, **kwargs)

def from_pretrained(*args, **kwargs):
    seen["from_pretrained"] += 1
    return load(*args, **kwargs)

wrap, td.wrap_policy = td.wrap_policy, wrap_policy
reduce_scatter, dist.reduce_scatter_single = dist.reduce_scatter_single, reduce_scatter_single
load = AutoModelForCausalLM.from_pretrained
AutoModelForCausalLM.from_pretrained = from_pretrained

from tether.config import TrainConfig, load_config
from tether.training.loop import train

out = train(load_config(TrainConfig, None, sys.argv[1:]))
(out / f"spy-{os.environ['RANK']}.json").write_text(json.dumps(seen))
"""


def _spied(root: Path, run: str, args: list[str]) -> list[dict]:
    """Run the SPY worker on 2 ranks; what each rank saw."""
    (root / "spy.py").write_text(SPY)
    _torchrun_ok(2, args, script=root / "spy.py")
    return [json.loads((root / run / f"spy-{r}.json").read_text()) for r in (0, 1)]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r]  # health events (tether.tracking) left out


def _assert_same_run(a: Path, b: Path, weights: str = "model/model.safetensors",
                     atol: float = 2e-5, mean_atol: float | None = None) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] and len(ma) >= 4
    for x, y in zip(ma, mb, strict=True):
        for k in COMPARED:
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (x["step"], k)
    wa, wb = load_file(a / weights), load_file(b / weights)
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=atol, rtol=0, msg=k)
        if mean_atol is not None:
            assert (wb[k] - wa[k]).abs().mean() <= mean_atol, k


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    write_jsonl(root / "pairs.jsonl", make_pairs(32))
    write_jsonl(root / "eval.jsonl", make_pairs(6, seed=3))
    return root


@pytest.fixture(scope="module")
def single(root: Path, llama_dir: Path) -> Path:
    """The one-process run: batch 4 × accumulation 1 = the global batch of every 2-rank run."""
    train(load_config(TrainConfig, None, _args(root, llama_dir, "single", "batch_size=4",
                                               f"eval_data={root / 'eval.jsonl'}")))
    return root / "single"


def test_ddp_two_ranks_equal_one_process(root, llama_dir, single):
    _torchrun_ok(2, _args(root, llama_dir, "ddp", "batch_size=2", "distributed=ddp",
                       f"eval_data={root / 'eval.jsonl'}"))
    _assert_same_run(single, root / "ddp")
    # the precompute, split over 2 ranks and all-gathered, is the one-process cache
    ones = sorted((root / "cache" / "single" / "reference").glob("ref-*.safetensors"))
    assert len(ones) == 2  # train and eval
    for one in ones:
        two = root / "cache" / "ddp" / "reference" / one.name  # same weights, rows, settings
        for k, v in load_file(one).items():
            torch.testing.assert_close(load_file(two)[k], v)
    assert _metrics(root / "ddp")[-1]["eval/loss"] == pytest.approx(
        _metrics(single)[-1]["eval/loss"], rel=1e-5)


def test_ddp_accumulation_all_reduces_once_per_step_and_equals_one_process(root, llama_dir,
                                                                          single):
    # 2 ranks × batch 1 × accumulation 2 = the single run's 4 rows per step. Only each step's
    # last micro-batch all-reduces (no_sync before it): 4 rounds in 4 steps, not 8.
    seen = _spied(root, "ddp-accum", _args(root, llama_dir, "ddp-accum", "batch_size=1",
                                          "grad_accum=2", "distributed=ddp",
                                          f"eval_data={root / 'eval.jsonl'}"))
    assert [s["allreduce_rounds"] for s in seen] == [4, 4]
    assert [(s["from_pretrained"], s["meta"]) for s in seen] == [(1, False), (1, False)]
    _assert_same_run(single, root / "ddp-accum")


def test_fsdp_two_ranks_with_accumulation_equal_one_process(root, llama_dir, single):
    # 2 ranks × batch 1 × accumulation 2 = 4 rows per step; the reference a sharded copy
    seen = _spied(root, "fsdp", _args(root, llama_dir, "fsdp", "batch_size=1", "grad_accum=2",
                                      "distributed=fsdp", "reference=copy",
                                      f"eval_data={root / 'eval.jsonl'}"))
    _assert_same_run(single, root / "fsdp")
    # rank 1 never read the weights nor held the whole model: meta, then shards from rank 0
    assert [(s["from_pretrained"], s["meta"]) for s in seen] == [(1, False), (0, True)]
    # a full fine-tune keeps its gradients sharded: a reduce-scatter per unit per micro-batch
    # (2 decoder layers + the root), 3 × 2 × 4 steps
    assert [s["reduce_scatters"] for s in seen] == [24, 24]
    assert not (root / "cache" / "fsdp").exists()  # reference=copy: nothing precomputed


def test_fsdp_tied_embeddings_and_a_reference_model_equal_one_process(root, gpt2_dir):
    # GPT-2 ties the LM head to the embeddings (one parameter, two names in the state dict);
    # the reference_model is loaded (on meta on rank 1) and sharded on its own
    ref = ("reference=copy", f"reference_model={gpt2_dir}")
    train(load_config(TrainConfig, None, _args(root, gpt2_dir, "gpt2-1", "batch_size=4", *ref)))
    seen = _spied(root, "gpt2-fsdp", _args(root, gpt2_dir, "gpt2-fsdp", "batch_size=2",
                                           "distributed=fsdp", *ref))
    _assert_same_run(root / "gpt2-1", root / "gpt2-fsdp")
    assert [(s["from_pretrained"], s["meta"]) for s in seen] == [(2, False), (0, True)]


def test_fsdp_resumes_from_a_sharded_checkpoint_at_two_ranks_and_at_one(root, llama_dir):
    _torchrun_ok(2, _args(root, llama_dir, "whole", "batch_size=2", "distributed=fsdp"))
    _torchrun_ok(2, _args(root, llama_dir, "part", "batch_size=2", "distributed=fsdp",
                       "max_steps=2", "save_every=2"))
    ckpt = root / "part" / "checkpoints" / "step-2"
    assert {p.name for p in ckpt.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp",
                                                  "state.json", "rng.safetensors"}
    shutil.copytree(root / "part", root / "part1")
    _torchrun_ok(2, _args(root, llama_dir, "part", "batch_size=2", "distributed=fsdp",
                       "resume=true"))
    _assert_same_run(root / "whole", root / "part", atol=0)  # same ranks: bit for bit
    # the same checkpoint resumed by one plain process with the same global batch
    train(load_config(TrainConfig, None, _args(root, llama_dir, "part1", "batch_size=4",
                                               "resume=true")))
    _assert_same_run(root / "whole", root / "part1")


LORA = ("lora=true", "lora_r=4", "merge=true")  # reference=auto is then the adapters-off base


@pytest.fixture(scope="module")
def lora_single(root: Path, llama_dir: Path) -> Path:
    train(load_config(TrainConfig, None, _args(root, llama_dir, "lora1", "batch_size=4", *LORA)))
    return root / "lora1"


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_lora_two_ranks_equal_one_process(root, llama_dir, lora_single, mode):
    _torchrun_ok(2, _args(root, llama_dir, f"lora-{mode}", "batch_size=2",
                          f"distributed={mode}", *LORA))
    # Adam divides by sqrt(v): on the few adapter entries whose gradient is ~0 (A, while B is
    # still ~0), float-order noise becomes a step of up to lr. So: a loose bound on the worst
    # entry (5% of what 4 steps of lr=1e-3 can move a weight) and a tight one on the mean.
    for weights in ("model/adapter_model.safetensors", "model/merged/model.safetensors"):
        _assert_same_run(lora_single, root / f"lora-{mode}", weights, atol=2e-4, mean_atol=1e-6)


def test_fsdp_lora_accumulation_reduce_scatters_once_per_step(root, llama_dir, lora_single):
    # 2 ranks × batch 1 × accumulation 2. Under LoRA FSDP holds the small adapter gradients
    # unsharded until each step's last micro-batch: one reduce-scatter per decoder layer (the
    # units with adapters; the root's embeddings and head are frozen) per step, 2 × 4, not 16.
    seen = _spied(root, "lora-fsdp-accum", _args(root, llama_dir, "lora-fsdp-accum",
                                                "batch_size=1", "grad_accum=2",
                                                "distributed=fsdp", *LORA))
    assert [s["reduce_scatters"] for s in seen] == [8, 8]
    assert (seen[1]["from_pretrained"], seen[1]["meta"]) == (0, True)  # rank 0 also merges
    for weights in ("model/adapter_model.safetensors", "model/merged/model.safetensors"):
        _assert_same_run(lora_single, root / "lora-fsdp-accum", weights, atol=2e-4,
                         mean_atol=1e-6)


def test_too_few_rows_for_the_global_batch_is_refused(root, llama_dir, tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(3))
    proc = _torchrun(2, _args(tmp_path, llama_dir, "few", "batch_size=2"))
    assert proc.returncode != 0
    assert "batch_size: 3 training rows are fewer than one global step" in proc.stderr


def test_sigterm_to_every_process_stops_the_ranks_at_one_step_and_resumes(root, llama_dir):
    """A scheduler's SIGTERM (SLURM signals every process of the job; torchrun forwards it to
    its workers too): the ranks agree on one step, checkpoint it, and the resumed run ends
    with the weights of the run that was never stopped."""
    common = ("batch_size=2", "distributed=ddp", "max_steps=24", "log_every=1")
    _torchrun_ok(2, _args(root, llama_dir, "term-whole", *common))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tether", "train", *_args(root, llama_dir, "term", *common)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    metrics = root / "term" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().strip()):  # training has started
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the ranks did not stop within 120 s of SIGTERM")
    ckpts = sorted((root / "term" / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1, err[-3000:]
    step = int(ckpts[0].name.split("-")[1])
    assert 1 <= step < 24 and not (root / "term" / "model").exists()  # stopped mid-run
    assert [m["step"] for m in _metrics(root / "term")] == list(range(1, step + 1))
    assert "resume=true" in err
    _torchrun_ok(2, _args(root, llama_dir, "term", *common, "resume=true"))
    _assert_same_run(root / "term-whole", root / "term", atol=0)  # same ranks: bit for bit


@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_resumes_a_single_process_checkpoint(root, llama_dir, single, lora_single, lora):
    """Started in one plain process (safetensors checkpoint at step 2), continued on 2 FSDP
    ranks with the same global batch: the run equals the uninterrupted one-process run."""
    extra = LORA if lora else (f"eval_data={root / 'eval.jsonl'}",)
    run = root / f"one-then-fsdp-{'lora' if lora else 'full'}"
    train(load_config(TrainConfig, None, _args(root, llama_dir, run.name, "batch_size=4",
                                               "max_steps=2", "save_every=2", *extra)))
    ckpt = run / "checkpoints" / "step-2"
    assert (ckpt / "optimizer.safetensors").is_file() and not (ckpt / ".metadata").exists()
    _torchrun_ok(2, _args(root, llama_dir, run.name, "batch_size=2", "distributed=fsdp",
                       "resume=true", *extra))
    if not lora:
        _assert_same_run(single, run)
        return
    for weights in ("model/adapter_model.safetensors", "model/merged/model.safetensors"):
        # the bounds of test_lora_two_ranks_equal_one_process, for the reason given there
        _assert_same_run(lora_single, run, weights, atol=2e-4, mean_atol=1e-6)


def test_accelerate_launch_runs_ddp_like_torchrun(root, llama_dir, single):
    """``accelerate launch --multi_gpu`` (which starts its workers through torch.distributed.run,
    setting
    the same RANK/WORLD_SIZE environment; on CPUs too) gives the one-process run."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
           "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "tether", "--quiet", "train",
           *_args(root, llama_dir, "accelerate", "batch_size=2", "distributed=ddp",
                  f"eval_data={root / 'eval.jsonl'}")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(single, root / "accelerate")
