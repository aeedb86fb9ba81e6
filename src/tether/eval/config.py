"""``EvalConfig``: everything ``tether eval`` / ``tether.evaluate`` reads. Flat keys users type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tether.fields import SEED_MAX, Checked, opt

__all__ = ["EvalConfig", "JudgeConfig"]


@dataclass(frozen=True)
class JudgeConfig:
    """The judge keys, shared by ``tether eval`` and ``tether pairs mode=sample``."""

    # --- judge
    judge: str = opt("rule", "a registered judge: rule, reward_model, openai, human, or one added "
                     "with register_judge; none: implicit reward only")
    judge_rule: str = opt("", "judge=rule: module:function, e.g. tether.eval.rules:exact_answer")
    judge_rule_args: dict[str, str] = opt(
        {}, "judge=rule: keyword arguments, e.g. judge_rule_args.field=label"
    )
    judge_db: str = opt("label.db", "human: the labeling database `tether label --db` serves")
    judge_wait: float = opt(
        0.0, "human: seconds to wait for votes (0: read what is there)", ge=0
    )
    judge_model: str = opt("", "reward model dir (reward_model) or served model name (openai)")
    judge_url: str = opt(
        "", "judge=openai: base URL, e.g. http://127.0.0.1:11434/v1 (user:password@ in it is "
        "sent as Basic auth and redacted everywhere)"
    )
    judge_api_key_env: str = opt(
        "OPENAI_API_KEY",
        "environment variable holding the judge's API key (redacted from all output, replies too)",
    )
    judge_temperature: float = opt(
        0.0, "judge=openai: sampling temperature of the judge", ge=0
    )
    judge_max_tokens: int = opt(16, "judge=openai: tokens the judge may answer with", ge=1)
    judge_logprobs: bool = opt(True, "judge=openai: ask for log-probs to get p(A)")
    judge_timeout: float = opt(
        60.0, "judge=openai: seconds per request, reply included (still arriving then: cut off)",
        gt=0, le=86400,
    )
    judge_max_response_bytes: int = opt(
        4 * 1024 * 1024, "judge=openai: bytes of one reply read at most; a bigger one is unparsed",
        ge=1,
    )
    judge_retries: int = opt(
        4, "judge=openai: retries on 429, 5xx, timeouts, broken replies", ge=0
    )
    judge_backoff: float = opt(
        1.0, "judge=openai: first retry delay in seconds (doubles)", ge=0
    )
    judge_usd_per_million_tokens: float = opt(
        0.0, "judge=openai: price, for the cost estimate printed before judging", ge=0
    )
    both_orders: Literal["auto", "on", "off"] = opt(
        "auto", "show each pair in both orders (auto: for judges that are not deterministic)"
    )
    concurrency: int = opt(4, "judge requests in flight at once", ge=1)
    request_budget: int | None = opt(
        None, "judge=openai: at most this many HTTP requests", ge=1
    )

    def problems(self) -> list[str]:
        from tether.eval.judges.registry import judge_problems  # registry -> judges -> config

        return judge_problems(self)  # the numeric keys' ranges are declared on their fields


@dataclass(frozen=True)
class EvalConfig(Checked, JudgeConfig):
    """Win-rate of the trained model over its reference on held-out prompts.

    The judge keys (judge, judge_rule, judge_url, ...) come from ``JudgeConfig``.
    """

    # --- what to compare, on what, where to write
    model: str = opt("", "trained model: a run directory (its model/ is used) or a model dir")
    reference: str = opt(
        "", "reference model (default: the `model` key of the run directory's config.yaml)"
    )
    tokenizer: str | None = opt(
        None, "tokenizer for both models' prompts (default: the trained model's)"
    )
    data: str = opt("", "held-out prompts: prompt-only or preference rows, any format tether reads")
    split: str = opt("train", "split to read from a saved/hub dataset")
    field_map: dict[str, str] = opt({}, "rename fields, e.g. field_map.prompt=question")
    prompt_template: str | None = opt(None, "build the prompt from fields, e.g. '{instruction}'")
    chat_template: Literal["auto", "on", "off"] = opt(
        "auto", "use the tokenizer's chat template (auto: when it has one and rows are messages)"
    )
    chat_template_kwargs: dict[str, Any] = opt(
        {}, "keyword arguments for the chat template, e.g. chat_template_kwargs.enable_thinking="
        "false (Qwen 3)"
    )
    max_prompts: int | None = opt(
        None, "evaluate only the first N prompts (default: all)", ge=1
    )
    output_dir: str = opt("", "run directory to write eval/ into (default: the model's run dir)")

    # --- generation (identical for both models)
    max_new_tokens: int = opt(256, "tokens generated per answer at most", ge=1)
    max_prompt_length: int | None = opt(
        None, "prompt tokens at most; longer prompts lose their oldest tokens (default: the "
        "context window minus max_new_tokens)", ge=1
    )
    temperature: float = opt(0.0, "sampling temperature; 0 = greedy", ge=0)
    top_p: float = opt(1.0, "nucleus sampling mass (with temperature > 0)", gt=0, le=1)
    num_samples: int = opt(
        1, "answers per prompt and model (needs temperature > 0 when > 1)", ge=1
    )
    seed: int = opt(0, "seed of sampling and of the bootstrap", ge=0, le=SEED_MAX)
    batch_size: int = opt(8, "prompts per generation / scoring batch", ge=1)

    # --- statistics
    bootstrap_samples: int = opt(2000, "bootstrap resamples of the prompts (>= 2000)", ge=2000)
    length_warning_ratio: float = opt(
        1.5, "warn when the trained model's answers are this many times longer on average",
        gt=1,
    )

    # --- implicit reward on held-out pairs (no generation)
    implicit_reward: Literal["auto", "on", "off"] = opt(
        "auto", "implicit-reward accuracy on preference rows (auto: when data has them)"
    )
    beta: float | None = opt(
        None, "β of the implicit reward (default: the run's, else 0.1)", gt=0
    )
    max_length: int = opt(
        1024, "prompt + answer tokens scored for the implicit reward", ge=1
    )

    # --- runtime
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "dtype of both models: auto = float32 on CPU, bfloat16 on GPUs that support it"
    )
    trust_remote_code: bool = opt(False, "allow model code from the hub (off unless you ask)")
    cache_dir: str = opt("~/.cache/tether", "where answers, judgments and weight hashes are cached "
                         "($TETHER_CACHE replaces the default)")
    cache: bool = opt(True, "reuse cached answers and judgments (false: recompute everything)")
    progress: bool = opt(True, "show progress bars")

    def problems(self) -> list[str]:
        """Value checks that types alone cannot express (ranges are declared on the fields)."""
        out = []
        if not self.model:
            out.append("model: required (the trained model or its run directory)")
        if not self.data:
            out.append("data: required (held-out prompts or preference rows)")
        out.extend(JudgeConfig.problems(self))
        if self.judge == "none" and self.implicit_reward == "off":
            out.append("judge: none with implicit_reward=off leaves nothing to evaluate")
        if self.num_samples > 1 and self.temperature == 0:
            out.append(
                f"num_samples: {self.num_samples} greedy answers would be identical; "
                "set temperature > 0 (e.g. 0.7) or num_samples=1"
            )
        return out
