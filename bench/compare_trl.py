"""tether vs TRL's DPOTrainer: same model, same token ids, same pairs, same settings.

    python bench/compare_trl.py                 # the default CPU comparison (about an hour here)
    python bench/compare_trl.py --scaling       # the sequence-length × vocabulary table
    python bench/compare_trl.py --quick         # a tiny smoke run of the whole pipeline

Run it with tether's virtualenv (``.venv/bin/python``). TRL lives in its own virtualenv,
``bench/.venv-trl``, made on first use: torch 2.13.0 CPU first (pip must never pull a CUDA
build), then ``trl==1.16.0`` with the transformers/datasets/accelerate versions of
requirements.lock. Each tool runs in its own subprocess, alternating tools round by round;
the report gives medians over rounds and tether/TRL ratios, written to
``bench/results/<name>.json`` and ``.md`` and printed.

Measured for each run: training tokens/s (non-padding tokens of the chosen and rejected
sequences, prompt included, counted identically for both, over the steps after warm-up, timed
between optimizer steps by the same global hook in both), peak resident memory of the child
(``ru_maxrss``, set-up included), seconds spent on the reference (the precompute pass, or every
reference forward), and the losses and mean log-probs of the first steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from workload import Workload, materialise  # noqa: E402

TRL_VERSION = "1.16.0"
TORCH_VERSION = "2.13.0"
VENV = HERE / ".venv-trl"
SHARED_PINS = ("transformers", "datasets", "accelerate", "tokenizers", "safetensors",
               "huggingface_hub", "numpy", "pyarrow", "pandas")

# name -> (child, spec changes). TRL runs with its documented defaults except what makes the
# runs comparable (dtype, lr, beta, batch, sequential order, no truncation, no logging).
TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "tether": ("tether", {}),
    "trl": ("trl", {}),
    "trl-precompute": ("trl", {"precompute": True}),
    "tether-bf16": ("tether", {"bf16": True}),
    "trl-bf16": ("trl", {"bf16": True}),
    "trl-bf16-precompute": ("trl", {"bf16": True, "precompute": True}),
    "trl-no-ckpt-precompute": ("trl", {"precompute": True,
                                       "trl_overrides": {"gradient_checkpointing": False}}),
}
# tether with one lever changed from its defaults (bench/README.md, "Levers")
LEVERS: dict[str, dict[str, Any]] = {
    "no-prefix-sharing": {"prefix_sharing": False},
    "full-logits": {"prefix_sharing": False, "full_logits": True},
    "copy-reference": {"reference": "copy"},
    "no-length-grouping": {"group_by_length": False},
    "bf16-autocast": {"autocast": "on"},
    "gradient-checkpointing": {"gradient_checkpointing": True},
    "compile": {"compile": True},
    "unfused-adamw": {"fused_adamw": False},
    "packing": {"prefix_sharing": False, "packing": True},  # plain rows, padding-free
    "shared-packing": {"packing": True},  # every pair of a micro-batch in one row
}
for _name, _changes in LEVERS.items():
    _spec: dict[str, Any] = {"tether_overrides": {k: v for k, v in _changes.items()
                                                  if k != "full_logits"}}
    if "full_logits" in _changes:
        _spec["full_logits"] = True
    TOOLS[f"tether-{_name}"] = ("tether", _spec)


# --------------------------------------------------------------------------- TRL virtualenv


def ensure_trl_venv(cuda: bool = False) -> Path:
    """TRL's virtualenv: torch 2.13 CPU (``bench/.venv-trl``), or with ``cuda`` PyPI's default
    Linux torch 2.13 wheel, which is the CUDA build (``bench/.venv-trl-cuda``)."""
    venv = VENV.with_name(VENV.name + "-cuda") if cuda else VENV
    python = venv / "bin" / "python"
    probe = "import trl, torch; print(trl.__version__, torch.__version__)"
    ok = python.exists() and subprocess.run(
        [python, "-c", probe], capture_output=True, text=True
    ).stdout.startswith(TRL_VERSION)
    if ok:
        return python
    build = "CUDA" if cuda else "CPU"
    print(f"making {venv} (torch {TORCH_VERSION} {build}, then trl {TRL_VERSION}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    if cuda:
        subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    # torch first, CPU build: the local wheel (+cpu) when pip's find-links has one, else
    # PyTorch's CPU index. Installing trl first would let pip pull a CUDA torch.
    elif subprocess.run([*pip, f"torch=={TORCH_VERSION}+cpu"]).returncode != 0:
        subprocess.run([*pip, f"torch=={TORCH_VERSION}", "--index-url",
                        "https://download.pytorch.org/whl/cpu"], check=True)
    subprocess.run([*pip, f"trl=={TRL_VERSION}", *_pins()], check=True)
    return python


def _pins() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in SHARED_PINS:
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{name}=={version(name)}")
    return pins


# --------------------------------------------------------------------------- workload


def prepare(w: Workload, root: Path, batch: int, seed: int) -> dict[str, Any]:
    """Materialise the workload; tokenize it the way tether will; order the pairs for TRL."""
    from tether.data.batching import step_batches
    from tether.data.records import load_preferences
    from tether.data.tokenization import tokenize_records
    from tether.model.loading import load_tokenizer

    d = materialise(w, root)
    tok = load_tokenizer(str(d / "model"))
    records, _ = load_preferences(str(d / "pairs.jsonl"))
    rows, _ = tokenize_records(tok, records, chat=False, max_length=1 << 20)
    lengths = [r.length for r in rows]
    steps = step_batches(lengths, batch, 0, seed, True)
    order = [i for s in steps for i in s]
    lines = (d / "pairs.jsonl").read_text().splitlines()
    (d / "pairs.trl-order.jsonl").write_text("".join(lines[i] + "\n" for i in order))
    tokens = [2 * len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows]
    return {
        "dir": d,
        # tokens per step, with tether's length grouping on (TRL gets that order) and off
        "step_tokens": {group: [sum(tokens[i] for i in s)
                                for s in step_batches(lengths, batch, 0, seed, group)]
                        for group in (True, False)},
        "expected_ids": {
            "prompt_ids": [rows[i].prompt for i in order],
            "chosen_ids": [rows[i].chosen for i in order],
            "rejected_ids": [rows[i].rejected for i in order],
        },
    }


# --------------------------------------------------------------------------- one run


def run_child(tool: str, data: dict[str, Any], common: dict[str, Any], trl_python: Path,
              timeout: float) -> dict[str, Any]:
    child, changes = TOOLS[tool]
    spec = {**common, **changes, "model_dir": str(data["dir"] / "model")}
    overrides = spec.get("tether_overrides", {})
    step_tokens = data["step_tokens"][overrides.get("group_by_length", True)]
    if child == "tether":
        spec["pairs"] = str(data["dir"] / "pairs.jsonl")
        if common.get("reference_cache"):  # lever runs: read the reference pass once made
            spec["tether_overrides"] = {"cache_dir": common["reference_cache"], **overrides}
        cmd = [*common.get("launch", {}).get("tether", [sys.executable]),
               str(HERE / "run_tether.py")]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    else:
        spec["pairs"] = str(data["dir"] / "pairs.trl-order.jsonl")
        spec["expected_ids"] = data["expected_ids"]
        cmd = [*common.get("launch", {}).get("trl", [str(trl_python)]), str(HERE / "run_trl.py")]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(common["threads"])
        log_path = Path(tmp) / "log.txt"
        t = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.Popen([*cmd, str(spec_path), str(out_path)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            rusage = _wait(proc, timeout)
        wall = time.perf_counter() - t
        out = log_path.read_text(errors="replace")
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"{tool} failed (exit {proc.returncode}):\n{out[-3000:]}")
        result = json.loads(out_path.read_text())
    result.update(tool=tool, wall_seconds=wall, peak_rss_mb=rusage.ru_maxrss / 1024)
    return _summarise(result, step_tokens, common["warmup"])


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> Any:
    """Wait for the child; return its own rusage (``ru_maxrss`` is the child's peak)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return rusage
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.2)


