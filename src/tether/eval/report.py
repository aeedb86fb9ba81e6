"""The human-readable side of an evaluation: ``eval/report.md``, ``eval/plots/*.png`` and the
terminal summary. Model text goes into fenced blocks longer than any backtick run inside it,
so an answer cannot break out of its block and format the report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.eval.generate import Generation
from tether.eval.judging import PairJudgment
from tether.eval.stats import sigmoid
from tether.io import write_text

__all__ = ["summary_lines", "write_plots", "write_report"]

_SHOW = 3  # biggest wins and losses shown
_CLIP = 1200  # characters of each text shown in the report


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _interval(ci: Any) -> str:
    if not ci or any(v is None for v in ci):
        return "n/a"
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the headline number first."""
    lines = []
    if results.get("win_rate") is not None or results.get("n"):
        lines.append(
            f"win-rate {_pct(results['win_rate'])}  95% CI {_interval(results['ci95'])}  "
            f"(wins {results['wins']}, ties {results['ties']}, losses {results['losses']}; "
            f"unparsed {results['unparsed']} excluded; n={results['n']})"
        )
        lines.append(
            f"length-controlled {_pct(results['lc_win_rate'])} {_interval(results['lc_ci95'])}"
            f"   Wilson on decisive pairs {_interval(results['wilson95'])}"
        )
        if results.get("order_flip_rate") is not None:
            lines.append(f"order flips {_pct(results['order_flip_rate'])} of pairs judged twice")
        lengths = results.get("lengths") or {}
        if lengths.get("policy"):
            lines.append(
                f"mean answer tokens: policy {lengths['policy']['mean']:.1f}, "
                f"reference {lengths['reference']['mean']:.1f}"
            )
    imp = results.get("implicit_reward")
    if imp and imp.get("n"):
        lines.append(
            f"implicit-reward accuracy {_pct(imp['accuracy'])} {_interval(imp['wilson95'])}, "
            f"mean margin {imp['margin_mean']:.4f} (n={imp['n']}, beta={imp['beta']})"
        )
    lines.extend(f"warning: {w}" for w in results.get("warnings", []))
    lines.append(f"judge: {results.get('judge')}")
    return lines


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    shown = text if len(text) <= _CLIP else text[:_CLIP] + " [...]"
    return f"{ticks}text\n{shown}\n{ticks}"


def _examples(judged: Sequence[PairJudgment], outcome: str) -> list[PairJudgment]:
    """The most confident wins (or losses): by the judge's probability when it gives one."""
    chosen = [j for j in judged if j.outcome == outcome]
    sign = -1.0 if outcome == "win" else 1.0
    return sorted(chosen, key=lambda j: sign * (j.p_policy if j.p_policy is not None else 0.5))[
        :_SHOW
    ]


def write_report(
    path: Path, results: dict[str, Any], judged: Sequence[PairJudgment], plots: Sequence[str]
) -> None:
    r = results
    out = [f"# Evaluation: {r['models']['policy']} vs {r['models']['reference']}", ""]
    if r.get("n") is not None and r.get("pairs"):
        out += [
            "| | value | 95% interval |",
            "|---|---|---|",
            f"| win-rate (ties 0.5) | {_pct(r['win_rate'])} | {_interval(r['ci95'])} "
            f"(bootstrap over prompts, {r['bootstrap_samples']} resamples) |",
            f"| length-controlled win-rate | {_pct(r['lc_win_rate'])} | "
            f"{_interval(r['lc_ci95'])} |",
            f"| style-controlled win-rate | {_pct(r.get('sc_win_rate'))} | "
            f"{_interval(r.get('sc_ci95') or [None, None])} (length and markdown held equal) |",
            f"| wins among decisive pairs | {_pct(r['decisive_win_rate'])} | "
            f"{_interval(r['wilson95'])} (Wilson) |",
            "",
            f"Wins {r['wins']}, ties {r['ties']}, losses {r['losses']}; {r['unparsed']} unparsed "
            f"pairs are excluded (never counted as losses). {r['prompts']} prompts x "
            f"{r['num_samples']} samples.",
            "",
        ]
        if r.get("groups"):
            out += ["| group | win-rate | 95% interval | n |", "|---|---|---|---|"]
            out += [f"| {g}{' **regression**' if v['regression'] else ''} | "
                    f"{_pct(v['win_rate'])} | {_interval(v['ci95'])} | {v['n']} |"
                    for g, v in r["groups"].items()] + [""]
        if r.get("order_flip_rate") is not None:
            out += [
                f"Order bias: the verdict changed with the display order on "
                f"{_pct(r['order_flip_rate'])} of {r['n_both_orders']} pairs (counted as ties); "
                f"the first-shown answer won {_pct(r['first_position_rate'])} of decisive "
                "verdicts.",
                "",
            ]
    for w in r.get("warnings", []):
        out += [f"> **Warning:** {w}", ""]
    out += [f"Judge: `{r['judge']}` (template {r.get('template_hash') or '-'}).", ""]
    imp = r.get("implicit_reward")
    if imp and imp.get("n"):
        out += [
            "## Implicit reward on held-out pairs", "",
            f"Accuracy {_pct(imp['accuracy'])} {_interval(imp['wilson95'])} (Wilson), mean "
            f"margin {imp['margin_mean']:.4f} over {imp['n']} pairs, beta {imp['beta']}.", "",
        ]
    out += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    for title, outcome in (("Biggest wins", "win"), ("Biggest losses", "loss")):
        examples = _examples(judged, outcome)
        if not examples:
            continue
        out += [f"## {title}", ""]
        for j in examples:
            p = "" if j.p_policy is None else f" (p(policy better) = {j.p_policy:.3f})"
            out += [f"### Pair {j.pair.index}{p}", "", "Prompt:", "", _fence(j.pair.prompt), "",
                    "Policy:", "", _fence(j.pair.policy), "", "Reference:", "",
                    _fence(j.pair.reference), ""]
    write_text(path, "\n".join(out))


