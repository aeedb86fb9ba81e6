"""report.md and PNG plots for ``tether inspect``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.io import write_text

if TYPE_CHECKING:
    from tether.insight.inspect import Finding

__all__ = ["write_inspect_report"]


def _plots(out: Path, n: dict[str, list[int]], diff: Sequence[int], margins: Sequence[float],
           units: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("prompt", "chosen", "rejected"):
        ax.hist(n[key], bins=30, alpha=0.5, label=key)
    ax.set(xlabel=units, ylabel="rows", title="lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plots" / "lengths.png", dpi=110)
    names.append("plots/lengths.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(diff, bins=30, color="tab:purple")
    ax.axvline(0, color="black", lw=1)
    ax.set(xlabel=f"chosen − rejected ({units})", ylabel="pairs", title="length difference")
    fig.tight_layout()
    fig.savefig(out / "plots" / "length_difference.png", dpi=110)
    names.append("plots/length_difference.png")
    plt.close(fig)
    if margins:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(margins, bins=30, color="tab:green")
        ax.axvline(0, color="black", lw=1)
        ax.set(xlabel="per-token log-prob margin (chosen − rejected)", ylabel="pairs",
               title="the model's own preference")
        fig.tight_layout()
        fig.savefig(out / "plots" / "model_margin.png", dpi=110)
        names.append("plots/model_margin.png")
        plt.close(fig)
    return names


def write_inspect_report(
    out: Path, result: dict[str, Any], findings: Sequence[Finding], n: dict[str, list[int]],
    diff: Sequence[int], margins: Sequence[float], show: int,
) -> None:
    plots = _plots(out, n, diff, margins, result["units"])
    lines = [f"# tether inspect: {result['data']}", "",
             f"{result['rows']} rows, {result['pairs']} usable pairs, format {result['format']};"
             f" lengths in {result['units']}.", ""]
    warn = [f for f in findings if f.severity == "warn"]
    lines += ["## Findings", "", *(f"- **{f.name}**: {f.summary}" for f in warn or findings), ""]
    for f in findings:
        lines += [f"### {f.name} ({f.severity})", "", f.summary, "", f"What it means: {f.meaning}",
                  "", f"What to do: {f.todo}", ""]
        if f.rows:
            lines += [f"Rows ({len(f.rows)}; first {min(show, len(f.rows))}):", ""]
            lines += [f"- `{r}`" for r in f.rows[:show]] + [""]
    lines += ["## Plots", "", *(f"![{p}]({p})" for p in plots), ""]
    write_text(out / "report.md", "\n".join(lines))