def _summarise(r: dict[str, Any], step_tokens: list[int], warmup: int) -> dict[str, Any]:
    ends = r["step_ends"]
    measured = step_tokens[warmup : len(ends)]
    r["tokens_per_s"] = sum(measured) / (ends[-1] - ends[warmup - 1])
    cpu = r.get("step_cpu")
    r["tokens_per_cpu_s"] = sum(measured) / (cpu[-1] - cpu[warmup - 1]) if cpu else None
    r["step_seconds"] = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:], strict=False)]
    return r


# --------------------------------------------------------------------------- the comparison


def compare(w: Workload, tools: list[str], rounds: int, common: dict[str, Any], root: Path,
            trl_python: Path, timeout: float) -> dict[str, Any]:
    data = prepare(w, root, common["batch_size"], common["seed"])
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for r in range(rounds):
        order = tools[r % len(tools):] + tools[: r % len(tools)]  # alternate who goes first
        for tool in order:
            res = run_child(tool, data, common, trl_python, timeout)
            runs[tool].append(res)
            print(f"  round {r + 1}/{rounds} {tool:<30} {res['tokens_per_s']:7.1f} tok/s wall "
                  f"{res['tokens_per_cpu_s']:7.1f} tok/CPU-s {res['peak_rss_mb']:6.0f} MB "
                  f"ref {res['ref_cpu_seconds']:5.1f} CPU-s "
                  f"losses {[round(x, 7) for x in res['losses'][:2]]}", flush=True)
    return {"workload": asdict(w), "settings": common, "runs": runs,
            "summary": summarise(runs, w.pairs)}


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def summarise(runs: dict[str, list[dict[str, Any]]], pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool, rs in runs.items():
        out[tool] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "tokens_per_cpu_s": _median([r.get("tokens_per_cpu_s") for r in rs]),
            "tokens_per_s_rounds": [round(r["tokens_per_s"], 1) for r in rs],
            "tokens_per_cpu_s_rounds": [round(r.get("tokens_per_cpu_s") or 0, 1) for r in rs],
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
            # each run visits every pair once, so the precompute pass and the per-step
            # reference forwards both divide by the number of pairs
            "ref_ms_per_pair": 1000 * statistics.median(r["ref_seconds"] for r in rs) / pairs,
            "ref_cpu_ms_per_pair": 1000 * (_median([r.get("ref_cpu_seconds") for r in rs])
                                           or 0.0) / pairs,
            "loss_step1": rs[0]["losses"][0],
            "loss_step2": rs[0]["losses"][1] if len(rs[0]["losses"]) > 1 else None,
            "logps_chosen_step1": rs[0]["logps_chosen"][0],
            "logps_rejected_step1": rs[0]["logps_rejected"][0],
            "rounds": len(rs),
        }
    return out