def write_plots(
    plot_dir: Path,
    results: dict[str, Any],
    judged: Sequence[PairJudgment],
    policy: Sequence[Generation],
    reference: Sequence[Generation],
) -> list[str]:
    """Outcome bar with the win-rate interval, length histograms, length effect. Returns paths
    relative to the eval directory."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, draw in (
        ("outcomes", lambda ax: _outcomes(ax, results)),
        ("lengths", lambda ax: _lengths(ax, policy, reference)),
        ("length_effect", lambda ax: _length_effect(ax, results, judged, policy, reference)),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if draw(ax):
            fig.tight_layout()
            fig.savefig(plot_dir / f"{name}.png", dpi=110)
            names.append(f"plots/{name}.png")
        plt.close(fig)
    return names


def _outcomes(ax: Any, results: dict[str, Any]) -> bool:
    n = max(results["n"], 1)
    shares = [results["wins"] / n, results["ties"] / n, results["losses"] / n]
    ax.bar(["wins", "ties", "losses"], shares, color=["#2a9d8f", "#b0b0b0", "#e76f51"])
    ci = results["ci95"]
    if results["win_rate"] is not None and ci[0] is not None:
        ax.axhline(results["win_rate"], color="black", lw=1, label="win-rate (ties 0.5)")
        ax.axhspan(ci[0], ci[1], color="black", alpha=0.12, label="95% bootstrap CI")
        ax.legend(loc="upper center", fontsize=8, ncol=2, frameon=False)
    ax.set_ylim(0, 1.18)
    ax.set_ylabel(f"share of {results['n']} pairs")
    ax.set_title("policy vs reference")
    return True


def _lengths(ax: Any, policy: Sequence[Generation], reference: Sequence[Generation]) -> bool:
    lp, lr = [g.tokens for g in policy], [g.tokens for g in reference]
    bins = np.linspace(0, max([*lp, *lr, 1]), 30).tolist()
    ax.hist(lr, bins=bins, alpha=0.6, label="reference")
    ax.hist(lp, bins=bins, alpha=0.6, label="policy")
    ax.set_xlabel("answer tokens")
    ax.set_ylabel("answers")
    ax.legend(fontsize=8)
    return True


def _length_effect(
    ax: Any,
    results: dict[str, Any],
    judged: Sequence[PairJudgment],
    policy: Sequence[Generation],
    reference: Sequence[Generation],
) -> bool:
    """Outcome against length difference, with the fitted curve the LC win-rate is read from."""
    scored = [(p.tokens - r.tokens, j.outcome)
              for j, p, r in zip(judged, policy, reference, strict=True) if j.outcome != "unparsed"]
    lc, slope = results["lc_win_rate"], results["lc_slope"]
    if not scored or lc is None or slope is None:
        return False
    diff = np.array([d for d, _ in scored], dtype=float)
    y = np.array([{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for _, o in scored])
    scale = float(diff.std()) or 1.0  # as in stats.length_controlled_win_rate
    jitter = np.random.default_rng(0).uniform(-0.03, 0.03, size=y.size)
    ax.scatter(diff, y + jitter, s=8, alpha=0.5)
    grid = np.linspace(diff.min() - 1, diff.max() + 1, 100)
    intercept = math.log(lc / (1 - lc)) if 0 < lc < 1 else 0.0
    ax.plot(grid, sigmoid(intercept + slope * grid / scale), color="black")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("policy tokens - reference tokens")
    ax.set_ylabel("policy preferred (tie = 0.5)")
    return True
