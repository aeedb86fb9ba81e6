"""``report.md`` and ``plots/*.png`` of a training run, drawn from its files alone.

Everything comes from ``metrics.jsonl``, ``data_audit.json``, ``data_lengths.json`` and (when
``tether eval`` wrote it) ``eval/results.json``, so ``tether report RUN_DIR`` can redraw the
report of a crashed run, and ``tether report A B ...`` overlays runs. matplotlib, Agg backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.io import write_text
from tether.tracking.health import detect

__all__ = ["compare_runs", "ema", "read_history", "write_report"]

# (title, keys drawn in it): one panel each, drawn when any key has data
TRAIN_PANELS = [
    ("loss", ["loss"]),
    ("rewards", ["rewards/chosen", "rewards/rejected"]),
    ("reward margin", ["rewards/margins"]),
    ("reward accuracy", ["rewards/accuracies"]),
    ("log-prob per sequence", ["logps/chosen", "logps/rejected"]),
    ("log-prob per token", ["logps/chosen_per_token", "logps/rejected_per_token"]),
    ("completion tokens", ["lengths/chosen", "lengths/rejected"]),
    ("grad norm", ["grad_norm"]),
    ("learning rate", ["learning_rate"]),
]
EVAL_PANELS = [
    ("eval loss", ["eval/loss"]),
    ("reward accuracy: train vs eval", ["rewards/accuracies", "eval/rewards/accuracies"]),
    ("eval reward margin", ["eval/rewards/margins"]),
    ("eval rewards", ["eval/rewards/chosen", "eval/rewards/rejected"]),
]
UNSMOOTHED = {"learning_rate", "lr", "epoch"}  # schedules, not noisy measurements
COMPARE_KEYS = ["loss", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "eval/rewards/accuracies", "grad_norm"]
KL_NOTE = ("KL to the reference is not estimated during training: the train and eval rows are "
           "not samples from the policy, so the mean log-ratio on them is no KL estimate. "
           "`tether eval` measures it on the policy's own answers (`kl` in eval/results.json).")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; a half-written last line (a crash) is skipped."""
    path = run_dir / "metrics.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with the start-up bias removed."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _points(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in history if "event" not in r
           and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in pts], [v for _, v in pts]


def _grid(panels: list[tuple[str, list[str]]], runs: dict[str, list[dict[str, Any]]],
          path: Path, smooth: bool = True) -> bool:
    """One subplot per panel with data: raw (thin) and smoothed (thick) curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [(t, ks) for t, ks in panels
             if any(_points(h, k)[0] for h in runs.values() for k in ks)]
    if not drawn:
        return False
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes.flat, drawn, strict=False):
        i = 0
        for run, history in runs.items():
            for key in keys:
                steps, values = _points(history, key)
                if not steps:
                    continue
                label = key if len(runs) == 1 else f"{run}: {key}"
                c = colors[i % len(colors)]
                i += 1
                if smooth and len(values) > 2 and key not in UNSMOOTHED:
                    ax.plot(steps, values, color=c, alpha=0.3, linewidth=0.8)
                    weight = min(0.9, max(0.0, 1 - 10 / len(values)))  # less lag on short runs
                    ax.plot(steps, ema(values, weight), color=c, linewidth=1.8, label=label)
                else:
                    ax.plot(steps, values, color=c, marker="o" if len(values) < 30 else None,
                            markersize=3, label=label)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_lengths(lengths: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hists = lengths.get("train", {})
    if not hists:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, h in hists.items():
        edges, counts = h["edges"], h["counts"]
        ax.stairs(counts, edges, label=f"{name} (mean {h['mean']:.0f})")
    if lengths.get("max_length"):
        ax.axvline(lengths["max_length"], color="black", linestyle="--", linewidth=1,
                   label=f"max_length {lengths['max_length']}")
    ax.set(title="training data: tokens per row (after truncation)", xlabel="tokens",
           ylabel="rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _warnings(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Health events the run wrote, plus any the detectors find now (a crashed run)."""
    events = [r for r in history if r.get("event") == "health"]
    fired = {e["name"] for e in events}
    return events + [w.event() for w in detect(history, fired)]


def _summary(history: list[dict[str, Any]]) -> list[str]:
    train = [r for r in history if "loss" in r and "event" not in r]
    evals = [r for r in history if any(k.startswith("eval/") for k in r)]
    lines = []
    for label, rows in (("last train log", train), ("last eval", evals)):
        if rows:
            r = rows[-1]
            keys = [k for k in r if isinstance(r[k], (int, float)) and k != "step"][:12]
            lines.append(f"- {label} (step {r['step']}): " +
                         ", ".join(f"`{k}` {r[k]:.4g}" for k in keys))
    return lines


def write_report(run_dir: Path) -> Path:
    """Draw the plots and write ``report.md``; returns its path."""
    history = read_history(run_dir)
    plots = run_dir / "plots"
    lines = [f"# Training report: {run_dir.name}", ""]
    warnings = _warnings(history)
    if warnings:
        lines += ["## Health warnings", ""]
        lines += [f"- **{w['name']}** (step {w['step']}): {w['message']}. *Why:* {w['why']}. "
                  f"*Try:* {w['suggest']}" for w in warnings]
        lines.append("")
    lines += ["## Summary", "", *(_summary(history) or ["- no metrics logged yet"]), ""]
    if _grid(TRAIN_PANELS, {"run": history}, plots / "curves.png"):
        lines += ["## Training curves (thin: raw, thick: smoothed)", "",
                  "![training curves](plots/curves.png)", ""]
    if _grid(EVAL_PANELS, {"run": history}, plots / "eval_curves.png"):
        lines += ["## Evaluation on eval_data", "", "![eval curves](plots/eval_curves.png)", ""]
    lines += [KL_NOTE, ""]
    results = _read_json(run_dir / "eval" / "results.json")
    if results.get("win_rate") is not None:
        lines += [f"Win-rate (tether eval): {100 * results['win_rate']:.1f}%, 95% CI "
                  f"{results.get('ci95')}, n={results.get('n')}; "
                  "see [eval/report.md](eval/report.md).", ""]
    lines += _data_section(run_dir, plots)
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _data_section(run_dir: Path, plots: Path) -> list[str]:
    lines = ["## Data", ""]
    if _plot_lengths(_read_json(run_dir / "data_lengths.json"), plots / "data_lengths.png"):
        lines += ["![token lengths](plots/data_lengths.png)", ""]
    audit = _read_json(run_dir / "data_audit.json")
    for split in ("train", "eval"):
        t = audit.get(f"{split}_truncation")
        if t:
            lines.append(f"- {split}: {t['rows']} rows, {t['prompts_truncated']} prompts and "
                         f"{t['completions_truncated']} completions truncated, "
                         f"{t['tokens_lost']} tokens lost, {t['dropped']} rows dropped")
    return [*lines, ""]


def compare_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Overlay the main curves of several runs: ``out/compare.md`` and ``out/plots``."""
    runs = {d.name if d.name else str(d): read_history(d) for d in run_dirs}
    panels = [(k, [k]) for k in COMPARE_KEYS]
    _grid(panels, runs, out / "plots" / "compare.png")
    lines = [f"# Comparison of {len(runs)} runs", "",
             *(f"- `{name}`: {d}" for name, d in zip(runs, run_dirs, strict=True)), "",
             "![comparison](plots/compare.png)", ""]
    for name, history in runs.items():
        lines += [f"## {name}", "", *(_summary(history) or ["- no metrics"]), ""]
    path = out / "compare.md"
    write_text(path, "\n".join(lines))
    return path

