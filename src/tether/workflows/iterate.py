"""``tether iterate``: iterative (online) DPO in rounds of sample -> judge -> pairs -> DPO.

Each round samples ``num_answers`` answers per prompt from the current model, ranks them with
the judge into pairs (``tether pairs mode=sample``), trains DPO on them (``tether train``) and
measures the new model's win-rate against the starting model on held-out prompts
(``tether eval``). The reference of round r is the model of round r−1 (``reference_mode=
previous``, as in iterative DPO, Xu et al. 2023) or stays the starting model (``fixed``).

    <output_dir>/round-N/{pairs.jsonl, config.yaml, metrics.jsonl, model/, eval/}
    <output_dir>/iterate.json     win-rate (and interval) of every round
    <output_dir>/winrate.png      win-rate by round
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tether.config import build_config
from tether.errors import DataError
from tether.eval.config import EvalConfig, JudgeConfig
from tether.fields import SEED_MAX, Checked, opt
from tether.io import make_dir, write_json

__all__ = ["IterateConfig", "iterate"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class IterateConfig(Checked, JudgeConfig):
    """Rounds of online DPO; the judge keys come from ``JudgeConfig``."""

    model: str = opt("", "starting model (e.g. the SFT model): round 1's policy and reference")
    data: str = opt("", "prompts answered and judged every round")
    eval_data: str = opt("", "held-out prompts for the win-rate against the starting model")
    output_dir: str = opt("runs/iterate", "where the rounds go")
    rounds: int = opt(2, "how many rounds", ge=1)
    reference_mode: Literal["previous", "fixed"] = opt(
        "previous", "reference of each round: the previous round's model, or the starting one"
    )
    num_answers: int = opt(4, "answers sampled per prompt", ge=2)
    temperature: float = opt(1.0, "sampling temperature for the answers", gt=0)
    max_new_tokens: int = opt(128, "tokens per answer (sampling and evaluation)", ge=1)
    pairing: Literal["best_vs_worst", "all"] = opt("best_vs_worst", "pairs per prompt")
    train: dict[str, Any] = opt(
        {}, "tether train keys for every round, e.g. train.lr=5e-6 train.epochs=2"
    )
    seed: int = opt(0, "seed (round r samples with seed + r)", ge=0, le=SEED_MAX)
    batch_size: int = opt(8, "generation batch size", ge=1)
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    cache_dir: str = opt("~/.cache/tether", "caches of reference log-probs and answers "
                         "($TETHER_CACHE replaces the default)")
    progress: bool = opt(True, "show progress bars")

    def problems(self) -> list[str]:
        out = [f"{k}: required" for k in ("model", "data", "eval_data") if not getattr(self, k)]
        if 0 <= self.seed <= SEED_MAX < self.seed + self.rounds:  # round r samples seed + r
            out.append(f"seed: seed + rounds must be <= {SEED_MAX}, got {self.seed} + "
                       f"{self.rounds}")
        return [*out, *JudgeConfig.problems(self)]


def _judge_keys(cfg: IterateConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(JudgeConfig)}


def iterate(cfg: IterateConfig) -> list[dict[str, Any]]:
    """Run the rounds; returns (and writes) the per-round win-rates."""
    from tether.eval.evaluate import evaluate
    from tether.training.loop import train
    from tether.workflows.pairs import sample

    out = make_dir(cfg.output_dir, "output_dir")
    _check(cfg, out)  # a typo in train.* or eval_data fails now, not after a round
    start, current, history = cfg.model, cfg.model, []
    for r in range(1, cfg.rounds + 1):
        here = out / f"round-{r}"
        log.info("round %d/%d: sampling from %s", r, cfg.rounds, current)
        stats = sample(_pairs_config(cfg, r, current, here))
        fixed = cfg.reference_mode == "fixed" and current != start
        run = train(_train_config(cfg, current, here, fixed))
        results = evaluate(_eval_config(cfg, run, here))
        history.append({"round": r, "pairs": stats["written"], "win_rate": results["win_rate"],
                        "ci95": results["ci95"], "wins": results["wins"],
                        "ties": results["ties"], "losses": results["losses"],
                        "n": results["n"], "model": str(run / "model")})
        log.info("round %d: win-rate %.3f against the starting model", r, results["win_rate"])
        write_json(out / "iterate.json", history)
        current = str(run / "model")
    _plot(history, out / "winrate.png")
    return history


def _check(cfg: IterateConfig, out: Path) -> None:
    """Build every round's configs (round 2's too: its train config gains reference_model
    under reference_mode=fixed) and read both prompt files, so every problem the rounds would
    meet is a one-line error before anything is sampled."""
    from tether.data.records import load_prompts

    here = out / "round-1"
    _pairs_config(cfg, 1, cfg.model, here)
    _train_config(cfg, cfg.model, here, fixed=False)
    if cfg.rounds > 1 and cfg.reference_mode == "fixed":
        _train_config(cfg, str(here / "model"), out / "round-2", fixed=True)
    _eval_config(cfg, here, here)
    for key in ("data", "eval_data"):
        if not load_prompts(getattr(cfg, key)):
            raise DataError(f"{key}: {getattr(cfg, key)} has no prompts; give a file of "
                            "prompt rows")


def _pairs_config(cfg: IterateConfig, r: int, current: str, here: Path) -> Any:
    from tether.workflows.pairs import PairsConfig

    return build_config(PairsConfig, {
        **_judge_keys(cfg), "mode": "sample", "data": cfg.data, "model": current,
        "num_answers": cfg.num_answers, "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens, "pairing": cfg.pairing,
        "seed": cfg.seed + r, "batch_size": cfg.batch_size, "device": cfg.device,
        "output": str(here / "pairs.jsonl"),
    }, where="iterate")


def _train_config(cfg: IterateConfig, current: str, here: Path, fixed: bool) -> Any:
    from tether.config import TrainConfig

    return build_config(TrainConfig, {
        # overwrite: round-N/ is iterate's own; a re-run redoes the round (new pairs above)
        "seed": cfg.seed, "device": cfg.device, "progress": cfg.progress, "overwrite": True,
        **cfg.train, "model": current, "data": str(here / "pairs.jsonl"), "output_dir": str(here),
        "cache_dir": cfg.cache_dir, **({"reference_model": cfg.model} if fixed else {}),
    }, where="iterate: train.")


def _eval_config(cfg: IterateConfig, run: Path, here: Path) -> EvalConfig:
    return build_config(EvalConfig, {
        **_judge_keys(cfg), "device": cfg.device, "progress": cfg.progress,
        "model": str(run), "reference": cfg.model, "data": cfg.eval_data,
        "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "batch_size": cfg.batch_size,
        "output_dir": str(here), "cache_dir": cfg.cache_dir, "implicit_reward": "off",
    }, where="iterate")


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    rates = [h["win_rate"] for h in history]
    low = [h["win_rate"] - h["ci95"][0] for h in history]
    high = [h["ci95"][1] - h["win_rate"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(rounds, rates, yerr=[low, high], marker="o", capsize=4)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="round", ylabel="win-rate vs starting model", ylim=(0, 1), xticks=rounds)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