# --------------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}×"


def table(summary: dict[str, Any], base: str, against: list[str]) -> str:
    """Markdown: one row per tool, then ``base`` (tether) over each TRL row."""
    lines = ["| run | tokens per CPU-s | tokens/s wall (rounds) | peak RSS (MB) "
             "| reference CPU ms/pair | loss step 1 | loss step 2 | logps/chosen step 1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for tool, s in summary.items():
        rounds = ", ".join(f"{x:.0f}" for x in s["tokens_per_s_rounds"])
        lines.append(f"| {tool} | {_fmt(s['tokens_per_cpu_s'])} | {s['tokens_per_s']:.1f} "
                     f"({rounds}) | {s['peak_rss_mb']:.0f} | {s['ref_cpu_ms_per_pair']:.0f} | "
                     f"{s['loss_step1']:.7f} | {_fmt(s['loss_step2'], '.7f')} | "
                     f"{s['logps_chosen_step1']:.4f} |")
    lines += ["", "| tether ÷ TRL | tokens per CPU-s | tokens/s wall | peak RSS "
              "| loss diff step 1 | loss diff step 2 |", "|---|---:|---:|---:|---:|---:|"]
    b = summary[base]
    for other in against:
        o = summary.get(other)
        if o is None:
            continue
        d2 = (abs(b["loss_step2"] - o["loss_step2"])
              if b["loss_step2"] is not None and o["loss_step2"] is not None else None)
        lines.append(f"| {base} vs {other} | {_ratio(b['tokens_per_cpu_s'], o['tokens_per_cpu_s'])}"
                     f" | {_ratio(b['tokens_per_s'], o['tokens_per_s'])} | "
                     f"{_ratio(b['peak_rss_mb'], o['peak_rss_mb'])} | "
                     f"{abs(b['loss_step1'] - o['loss_step1']):.1e} | {_fmt(d2, '.1e')} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((x.split(":", 1)[1].strip() for x in info.splitlines()
                if x.startswith("model name")), platform.processor())
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in info,
            "amx": "amx_bf16" in info, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": os.getloadavg()}


