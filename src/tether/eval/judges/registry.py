"""Judge names in the config -> judge objects. Another package adds one with ``register_judge``.

``human`` puts the pairs into the labeling page's database (``judge_db``) and reads people's
votes from it (``tether label --db <same file>`` serves the page).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tether.errors import JudgeError
from tether.eval.config import JudgeConfig
from tether.eval.judges.base import Judge

__all__ = ["JUDGES", "build_judge", "register_judge"]

JudgeBuilder = Callable[[JudgeConfig, Path | None], Judge]
JUDGES: dict[str, JudgeBuilder] = {}


def register_judge(name: str) -> Callable[[JudgeBuilder], JudgeBuilder]:
    """Make ``judge=name`` build a judge with ``builder(cfg, memo_dir)``."""

    def add(builder: JudgeBuilder) -> JudgeBuilder:
        JUDGES[name] = builder
        return builder

    return add


def build_judge(cfg: JudgeConfig, memo_dir: Path | None = None) -> Judge:
    builder = JUDGES.get(cfg.judge)
    if builder is None:
        raise JudgeError(f"judge: unknown '{cfg.judge}'; valid: {', '.join(sorted(JUDGES))}")
    return builder(cfg, memo_dir)


@register_judge("human")
def _human(cfg: JudgeConfig, memo_dir: Path | None) -> Judge:
    from tether.ui.human_judge import HumanJudge

    return HumanJudge(cfg.judge_db, wait_s=cfg.judge_wait)


@register_judge("rule")
def _rule(cfg: JudgeConfig, memo_dir: Path | None) -> Judge:
    from tether.eval.judges.rule import RuleJudge

    return RuleJudge(cfg.judge_rule, cfg.judge_rule_args)


@register_judge("reward_model")
def _reward_model(cfg: JudgeConfig, memo_dir: Path | None) -> Judge:
    from tether.eval.judges.reward_model import RewardModelJudge
    from tether.modeling import resolve_device

    return RewardModelJudge(
        cfg.judge_model,
        # runtime keys of the config that carries the judge keys (eval's or pairs')
        device=resolve_device(getattr(cfg, "device", "auto")),
        batch_size=getattr(cfg, "batch_size", 8),
        trust_remote_code=getattr(cfg, "trust_remote_code", False),
        memo_dir=memo_dir,
    )


@register_judge("openai")
def _openai(cfg: JudgeConfig, memo_dir: Path | None) -> Judge:
    from tether.eval.judges.openai import OpenAIJudge

    return OpenAIJudge(
        cfg.judge_url,
        cfg.judge_model,
        api_key_env=cfg.judge_api_key_env,
        temperature=cfg.judge_temperature,
        max_tokens=cfg.judge_max_tokens,
        logprobs=cfg.judge_logprobs,
        timeout=cfg.judge_timeout,
        max_response_bytes=cfg.judge_max_response_bytes,
        retries=cfg.judge_retries,
        backoff=cfg.judge_backoff,
        concurrency=cfg.concurrency,
        request_budget=cfg.request_budget,
        usd_per_million_tokens=cfg.judge_usd_per_million_tokens,
    )
