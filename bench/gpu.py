"""tether vs TRL's DPOTrainer on a GPU: Llama-3.2-1B and Llama-3.1-8B shapes, sequences 1k-8k.

    python bench/gpu.py                  # on a CUDA machine: the whole table (bf16 mixed precision)
    python bench/gpu.py --smoke          # anywhere (the default without CUDA): tiny, seconds

For each model shape and each sequence length it trains both tools on the same token ids (the
word-level workload of ``bench/workload.py``; prompts are 3/4 of a sequence, answers 1/4, no
spread) and reports, per tool: tokens/s over the timed steps, peak GPU memory
(``torch.cuda.max_memory_allocated``, set-up included), MFU, and the longest sequence that
fits (a tool that runs out of memory at one length is not tried at longer ones).

- **Precision.** Both train fp32 master weights with bf16 autocast: tether's default on a bf16
  GPU (``precision=mixed``), TRL's ``bf16=True`` on an fp32 model. TRL runs with its defaults
  otherwise (gradient checkpointing on, its fused chunked LM head, a reference model in memory),
  adjusted only for comparability as in ``bench/compare_trl.py`` (lr, beta, batch, sequential
  order, no truncation, no logging).
- **Tokens** are the chosen and rejected sequences' tokens, prompt included
  (``2·|prompt| + |chosen| + |rejected|`` per pair), counted identically for both tools.
- **MFU** = model FLOPs per token × tokens/s ÷ the GPU's dense bf16 peak, with the model FLOPs
  per token of PaLM (Chowdhery et al. 2022, arXiv 2204.02311, appendix B):
  ``6·N + 12·n_layers·d_model·T``, N the parameters without the input embedding (the LM head
  counts, once when tied), T the sequence length. It is the MFU of the plain computation on
  every token: an implementation that computes less (prefix sharing runs the prompt once, the
  chunked head skips prompt positions) is credited with the work it avoided, so MFU compares
  work done per second at the same scale for both tools, not how busy the GPU is.
- **8B** runs only when the GPUs can hold it: FSDP2 over every visible GPU (tether under
  ``torchrun``, TRL under ``accelerate launch`` with FSDP 2), at 16 bytes per parameter
  (fp32 weights, gradients and AdamW moments) over the GPUs plus a quarter for activations.

On a machine without CUDA it runs the smoke configuration: a tiny Llama, sequences 32 and 64,
tether's side always and TRL's when its virtualenv already exists (``bench/.venv-trl``, made by
``bench/compare_trl.py``), so that the script is tested in CI without TRL installed.
Results go to ``bench/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare_trl import TRL_VERSION, VENV, ensure_trl_venv, prepare, run_child  # noqa: E402
from workload import Workload  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' data sheets (no 2:4 sparsity), TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "GH200": 989.4,
                    "H100 PCIe": 756.0, "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.1}
SEQS = (1024, 2048, 4096, 8192)
SMOKE_SEQS = (32, 64)
BYTES_PER_PARAM = 16  # precision=mixed: fp32 weights, gradients and AdamW's two moments


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    def workload(self, seq: int, pairs: int) -> Workload:
        return Workload(hidden=self.hidden, layers=self.layers, heads=self.heads,
                        kv_heads=self.kv_heads, intermediate=self.intermediate, vocab=self.vocab,
                        prompt_len=seq * 3 // 4, completion_len=seq - seq * 3 // 4, spread=0.0,
                        pairs=pairs, tie_embeddings=self.tied, max_positions=max(seq, 4096),
                        rope_theta=500_000.0,
                        save_dtype="bfloat16" if self.hidden >= 1024 else "float32")

    def params(self) -> int:
        """All parameters (the input embedding and, untied, the LM head included)."""
        kv = self.hidden // self.heads * self.kv_heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        layer = attn + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embed = self.vocab * self.hidden
        return self.layers * layer + self.hidden + embed * (1 if self.tied else 2)

    def flops_per_token(self, seq: int) -> int:
        """PaLM's model FLOPs per trained token: 6·N + 12·n_layers·d_model·T."""
        n = self.params() - (0 if self.tied else self.vocab * self.hidden)
        return 6 * n + 12 * self.layers * self.hidden * seq


