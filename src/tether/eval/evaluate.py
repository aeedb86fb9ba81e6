"""``evaluate(cfg)``: the trained model against its reference on held-out prompts.

Steps, each in its own module: load prompts -> answers from both models with the same prompt
ids and decoding (generate.py, cached) -> a judge compares every pair, in both orders when it is
not deterministic (judging.py, cached in SQLite) -> statistics (stats.py, summary.py) ->
``<run>/eval/results.json``, ``judgments.jsonl``, ``report.md``, ``plots/`` (report.py). The
implicit-reward accuracy on held-out preference rows (implicit.py) needs no judge.

Models are loaded one at a time, and not at all when their answers are cached and no implicit
reward is asked for.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from tether.config import build_config, save_config
from tether.data.memory import dataset_name, registered
from tether.data.records import PreferenceRecord, PromptRecord, load_preferences, load_prompts
from tether.data.tokenization import (
    Chat,
    TokenizedPair,
    prompt_ids,
    tokenize_records,
    use_chat,
)
from tether.errors import ConfigError, JudgeError, ModelError
from tether.eval.cache import JudgmentCache
from tether.eval.config import EvalConfig
from tether.eval.generate import (
    Decoding,
    Generation,
    GenerationCache,
    fit_to_context,
    generate,
)
from tether.eval.hashing import weights_hash
from tether.eval.implicit import implicit_reward_stats, pair_logps
from tether.eval.judges.registry import build_judge
from tether.eval.judging import Pair, PairJudgment, judge_pairs, prompt_text
from tether.eval.redact import redact_url
from tether.eval.report import summary_lines, write_plots, write_report
from tether.eval.summary import clean, judgment_lines, win_rate_results
from tether.io import cache_root, make_dir, write_json, write_text
from tether.locking import recover_when_idle
from tether.model.card import write_eval_section
from tether.model.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from tether.tracking import report_eval

__all__ = ["evaluate"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class _Paths:
    model: str  # the trained model itself (a directory or hub id)
    reference: str
    out: Path  # <run>/eval
    run_config: dict[str, Any]


def _read_run_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _resolve_paths(cfg: EvalConfig) -> _Paths:
    """A run directory means run/model; the reference defaults to the run's starting model.
    A checkpoint of a run (run/checkpoints/step-N) is a model too; its eval goes to
    run/eval/step-N."""
    given = Path(cfg.model).expanduser()
    for model_dir in (given / "model", given):  # a save killed half-way: finish it first
        recover_when_idle(model_dir)
    run: Path | None = None
    model, sub = cfg.model, ""
    if (given / "model" / "config.json").is_file():
        run, model = given, str(given / "model")
    elif (given / "config.json").is_file():
        model = str(given)
        if given.name == "model" and (given.parent / "config.yaml").is_file():
            run = given.parent
        elif given.parent.name == "checkpoints" and (given.parents[1] / "config.yaml").is_file():
            run, sub = given.parents[1], given.name
    elif given.exists():
        raise ConfigError(
            f"model: {cfg.model} has neither config.json nor model/config.json; pass a model "
            "directory or a run directory written by tether train"
        )
    run_config = _read_run_config(run) if run is not None else {}
    reference = cfg.reference or str(run_config.get("model") or "")
    if not reference:
        raise ConfigError(
            "reference: required (the model training started from); it defaults to the `model` "
            "of the run's config.yaml, but there is none here"
        )
    if cfg.output_dir:
        out = Path(cfg.output_dir).expanduser() / "eval"
    elif run is not None:
        out = run / "eval" / sub if sub else run / "eval"
    else:
        raise ConfigError(
            f"output_dir: required when model ({cfg.model}) is not a run directory; "
            "e.g. output_dir=runs/eval-1"
        )
    return _Paths(model, reference, out, run_config)


def _preference_records(cfg: EvalConfig, prompts: Sequence[PromptRecord]) -> list[PreferenceRecord]:
    """Held-out pairs for the implicit reward, when the data rows have chosen and rejected."""
    if cfg.implicit_reward == "off" or not prompts:
        return []
    sources = {cfg.field_map.get(k, k) for k in ("chosen", "rejected")}
    has_pairs = sources <= set(prompts[0].row)
    if not has_pairs:
        if cfg.implicit_reward == "on":
            raise ConfigError(
                f"implicit_reward: on, but {prompts[0].source} has no chosen/rejected fields; "
                "use preference rows or implicit_reward=off"
            )
        return []
    records, _ = load_preferences(
        cfg.data, field_map=cfg.field_map, prompt_template=cfg.prompt_template, split=cfg.split
    )
    return records[: cfg.max_prompts] if cfg.max_prompts else records


@dataclass
class _Side:
    """What one model contributes: its answers and its log-probs of the held-out pairs."""

    generations: list[Generation]
    logps: tuple[torch.Tensor, torch.Tensor] | None


def _run_model(
    cfg: EvalConfig,
    role: str,
    path: str,
    tokenizer: Any,
    ids: list[list[int]],
    pair_rows: list[TokenizedPair],
    want_answers: bool,
) -> _Side:
    decoding = Decoding(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.num_samples, cfg.seed)
    cache_dir = cache_root(cfg.cache_dir)
    cache = GenerationCache(cache_dir / "generations" if cfg.cache else None)
    device = resolve_device(cfg.device)
    model = None
    key = None
    generations = None
    if want_answers and Path(path).expanduser().is_dir():
        # A local directory is hashed without loading it: cached answers cost no model load.
        key = cache.key(weights_hash(path, memo_dir=cache_dir), ids, decoding)
        generations = cache.get(key)
        if generations is not None:
            log.info("%s: %d answers from the cache", role, len(generations))
    if (want_answers and generations is None) or pair_rows:
        model = load_model(
            path, dtype=resolve_dtype(cfg.dtype, device), device=device,
            trust_remote_code=cfg.trust_remote_code,
        )
    if want_answers and generations is None:
        assert model is not None
        if key is None:
            key = cache.key(weights_hash(path, model=model), ids, decoding)
            generations = cache.get(key)
        if generations is None:
            bar = tqdm(total=len(ids) * cfg.num_samples, desc=f"generate ({role})",
                       disable=not cfg.progress, leave=False)
            generations = generate(model, tokenizer, ids, decoding, cfg.batch_size, bar.update)
            bar.close()
            cache.put(key, generations)
    logps = None
    if pair_rows:
        assert model is not None
        logps = pair_logps(model, pair_rows, tokenizer.pad_token_id, cfg.batch_size)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _Side(generations or [], logps)


def _check_tokenizers(tokenizer: Any, reference: str, ids: list[list[int]], prompts: Any,
                      chat: Chat, trust: bool) -> None:
    """Both models are fed the same ids: their vocabularies must agree."""
    if not (Path(reference).expanduser() / "tokenizer_config.json").is_file():
        return
    other = load_tokenizer(reference, trust)
    first = prompt_ids(other, prompts[0].prompt, chat, prompts[0].tools)
    same = len(other) == len(tokenizer) and first == ids[0]
    if not same:
        raise ModelError(
            f"reference: {reference}'s tokenizer differs from the trained model's "
            f"({len(other)} vs {len(tokenizer)} tokens); both must share one tokenizer"
        )


def evaluate(
    config: EvalConfig | Mapping[str, Any], *, eval_dataset: Any = None
) -> dict[str, Any]:
    """Write ``<run>/eval/{results.json, judgments.jsonl, report.md, plots/}``; return results.

    ``config``: an ``EvalConfig`` or a dict of its keys. ``eval_dataset``: held-out rows in
    memory (a ``datasets.Dataset``, a ``DatasetDict``'s ``split``, a list of dicts) in place of
    ``data``, recorded as ``<in-memory Dataset, N rows, sha256 ...>``.
    """
    raw = dict(config) if isinstance(config, Mapping) else asdict(config)
    if eval_dataset is None:
        cfg = config if isinstance(config, EvalConfig) else build_config(EvalConfig, raw)
        return _evaluate(cfg)
    name, rows = dataset_name(eval_dataset, str(raw.get("split", "train")), "eval_dataset")
    with registered({name: rows}):
        return _evaluate(build_config(EvalConfig, {**raw, "data": name}))


def _evaluate(cfg: EvalConfig) -> dict[str, Any]:
    paths = _resolve_paths(cfg)
    make_dir(paths.out, "output_dir")  # a read-only place fails before any generation
    # The config as it ran, less any user:password in judge_url (the API key is never in it).
    save_config(replace(cfg, judge_url=redact_url(cfg.judge_url)), paths.out / "config.yaml")
    tokenizer = load_tokenizer(cfg.tokenizer or paths.model, cfg.trust_remote_code)
    prompts = load_prompts(cfg.data, field_map=cfg.field_map,
                           prompt_template=cfg.prompt_template, split=cfg.split)
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts
    chat = use_chat(tokenizer, cfg.chat_template, isinstance(prompts[0].prompt, list),
                    cfg.chat_template_kwargs)
    ids = [prompt_ids(tokenizer, p.prompt, chat, p.tools) for p in prompts]
    _check_tokenizers(tokenizer, paths.reference, ids, prompts, chat, cfg.trust_remote_code)
    ids, truncated = fit_to_context(ids, [paths.model, paths.reference], cfg.max_new_tokens,
                                    cfg.max_prompt_length, tokenizer.bos_token_id,
                                    cfg.trust_remote_code)
    records = _preference_records(cfg, prompts)
    pair_rows: list[TokenizedPair] = []
    if records:
        pair_rows, _ = tokenize_records(tokenizer, records, chat=chat, max_length=cfg.max_length)
    judging = cfg.judge != "none"
    memo = cache_root(cfg.cache_dir)
    # Build the judge before generating, so a typo fails in a second, except a reward model:
    # it would sit in memory next to the models being generated from.
    early = judging and cfg.judge != "reward_model"
    judge = build_judge(cfg, memo) if early else None
    policy = _run_model(cfg, "policy", paths.model, tokenizer, ids, pair_rows, judging)
    reference = _run_model(cfg, "reference", paths.reference, tokenizer, ids, pair_rows, judging)
    if judging and judge is None:
        judge = build_judge(cfg, memo)
    results, lines, judged = _win_rate(cfg, judge, prompts, policy, reference)
    beta = cfg.beta or float(paths.run_config.get("beta") or 0.1)
    implicit = None
    if policy.logps is not None and reference.logps is not None:
        implicit = implicit_reward_stats(policy.logps, reference.logps, beta)
    results.update({
        "judge_kind": cfg.judge,
        "implicit_reward": implicit,
        "prompts": len(prompts),
        "prompts_truncated": truncated,
        "warnings": results.get("warnings", []) + ([
            f"{truncated} of {len(prompts)} prompts did not fit the context window with "
            f"max_new_tokens={cfg.max_new_tokens} and lost their oldest tokens"
        ] if truncated else []),
        "num_samples": cfg.num_samples,
        "decoding": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                     "top_p": cfg.top_p, "seed": cfg.seed, "chat_template": chat},
        "bootstrap_samples": cfg.bootstrap_samples,
        "models": {"policy": paths.model, "reference": paths.reference},
        "data": cfg.data,
    })
    results = clean(results)
    _write(paths.out, results, lines, judged, policy.generations, reference.generations)
    if write_eval_section(Path(paths.model) / "README.md", results):  # the model card's
        log.info("eval section of %s/README.md rewritten", paths.model)
    report_eval(paths.out.parent, results, paths.run_config)  # the run's trackers, report.md
    for line in summary_lines(results):
        print(line)
    print(f"results: {paths.out / 'results.json'}  report: {paths.out / 'report.md'}")
    return results


# judge=none: the documented keys are still there, empty.
_NO_JUDGE: dict[str, Any] = {
    "win_rate": None, "ci95": [None, None], "wilson95": [None, None], "wins": 0, "ties": 0,
    "losses": 0, "unparsed": 0, "n": 0, "pairs": 0, "lc_win_rate": None, "lc_ci95": [None, None],
    "sc_win_rate": None, "sc_ci95": [None, None], "groups": {}, "regressed_groups": [],
    "lost_capabilities": None,
    "order_flip_rate": None, "lengths": None, "judge": None, "template_hash": None,
}


def _win_rate(
    cfg: EvalConfig, judge: Any, prompts: Sequence[PromptRecord], policy: _Side, reference: _Side
) -> tuple[dict[str, Any], list[dict[str, Any]], list[PairJudgment]]:
    """(results, judgments.jsonl lines, judged pairs); all empty for judge=none."""
    if judge is None:
        return {**_NO_JUDGE, "warnings": []}, [], []
    try:
        judged = _judge(cfg, judge, prompts, policy.generations, reference.generations)
    finally:
        close = getattr(judge, "close", None)
        if callable(close):
            close()
    _require_verdicts(judged)
    results = win_rate_results(
        judged, policy.generations, reference.generations,
        bootstrap_samples=cfg.bootstrap_samples, seed=cfg.seed,
        length_warning_ratio=cfg.length_warning_ratio,
    )
    results["lost_capabilities"] = _lost_capabilities(judge, judged)
    template_hash = str(getattr(judge, "template_hash", ""))
    results["judge"] = judge.identity
    results["template_hash"] = template_hash or None
    results["warnings"] = _warnings(results)
    lines = judgment_lines(judged, policy.generations, judge.identity, template_hash)
    return results, lines, judged


def _lost_capabilities(judge: Any, judged: Sequence[PairJudgment]) -> dict[str, Any] | None:
    """With a scoring rule (a ground truth: 1 = correct), the prompts the reference answered
    correctly and the policy did not: what preference training cost (DPO shapes preferences,
    it does not teach skills). None for judges that do not score single answers."""
    score = getattr(judge, "score", None)
    if not callable(score) or getattr(judge, "arity", 3) == 4:
        return None
    lost, right = [], 0
    for j in judged:
        p = j.pair
        ref_score = score(p.prompt, p.reference, p.row)
        if ref_score is None or ref_score < 0.5:
            continue
        right += 1
        policy_score = score(p.prompt, p.policy, p.row)
        if policy_score is not None and policy_score < 0.5:
            lost.append({"prompt": p.prompt, "policy": p.policy, "reference": p.reference})
    return {"reference_correct": right, "lost": len(lost), "examples": lost[:20]}


def _require_verdicts(judged: Sequence[PairJudgment]) -> None:
    """A judge that answered no call (server down, bad model name, nobody voted yet) leaves
    only the identical pairs' ties, which read as a 50 % win-rate: refuse that number, and
    keep the previous eval/ results as they are."""
    calls = [c for j in judged for c in j.calls if c.source != "identical"]
    if not calls or any(c.verdict.winner != "unparsed" for c in calls):
        return
    first = next((c.verdict.error or c.verdict.raw for c in calls
                  if c.verdict.error or c.verdict.raw), "")
    reason = f" (first: {first.splitlines()[0][:160]!r})" if first.strip() else ""
    raise JudgeError(
        f"no verdicts: none of the {len(calls)} judge calls gave one{reason}, so there is no "
        "win-rate; eval/ results are unchanged. Fix the judge (judge=human: wait for votes) "
        "and run again"
    )


def _judge(cfg: EvalConfig, judge: Any, prompts: Sequence[PromptRecord],
           policy: Sequence[Generation], reference: Sequence[Generation]) -> list[PairJudgment]:
    if len(policy) != len(reference):  # both lists are prompt-major, sample-minor
        raise AssertionError("policy and reference answer counts differ")
    pairs = [
        Pair(k, p.prompt_index, prompt_text(prompts[p.prompt_index].prompt), p.text, r.text,
             prompts[p.prompt_index].row)
        for k, (p, r) in enumerate(zip(policy, reference, strict=True))
    ]
    both = None if cfg.both_orders == "auto" else cfg.both_orders == "on"
    db = cache_root(cfg.cache_dir) / "judgments.sqlite" if cfg.cache else None
    bar = tqdm(desc="judge", disable=not cfg.progress, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with JudgmentCache(db) as cache:
            return judge_pairs(judge, pairs, cache, both_orders=both, announce=print,
                               chunk_size=max(16, 4 * cfg.concurrency), on_progress=progress)
    finally:
        bar.close()


def _warnings(results: dict[str, Any]) -> list[str]:
    out = []
    length_warning = (results.get("lengths") or {}).get("warning")
    if length_warning:
        out.append(length_warning)
    lost = results.get("lost_capabilities") or {}
    if lost.get("lost"):
        first = lost["examples"][0]
        out.append(f"{lost['lost']} of {lost['reference_correct']} prompts the reference answered "
                   f"correctly are wrong for the policy (lost capabilities), e.g. "
                   f"{first['prompt'][:60]!r}: {first['policy'][:60]!r}")
    for g in results.get("regressed_groups") or []:
        v = results["groups"][g]
        out.append(f"group '{g}' regressed: win-rate {v['win_rate']:.1%} with its whole 95% "
                   f"interval below 50% (n={v['n']})")
    if results["unparsed"]:
        first = (results.get("unparsed_examples") or [""])[0]
        out.append(
            f"{results['unparsed']} of {results['pairs']} pairs unparsed (excluded); "
            f"first: {str(first)[:160]!r}"
        )
    cut = results["finish_reasons"]
    for role in ("policy", "reference"):
        total = cut[role]["stop"] + cut[role]["length"]
        if total and cut[role]["length"] / total > 0.2:
            out.append(
                f"{cut[role]['length']} of {total} {role} answers hit max_new_tokens "
                "(cut short); consider a larger max_new_tokens"
            )
    return out


def _write(out: Path, results: dict[str, Any], lines: list[dict[str, Any]],
           judged: list[PairJudgment],
           policy: Sequence[Generation], reference: Sequence[Generation]) -> None:
    write_json(out / "results.json", results)
    write_text(out / "judgments.jsonl",
               "".join(json.dumps(clean(line), ensure_ascii=False) + "\n" for line in lines))
    plots = write_plots(out / "plots", results, judged, policy, reference) if judged else []
    write_report(out / "report.md", results, judged, plots)
    write_text(
        out / "answers.jsonl",
        "".join(
            json.dumps({"prompt_index": p.prompt_index, "sample": p.sample, "policy": p.text,
                        "reference": r.text, "policy_tokens": p.tokens,
                        "reference_tokens": r.tokens, "policy_finish": p.finish_reason,
                        "reference_finish": r.finish_reason}, ensure_ascii=False) + "\n"
            for p, r in zip(policy, reference, strict=True)
        ),
    )

