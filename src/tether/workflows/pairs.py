"""``tether pairs``: assemble (prompt, chosen, rejected) rows in tether's standard JSONL.

Modes:
- ``convert``: any format the data loader reads -> standard JSONL (validated, identical pairs
  dropped and counted, duplicates removed), each row carrying its provenance;
- ``sample``: k answers per prompt from a model (seeded), ranked by a judge, written as pairs;
- ``rewrite``: an OpenAI-compatible model rewrites an answer into a better and a worse one.

Output rows: ``{"prompt", "chosen", "rejected", "source", ...provenance}``; the writer is
atomic (temporary file, then rename) and never leaves a half-written output.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tether.data.records import Text, load_preferences, load_prompts
from tether.errors import DataError, JudgeError
from tether.eval.config import JudgeConfig
from tether.eval.judges.base import JudgeItem, Verdict
from tether.fields import SEED_MAX, Checked, opt
from tether.io import make_dir, write_text

__all__ = ["PairsConfig", "convert", "dedupe", "write_jsonl"]

log = logging.getLogger("tether")


@dataclass(frozen=True)
class PairsConfig(Checked, JudgeConfig):
    """What ``tether pairs`` reads; the judge keys come from ``JudgeConfig``."""

    mode: Literal["convert", "sample", "rewrite"] = opt("convert", "how pairs are made")
    data: str = opt("", "input: any data format (convert), prompts (sample), answers (rewrite)")
    output: str = opt("pairs.jsonl", "where the standard JSONL goes")
    data_format: Literal["auto", "standard", "conversational", "implicit"] = opt(
        "auto", "how input rows are read (convert)"
    )
    field_map: dict[str, str] = opt({}, "rename input fields, e.g. field_map.chosen=output")
    prompt_template: str | None = opt(None, "build prompts from fields, e.g. alpaca")
    split: str = opt("train", "split of a saved/hub dataset")
    max_prompts: int | None = opt(None, "use only the first N prompts (default: all)", ge=1)
    # --- sample: k answers per prompt from a model, ranked by the judge
    model: str = opt("", "sample: the model that answers (e.g. the SFT model)")
    num_answers: int = opt(4, "sample: answers per prompt (k >= 2)", ge=2)
    pairing: Literal["best_vs_worst", "all"] = opt(
        "best_vs_worst", "sample: one pair per prompt, or every pair the judge ordered"
    )
    max_new_tokens: int = opt(256, "sample: tokens per answer at most", ge=1)
    temperature: float = opt(1.0, "sample: sampling temperature (> 0)", ge=0)
    top_p: float = opt(1.0, "sample: nucleus sampling mass", gt=0, le=1)
    seed: int = opt(0, "sample: seed of the sampling", ge=0, le=SEED_MAX)
    batch_size: int = opt(8, "sample: prompts per generation batch", ge=1)
    chat_template: Literal["auto", "on", "off"] = opt("auto", "sample: use the chat template")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "model dtype")
    trust_remote_code: bool = opt(False, "allow model code from the hub (off unless you ask)")
    # --- rewrite: the judge_url/judge_model endpoint rewrites each answer two ways
    answer_field: str = opt("answer", "rewrite: the field holding the answer to rewrite")
    better: str = opt(
        "more helpful, correct, concise and polite", "rewrite: what the preferred version is"
    )
    worse: str = opt(
        "less helpful, rude or careless, on the same topic", "rewrite: what the dispreferred is"
    )

    def problems(self) -> list[str]:
        out = []
        if not self.data:
            out.append("data: required")
        if not self.output.endswith(".jsonl"):
            out.append(f"output: expected a .jsonl path, got {self.output!r}")
        if self.data and _same_file(self.data, self.output):
            out.append(f"output: {self.output} is the input data file; writing it would "
                       "replace the rows being read; choose another output")
        if self.mode == "sample":
            if not self.model:
                out.append("model: required for mode=sample (the model that answers)")
            if self.temperature <= 0:
                out.append(f"temperature: must be > 0 to sample different answers, "
                           f"got {self.temperature}")
            out.extend(JudgeConfig.problems(self))
        if self.mode == "rewrite" and (self.judge != "openai" or not self.judge_url):
            out.append("judge: mode=rewrite needs judge=openai with judge_url and judge_model "
                       "(the model that rewrites)")
        return out  # the numeric keys' ranges are declared on their fields


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (through links and relative paths)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.samefile(pb)
    return pa.resolve() == pb.resolve()


def _key(row: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True).encode()
    ).hexdigest()


def dedupe(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first of rows with the same (prompt, chosen, rejected); count the others."""
    seen: set[str] = set()
    out, dropped = [], 0
    for r in rows:
        k = _key(r)
        if k in seen:
            dropped += 1
            continue
        seen.add(k)
        out.append(r)
    return out, dropped


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    write_text(path, "".join(lines))
    return len(lines)