def lever_table(summary: dict[str, Any]) -> str:
    """Markdown: each tether variant against tether's defaults."""
    base = summary["tether"]
    out = ["| tether variant | tokens per CPU-s | × defaults | tokens/s wall (rounds) "
           "| peak RSS (MB) | × defaults | loss step 2 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for tool, s in summary.items():
        rounds = ", ".join(f"{x:.0f}" for x in s["tokens_per_s_rounds"])
        out.append(f"| {tool} | {_fmt(s['tokens_per_cpu_s'])} | "
                   f"{_ratio(s['tokens_per_cpu_s'], base['tokens_per_cpu_s'])} | "
                   f"{s['tokens_per_s']:.1f} ({rounds}) | {s['peak_rss_mb']:.0f} | "
                   f"{_ratio(s['peak_rss_mb'], base['peak_rss_mb'])} | "
                   f"{_fmt(s['loss_step2'], '.7f')} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- scaling


def scaling(args: argparse.Namespace, trl_python: Path) -> dict[str, Any]:
    """Tokens/s and peak memory at sequence 256/512/1024 × vocabulary 32k/128k, both tools."""
    rows = []
    for seq in (256, 512, 1024):
        for vocab in (32_000, 128_000):
            w = Workload(layers=args.scaling_layers, vocab=vocab, prompt_len=seq * 3 // 4,
                         completion_len=seq // 4, spread=0.0,
                         pairs=args.scaling_batch * args.scaling_steps)
            common = _common(args, batch_size=args.scaling_batch, steps=args.scaling_steps)
            print(f"scaling: sequence {seq}, vocabulary {vocab}", flush=True)
            res = compare(w, ["tether", "trl"], args.rounds, common, args.workdir, trl_python,
                          args.timeout)
            rows.append({"seq": seq, "vocab": vocab, "runs": res["runs"], **{
                t: {k: s[k] for k in ("tokens_per_s", "tokens_per_cpu_s", "peak_rss_mb")}
                for t, s in res["summary"].items()}})
    return {"layers": args.scaling_layers, "batch_pairs": args.scaling_batch,
            "steps": args.scaling_steps, "settings": _common(args), "rows": rows}


def scaling_table(s: dict[str, Any]) -> str:
    threads = s["settings"]["threads"]
    out = [f"Scaling: {s['layers']} layers, hidden 512, batch {s['batch_pairs']} pairs, "
           f"prompt:completion 3:1, fp32, {threads} thread(s), {s['steps'] - 1} timed step(s) "
           "after 1 warm-up; TRL with its defaults as in the main table.", "",
           "| sequence | vocabulary | tether tok/CPU-s | TRL tok/CPU-s | speed-up (CPU) "
           "| speed-up (wall) | tether MB | TRL MB | memory ratio |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        t, o = r["tether"], r["trl"]
        out.append(f"| {r['seq']} | {r['vocab'] // 1000}k | {_fmt(t['tokens_per_cpu_s'], '.0f')}"
                   f" | {_fmt(o['tokens_per_cpu_s'], '.0f')} | "
                   f"{_ratio(t['tokens_per_cpu_s'], o['tokens_per_cpu_s'])} | "
                   f"{_ratio(t['tokens_per_s'], o['tokens_per_s'])} | {t['peak_rss_mb']:.0f} | "
                   f"{o['peak_rss_mb']:.0f} | {_ratio(t['peak_rss_mb'], o['peak_rss_mb'])} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def _common(args: argparse.Namespace, **kw: Any) -> dict[str, Any]:
    common = {"batch_size": args.batch, "steps": args.steps, "warmup": args.warmup,
              "lr": args.lr, "beta": args.beta, "seed": 0, "bf16": False, "precompute": False,
              "threads": args.threads}
    common.update(kw)
    return common


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tools", default="tether,trl,trl-precompute",
                   help=f"comma-separated, from: {', '.join(TOOLS)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run, warm-up included")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads per child (1 makes CPU time an exact measure of work)")
    p.add_argument("--lr", type=float, default=1e-6, help="TRL's documented default")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--quick", action="store_true", help="tiny model: check the pipeline")
    p.add_argument("--levers", action="store_true",
                   help="tether with each lever changed from its defaults (reference cached)")
    p.add_argument("--scaling", action="store_true", help="the sequence × vocabulary table")
    p.add_argument("--scaling-layers", type=int, default=2)
    p.add_argument("--scaling-batch", type=int, default=2)
    p.add_argument("--scaling-steps", type=int, default=2)
    p.add_argument("--name", default=None, help="results file name (default: from the options)")
    p.add_argument("--workdir", type=Path, default=HERE / ".work")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--timeout", type=float, default=3600)
    return p


def main() -> None:
    p = _parser()
    args = p.parse_args()
    uses_trl = args.scaling or any(TOOLS[t][0] == "trl" for t in args.tools.split(",")
                                   if t in TOOLS and not args.levers)
    trl_python = ensure_trl_venv() if uses_trl else Path(sys.executable)  # tether-only: none
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    if args.scaling:
        res = scaling(args, trl_python)
        name = args.name or "scaling"
    else:
        w = Workload(pairs=args.steps * args.batch)
        if args.quick:
            w = replace(w, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                        vocab=2000, prompt_len=24, completion_len=8)
        tools = ["tether", *(f"tether-{k}" for k in LEVERS)] if args.levers else \
            args.tools.split(",")
        unknown = [t for t in tools if t not in TOOLS]
        if unknown:
            p.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
        common = _common(args)
        if args.levers:
            common["reference_cache"] = str(args.workdir / "reference-cache")
        print(f"workload {w.name}; tools {tools}; {args.rounds} rounds", flush=True)
        res = compare(w, tools, args.rounds, common, args.workdir, trl_python, args.timeout)
        res["kind"] = "levers" if args.levers else "compare"
        name = args.name or ("quick" if args.quick else "levers" if args.levers else "cpu-default")
    res["machine"] = info
    res["command"] = " ".join(["python", *sys.argv])
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = report(res)
    (args.out / f"{name}.md").write_text(md)
    print("\n" + md)


def report(res: dict[str, Any]) -> str:
    """The Markdown for a results JSON (also: ``python bench/compare_trl.py --report F.json``)."""
    info = res["machine"]
    head = (f"Machine: {info['cpu']}, {info['cores']} cores, avx512_bf16={info['avx512_bf16']}, "
            f"amx={info['amx']}; load average at start "
            f"{tuple(round(x, 1) for x in info['load_average_at_start'])} (a shared machine)."
            f"\nCommand: `{res['command']}`\n\n")
    if "rows" in res:
        return head + scaling_table(res)
    if res.get("kind") == "levers":
        return head + lever_table(res["summary"])
    tools = list(res["summary"])
    return head + table(res["summary"], tools[0], [t for t in tools if t.startswith("trl")])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(report(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
