"""What the demo shows: the summary table in the terminal, ``report.md`` and ``plots/*.png``.

The evaluation writes its own ``eval/report.md``; this report adds what only the demo knows:
training curves of both stages, per-family win-rates, the targets and whether they were met,
and side-by-side answers per prompt family.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tether.io import write_text

__all__ = ["TARGETS", "print_summary", "targets_met", "write_report"]

# The targets for the default size: win-rate, low end of its 95% interval, minutes.
TARGETS = {"win_rate": 0.75, "ci95_low": 0.60, "minutes": 5.0}


def targets_met(summary: dict[str, Any]) -> dict[str, bool]:
    """Whether each target is met; empty for sizes other than ``default`` (not set for them)."""
    if summary["size"] != "default":
        return {}
    r = summary["results"]
    return {
        "win_rate": r["win_rate"] is not None and r["win_rate"] >= TARGETS["win_rate"],
        "ci95_low": r["ci95"][0] is not None and r["ci95"][0] >= TARGETS["ci95_low"],
        "minutes": summary["total_seconds"] <= 60 * TARGETS["minutes"],
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines of the summary table."""
    r = summary["results"]
    imp = r.get("implicit_reward") or {}
    lengths = r.get("lengths") or {}
    mean_len = {k: (lengths.get(k) or {}).get("mean") for k in ("reference", "policy")}
    rows = [
        ("win / tie / loss", f"{r['wins']} / {r['ties']} / {r['losses']}  (n={r['n']})"),
        ("win-rate (ties 0.5)", f"{_pct(r['win_rate'])}  95% CI [{_pct(r['ci95'][0])}, "
                                f"{_pct(r['ci95'][1])}]"),
        ("held-out reward accuracy", f"{_pct(imp.get('accuracy'))} (n={imp.get('n', 0)})"),
        ("mean KL to reference", f"{summary['kl']['mean']:.3f} nats per answer"),
        ("mean answer tokens", f"SFT {mean_len['reference'] or 0:.1f} -> "
                               f"DPO {mean_len['policy'] or 0:.1f}"),
    ]
    for fam, f in summary["families"].items():
        scores = f"{f['score_reference']:.2f} -> {f['score_policy']:.2f}"
        rows.append((f"  {fam}", f"win-rate {_pct(f['win_rate'])}  judge score {scores} "
                                 f"(n={f['n']})"))
    for stage, sec in summary["seconds"].items():
        rows.append((f"time: {stage}", f"{sec:.1f} s"))
    rows.append(("time: total", f"{summary['total_seconds']:.1f} s"))
    return rows


def print_summary(summary: dict[str, Any]) -> None:
    rows = _rows(summary)
    width = max(len(k) for k, _ in rows)
    print()
    print(f"tether demo (size {summary['size']}, seed {summary['seed']}): "
          "DPO model vs its SFT reference")
    print("-" * (width + 50))
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print("-" * (width + 50))
    print(_targets_line(summary))


def _targets_line(summary: dict[str, Any]) -> str:
    met = targets_met(summary)
    if not met:
        return f"targets: set for size default only, not checked at size {summary['size']}"
    return "targets: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in met.items())


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _plot_training(out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = _read_metrics(out / "sft" / "metrics.jsonl")
    dpo = [m for m in _read_metrics(out / "metrics.jsonl") if "rewards/margins" in m]
    if not sft and not dpo:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    panels = [
        (axes[0], sft, "loss", "SFT loss"),
        (axes[1], dpo, "loss", "DPO loss"),
        (axes[2], dpo, "rewards/margins", "DPO reward margin"),
        (axes[3], dpo, "rewards/accuracies", "DPO reward accuracy"),
    ]
    for ax, rows, key, title in panels:
        points = [(m["step"], m[key]) for m in rows if m.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True))
        ax.set(title=title, xlabel="step")
    fig.tight_layout()
    (out / "plots").mkdir(exist_ok=True)
    fig.savefig(out / "plots" / "training.png", dpi=110)
    plt.close(fig)
    return "plots/training.png"


def _plot_win_rate(out: Path, summary: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = summary["results"]
    fams = summary["families"]
    names = ["all", *fams]
    rates = [r["win_rate"], *(f["win_rate"] for f in fams.values())]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, rates, color=["tab:blue"] + ["tab:gray"] * len(fams))
    low, high = r["ci95"]
    ax.errorbar([0], [r["win_rate"]], yerr=[[r["win_rate"] - low], [high - r["win_rate"]]],
                color="black", capsize=6)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.axhline(TARGETS["win_rate"], color="tab:green", linestyle=":", linewidth=1)
    ax.set(ylim=(0, 1), ylabel="win-rate vs SFT (ties 0.5)",
           title="DPO vs SFT on held-out prompts (95% CI on all)")
    fig.tight_layout()
    (out / "plots").mkdir(exist_ok=True)
    fig.savefig(out / "plots" / "winrate.png", dpi=110)
    plt.close(fig)
    return "plots/winrate.png"


def _fence(text: str) -> str:
    # model text cannot close a fence longer than any backtick run inside it
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """``report.md`` with the table, the plots and before/after examples per family."""
    plots = [p for p in (_plot_training(out), _plot_win_rate(out, summary)) if p]
    lines = [
        f"# tether demo (size {summary['size']}, seed {summary['seed']})", "",
        "A random-init tiny Llama learns a synthetic assistant task by SFT on a mixture of "
        "answer styles, then DPO against the SFT model shifts it toward the preferred style "
        "(courteous, concise, correct, refusing what must be refused). A rule judge that "
        "knows the ground truth compares both models' greedy answers on held-out prompts.", "",
        "| | |", "|---|---|",
        *(f"| {k.strip()} | {v} |" for k, v in _rows(summary)), "",
        _targets_line(summary).capitalize().replace("MISSED", "missed") + ".", "",
        *(f"![{Path(p).stem}]({p})" for p in plots), "",
        "The evaluation's own report, with the bootstrap details and the judgments: "
        "[eval/report.md](eval/report.md).", "",
        "## Before (SFT) and after (DPO), per prompt family", "",
    ]
    for ex in summary["examples"]:
        lines += [
            f"### {ex['family']}: {ex['prompt']}", "",
            f"SFT (judge score {ex['score_sft']:.2f}):", "", _fence(ex["sft"]), "",
            f"DPO (judge score {ex['score_dpo']:.2f}):", "", _fence(ex["dpo"]), "",
        ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