SHAPES = {
    "1b": Shape("Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128_256, tied=True),
    "8b": Shape("Llama-3.1-8B", 4096, 32, 32, 8, 14_336, 128_256, tied=False),
    "smoke": Shape("tiny Llama", 64, 2, 4, 2, 128, 512, tied=False),
}


# --------------------------------------------------------------------------- one cell


def run_cell(shape: Shape, seq: int, tool: str, args: argparse.Namespace, gpus: int,
             trl_python: Path | None) -> dict[str, Any]:
    """Train ``tool`` on ``shape`` at sequence length ``seq``; OOM is a result, not an error."""
    pairs_per_step = max(1, args.tokens_per_step // (2 * seq))
    pairs_per_step = -(-pairs_per_step // gpus) * gpus  # every rank gets as many pairs
    w = shape.workload(seq, pairs_per_step * args.steps)
    data = prepare(w, args.workdir, pairs_per_step, 0)
    common: dict[str, Any] = {
        "batch_size": pairs_per_step // gpus, "steps": args.steps, "warmup": args.warmup,
        "lr": 1e-6, "beta": 0.1, "seed": 0, "bf16": args.device == "cuda", "precompute": False,
        "threads": args.threads, "device": args.device, "launch": _launchers(gpus, trl_python),
    }
    if gpus > 1:
        common["tether_overrides"] = {"distributed": "fsdp"}
    try:
        r = run_child(tool, data, common, trl_python or Path(sys.executable), args.timeout)
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        return {"tool": tool, "seq": seq, "oom": True}
    tok_s = r["tokens_per_s"]
    peak = PEAK_BF16_TFLOPS.get(args.gpu_name) if args.peak_tflops is None else args.peak_tflops
    mfu = shape.flops_per_token(seq) * tok_s / (peak * 1e12 * gpus) if peak else None
    gb = r.get("peak_gpu_bytes")
    return {"tool": tool, "seq": seq, "oom": False, "pairs_per_step": pairs_per_step,
            "tokens_per_s": tok_s, "peak_gpu_gb": gb / 2**30 if gb else None, "mfu": mfu,
            "peak_rss_mb": r["peak_rss_mb"], "losses": r["losses"][:2],
            "step_seconds": r["step_seconds"]}


def _launchers(gpus: int, trl_python: Path | None) -> dict[str, list[str]]:
    """How each child starts: one process, or one per GPU (torchrun / accelerate with FSDP2)."""
    if gpus == 1:
        return {}
    trl = str(trl_python)
    return {
        "tether": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={gpus}"],
        "trl": [trl, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
                "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy",
                "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap",
                "LlamaDecoderLayer", "--mixed_precision", "bf16"],
    }


def fits(shape: Shape, gpus: int, gpu_bytes: int) -> bool:
    """Weights, gradients and AdamW state over the GPUs, plus a quarter for activations."""
    return BYTES_PER_PARAM * shape.params() / gpus * 1.25 < gpu_bytes


# --------------------------------------------------------------------------- the table


def run(args: argparse.Namespace) -> dict[str, Any]:
    trl_python, trl_skip = _trl(args)
    tools = [t for t in args.tools.split(",") if t != "trl" or trl_python is not None]
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {"trl": trl_skip} if trl_skip and "trl" in args.tools else {}
    for key in args.shapes.split(","):
        shape = SHAPES[key]
        gpus = args.gpus if key == "8b" else 1
        if args.device == "cuda" and not fits(shape, gpus, args.gpu_bytes):
            skipped[shape.name] = (f"needs ~{BYTES_PER_PARAM * shape.params() * 1.25 / 2**30:.0f}"
                                   f" GiB over {gpus} GPU(s) of {args.gpu_bytes / 2**30:.0f} GiB")
            continue
        for tool in tools:
            for seq in args.seqs:
                print(f"{shape.name} seq {seq} {tool} ...", flush=True)
                cell = {"model": shape.name, **run_cell(shape, seq, tool, args, gpus, trl_python)}
                rows.append(cell)
                if cell["oom"]:
                    break  # longer sequences need more memory still
    return {"rows": rows, "skipped": skipped, "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shapes": {k: asdict(SHAPES[k]) for k in args.shapes.split(",")}}


def _trl(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """TRL's interpreter, or why TRL's side is skipped (smoke runs never install it)."""
    if "trl" not in args.tools.split(","):
        return None, None
    if args.trl_python is not None:
        ok = args.trl_python.exists()
        return (args.trl_python, None) if ok else (None, f"{args.trl_python} does not exist")
    if args.smoke:
        python = VENV / "bin" / "python"
        if not python.exists():
            return None, (f"{VENV} is absent (bench/compare_trl.py makes it; the smoke run "
                          "installs nothing)")
        return python, None
    return ensure_trl_venv(cuda=True), None


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [f"GPU: {s['gpu_name']} × {s['gpus']}; command: `{res['command']}`", "",
             "MFU = (6·N + 12·n_layers·d_model·T) × tokens/s ÷ peak bf16 FLOP/s "
             f"({s['peak_tflops'] or PEAK_BF16_TFLOPS.get(s['gpu_name'], 'unknown')} TFLOP/s "
             "per GPU).", "",
             "| model | sequence | tool | pairs/step | tokens/s | peak GPU GiB | MFU |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if r["oom"]:
            lines.append(f"| {r['model']} | {r['seq']} | {r['tool']} | - | OOM | - | - |")
            continue
        gb = "-" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.1f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(f"| {r['model']} | {r['seq']} | {r['tool']} | {r['pairs_per_step']} | "
                     f"{r['tokens_per_s']:.0f} | {gb} | {mfu} |")
    lines += ["", "| model | tool | longest sequence that fits |", "|---|---|---:|"]
    for (model, tool), seq in longest(res["rows"]).items():
        lines.append(f"| {model} | {tool} | {seq or 'none'} |")
    lines += _ratios(res["rows"])
    lines += [f"\nNot run: {k}: {v}." for k, v in res["skipped"].items()]
    return "\n".join(lines) + "\n"


def longest(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int | None]:
    out: dict[tuple[str, str], int | None] = {}
    for r in rows:
        key = (r["model"], r["tool"])
        out.setdefault(key, None)
        if not r["oom"]:
            out[key] = max(out[key] or 0, r["seq"])
    return out


def _ratios(rows: list[dict[str, Any]]) -> list[str]:
    cells = {(r["model"], r["seq"], r["tool"]): r for r in rows if not r["oom"]}
    out = ["", "| model | sequence | tether ÷ TRL tokens/s | tether ÷ TRL peak memory |",
           "|---|---:|---:|---:|"]
    pairs = [(m, q) for (m, q, t) in cells if t == "tether" and (m, q, "trl") in cells]
    for m, q in pairs:
        a, b = cells[(m, q, "tether")], cells[(m, q, "trl")]
        mem = (f"{a['peak_gpu_gb'] / b['peak_gpu_gb']:.2f}×"
               if a["peak_gpu_gb"] and b["peak_gpu_gb"] else "-")
        out.append(f"| {m} | {q} | {a['tokens_per_s'] / b['tokens_per_s']:.2f}× | {mem} |")
    return out if pairs else []


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model (default without CUDA)")
    p.add_argument("--shapes", default=None, help="comma-separated from 1b, 8b (default: both)")
    p.add_argument("--seqs", default=None, help="sequence lengths (default 1024,2048,4096,8192)")
    p.add_argument("--tools", default="tether,trl")
    p.add_argument("--tokens-per-step", type=int, default=16_384,
                   help="plain tokens per optimizer step: pairs per step = this ÷ (2·sequence)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 6; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; smoke 1)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak, when its name is not in the table")
    p.add_argument("--trl-python", type=Path, default=None,
                   help=f"an interpreter with trl=={TRL_VERSION} (default: make bench/.venv-trl-cuda)")
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--name", default=None)
    p.add_argument("--workdir", type=Path, default=HERE / ".work")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--timeout", type=float, default=3600)
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the machine: CUDA or not, which GPU, how many."""
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    args.smoke = not cuda
    args.device = "cuda" if cuda else "cpu"
    args.gpus = torch.cuda.device_count() if cuda else 1
    props = torch.cuda.get_device_properties(0) if cuda else None
    args.gpu_name = _gpu_key(props.name) if props else "cpu"
    args.gpu_bytes = props.total_memory if props else 0
    args.shapes = args.shapes or ("1b,8b" if cuda else "smoke")
    args.seqs = [int(x) for x in args.seqs.split(",")] if args.seqs else list(
        SEQS if cuda else SMOKE_SEQS)
    args.steps = args.steps or (6 if cuda else 2)
    args.warmup = args.warmup or (2 if cuda else 1)
    if args.smoke:
        args.tokens_per_step = min(args.tokens_per_step, 256)
    args.name = args.name or (f"gpu-{args.gpu_name.replace(' ', '-')}" if cuda else "gpu-smoke")
    return args


def _gpu_key(name: str) -> str:
    """The peak table's key for a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'H100 SXM')."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return "H100 SXM" if key == "H100 80GB HBM3" else key
    return name


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _resolve(_parser().parse_args(argv))
    res = run(args)
    res["command"] = " ".join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    res["git"] = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = report(res)
    (args.out / f"{args.name}.md").write_text(md)
    print("\n" + md)
    return res


if __name__ == "__main__":
    main()