def convert(cfg: PairsConfig) -> dict[str, int]:
    """Import any supported format into standard JSONL with provenance."""
    records, report = load_preferences(
        cfg.data, data_format=cfg.data_format, field_map=cfg.field_map,
        prompt_template=cfg.prompt_template, split=cfg.split,
    )
    rows = [
        {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected,
         "source": r.source, "provenance": "convert"}
        for r in records
    ]
    rows, duplicates = dedupe(rows)
    if not rows:
        raise DataError(f"{cfg.data}: no pairs to write")
    n = write_jsonl(Path(cfg.output), rows)
    stats = {"read": report.rows, "identical_dropped": report.identical_dropped,
             "duplicates_dropped": duplicates, "written": n}
    log.info("pairs: %s -> %s: %s", cfg.data, cfg.output, stats)
    return stats


# --------------------------------------------------------------------------- sample


def sample(cfg: PairsConfig) -> dict[str, int]:
    """k seeded answers per prompt from ``cfg.model``, compared pairwise by the judge.

    Each answer scores its wins plus half its ties over the judged comparisons (unparsed ones
    left out). ``best_vs_worst`` writes (highest, lowest) per prompt; ``all`` every pair the
    judge ordered. Prompts whose answers all look the same to the judge give no pair.
    """
    from tether.data.tokenization import prompt_ids, use_chat
    from tether.eval.generate import Decoding, fit_to_context, generate
    from tether.eval.judges.registry import build_judge
    from tether.eval.judging import prompt_text
    from tether.model.loading import load_model, load_tokenizer, resolve_device, resolve_dtype

    judge = build_judge(cfg)  # first, so a bad judge setting fails before any generation
    prompts = load_prompts(cfg.data, field_map=cfg.field_map,
                           prompt_template=cfg.prompt_template, split=cfg.split)
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, field="model")
    model = load_model(cfg.model, dtype=resolve_dtype(cfg.dtype, device), device=device,
                       trust_remote_code=cfg.trust_remote_code)
    chat = use_chat(tokenizer, cfg.chat_template, isinstance(prompts[0].prompt, list))
    ids = [prompt_ids(tokenizer, p.prompt, chat, p.tools) for p in prompts]
    ids, truncated = fit_to_context(ids, [cfg.model], cfg.max_new_tokens, None,
                                    tokenizer.bos_token_id, cfg.trust_remote_code)
    if truncated:
        log.warning("%d of %d prompts did not fit the context window with max_new_tokens=%d "
                    "and lost their oldest tokens", truncated, len(prompts), cfg.max_new_tokens)
    decoding = Decoding(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.num_answers, cfg.seed)
    answers: list[list[str]] = [[] for _ in prompts]
    for g in generate(model, tokenizer, ids, decoding, cfg.batch_size):
        answers[g.prompt_index].append(g.text)
    del model  # the judge may be a model too

    texts = [prompt_text(p.prompt) for p in prompts]
    items, where = [], []
    for i, options in enumerate(answers):
        distinct = list(dict.fromkeys(a for a in options if a.strip()))
        answers[i] = distinct
        for a in range(len(distinct)):
            for b in range(a + 1, len(distinct)):
                orders = [(a, b)] if judge.deterministic else [(a, b), (b, a)]
                for x, y in orders:
                    items.append(JudgeItem(texts[i], distinct[x], distinct[y], prompts[i].row))
                    where.append((i, x, y))
    verdicts = judge.judge_many(items) if items else []
    beats = _combine_orders(where, verdicts)
    rows, no_difference = [], 0
    # One format per file, as TRL reads it: all conversational when any prompt is messages
    # (answers become assistant turns), else all plain text.
    conversational = any(isinstance(p.prompt, list) for p in prompts)
    for i, options in enumerate(answers):
        found = _pairs_for(options, beats.get(i, {}), cfg.pairing)
        if not found:
            no_difference += 1
        for best, worst, scores in found:
            rows.append({**_texts(prompts[i].prompt, options[best], options[worst],
                                  conversational), "source": prompts[i].source,
                         "provenance": "sample", "model": cfg.model, "judge": judge.identity,
                         "scores": {"chosen": scores[best], "rejected": scores[worst]}})
    rows, duplicates = dedupe(rows)
    if not rows:
        raise DataError(f"{cfg.data}: the judge saw no difference between any answers; "
                        "raise temperature or num_answers")
    n = write_jsonl(Path(cfg.output), rows)
    return {"prompts": len(prompts), "prompts_truncated": truncated,
            "no_difference": no_difference,
            "duplicates_dropped": duplicates, "judge_calls": len(items), "written": n}


def _texts(prompt: Text, chosen: str, rejected: str, conversational: bool) -> dict[str, Text]:
    """prompt/chosen/rejected in the file's one format (TRL's standard or conversational)."""
    if not conversational:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def _combine_orders(
    where: list[tuple[int, int, int]], verdicts: list[Verdict]
) -> dict[int, dict[tuple[int, int], str]]:
    """Per prompt, (lo, hi) -> "lo" | "hi" | "tie" (which answer won); orders must agree."""
    seen: dict[int, dict[tuple[int, int], list[str]]] = {}
    for (i, x, y), v in zip(where, verdicts, strict=True):
        if v.winner == "unparsed":
            continue
        lo, hi = min(x, y), max(x, y)
        winner = {"A": x, "B": y}.get(v.winner)
        seen.setdefault(i, {}).setdefault((lo, hi), []).append(
            "tie" if winner is None else ("lo" if winner == lo else "hi")
        )
    return {i: {k: (v[0] if len(set(v)) == 1 else "tie") for k, v in d.items()}
            for i, d in seen.items()}


def _pairs_for(
    options: list[str], beats: dict[tuple[int, int], str], pairing: str
) -> list[tuple[int, int, dict[int, float]]]:
    score = {k: 0.0 for k in range(len(options))}
    for (lo, hi), outcome in beats.items():
        score[lo] += {"lo": 1.0, "hi": 0.0, "tie": 0.5}[outcome]
        score[hi] += {"lo": 0.0, "hi": 1.0, "tie": 0.5}[outcome]
    if pairing == "all":
        return [((lo, hi) if o == "lo" else (hi, lo)) + (score,)
                for (lo, hi), o in beats.items() if o != "tie"]
    if len(score) < 2 or max(score.values()) == min(score.values()):
        return []
    best = max(score, key=lambda k: score[k])
    worst = min(score, key=lambda k: score[k])
    return [(best, worst, score)]


# --------------------------------------------------------------------------- rewrite


def rewrite(cfg: PairsConfig) -> dict[str, int]:
    """A stronger model behind an OpenAI-compatible endpoint rewrites each answer into a
    better and a worse version (Raschka's recipe, with a local model served by Ollama)."""
    from tether.eval.judges.registry import build_judge
    from tether.eval.judging import prompt_text
    from tether.eval.redact import redact_url

    client = build_judge(cfg)
    if not hasattr(client, "request"):
        raise JudgeError("judge: mode=rewrite needs judge=openai")
    prompts = load_prompts(cfg.data, field_map=cfg.field_map,
                           prompt_template=cfg.prompt_template, split=cfg.split)
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts
    rows, failed = [], 0
    for p in prompts:
        answer = p.row.get(cfg.answer_field)
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{p.source}: field '{cfg.answer_field}' must be a non-empty "
                            "string (set answer_field=)")
        better, worse = (_rewrite_once(client, cfg, prompt_text(p.prompt), answer, how)
                         for how in (cfg.better, cfg.worse))
        if better is None or worse is None or better == worse:
            failed += 1
            continue
        rows.append({"prompt": p.prompt, "chosen": better, "rejected": worse,
                     "source": p.source, "provenance": "rewrite",
                     "judge": client.identity, "original": answer})
    rows, duplicates = dedupe(rows)
    if not rows:
        raise JudgeError(f"{redact_url(cfg.judge_url)}: no rewrite succeeded ({failed} failed)")
    n = write_jsonl(Path(cfg.output), rows)
    return {"prompts": len(prompts), "failed": failed, "duplicates_dropped": duplicates,
            "written": n}


REWRITE_PROMPT = (
    "Here is a request and an answer to it.\n\nRequest:\n{prompt}\n\nAnswer:\n{answer}\n\n"
    "Rewrite the answer so that it is {how}. Reply with the rewritten answer only."
)


def _rewrite_once(client: Any, cfg: PairsConfig, prompt: str, answer: str, how: str) -> str | None:
    body = {"model": cfg.judge_model, "temperature": cfg.judge_temperature,
            "max_tokens": max(cfg.judge_max_tokens, 512),
            "messages": [{"role": "user", "content": REWRITE_PROMPT.format(
                prompt=prompt, answer=answer, how=how)}]}
    data, _ = client.request(body)
    if data is None:
        return None
    text = data["choices"][0]["message"].get("content")
    return text.strip() if isinstance(text, str) and text.strip() else None


def run(cfg: PairsConfig) -> dict[str, int]:
    """Dispatch on ``cfg.mode`` (after checking the output can be written: sampling is slow)."""
    make_dir(Path(cfg.output).expanduser().parent, "output")
    return MODES[cfg.mode](cfg)


MODES = {"convert": convert, "sample": sample, "rewrite": rewrite}
