"""Answers from the policy and the reference: same prompt token ids, same decoding, cached.

Prompts are left-padded into batches so every row's last prompt token sits in the final
column and ``generate`` continues all rows together with the KV cache. The decoding settings are
passed explicitly and override whatever a model's generation_config.json says (a
repetition penalty or top-k in one model's file must not make the comparison unfair). Sampling
is seeded per batch, so both models draw with the same seeds.

Answers are cached on disk keyed by the weights' hash, the prompt ids and the decoding settings:
evaluating a new checkpoint against the same reference does not regenerate the reference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import GenerationConfig

from tether.errors import ConfigError
from tether.eval.hashing import digest
from tether.io import make_dir, write_json
from tether.model.loading import context_window  # re-exported: eval reads it from here

__all__ = [
    "Decoding", "Generation", "GenerationCache", "context_window", "fit_prompts", "fit_to_context",
    "generate", "stop_ids",
]


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def config(self, pad_id: int, eos_ids: list[int]) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.sampling,
            temperature=self.temperature if self.sampling else 1.0,
            top_p=self.top_p if self.sampling else 1.0,
            top_k=0,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            use_cache=True,
        )


@dataclass(frozen=True)
class Generation:
    """One answer. ``tokens`` counts the answer's tokens, not the EOS that ended it."""

    prompt_index: int
    sample: int
    text: str
    tokens: int
    finish_reason: Literal["stop", "length"]


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's generation EOS ids (chat models often have two)."""
    ids = [tokenizer.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra]
    return sorted({int(i) for i in ids if i is not None})


def fit_to_context(
    prompts: Sequence[list[int]], models: Sequence[str], max_new_tokens: int,
    max_prompt_length: int | None = None, bos_id: int | None = None,
    trust_remote_code: bool = False,
) -> tuple[list[list[int]], int]:
    """Prompts cut (``fit_prompts``) so that prompt + ``max_new_tokens`` fits the smallest context
    window of ``models``, and to ``max_prompt_length`` when given; returns them and how many
    were cut. A window too small for ``max_new_tokens`` itself is a ConfigError."""
    windows = [w for w in (context_window(m, trust_remote_code) for m in models) if w]
    limits = [] if max_prompt_length is None else [max_prompt_length]
    if windows:
        if min(windows) - max_new_tokens < 1:
            raise ConfigError(
                f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the "
                f"{min(windows)}-token context window of the model; lower max_new_tokens"
            )
        limits.append(min(windows) - max_new_tokens)
    return fit_prompts(prompts, min(limits) if limits else None, bos_id)


def fit_prompts(
    prompts: Sequence[list[int]], limit: int | None, bos_id: int | None = None
) -> tuple[list[list[int]], int]:
    """Prompts cut to ``limit`` tokens by dropping their oldest tokens (the end of a prompt, with
    the question and the generation prompt, is what the answer follows); a leading BOS stays.
    Returns the prompts and how many were cut."""
    if limit is None:
        return [list(p) for p in prompts], 0
    out, cut = [], 0
    for p in prompts:
        if len(p) <= limit:
            out.append(list(p))
            continue
        cut += 1
        keep_bos = bos_id is not None and p[0] == bos_id and limit > 1
        out.append([p[0], *p[len(p) - limit + 1:]] if keep_bos else list(p[len(p) - limit:]))
    return out, cut


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask  # (B, T) each


def _finish(new: list[int], eos: set[int]) -> tuple[list[int], Literal["stop", "length"]]:
    for i, t in enumerate(new):
        if t in eos:
            return new[:i], "stop"
    return new, "length"


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    decoding: Decoding,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """``num_samples`` answers per prompt, in prompt order then sample order."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = stop_ids(model, tokenizer)
    config = decoding.config(pad, eos_ids)
    todo = [(p, s) for p in range(len(prompts)) for s in range(decoding.num_samples)]
    out: list[Generation] = []
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    for b, start in enumerate(range(0, len(todo), batch_size)):
        batch = todo[start : start + batch_size]
        ids, mask = _left_pad([prompts[p] for p, _ in batch], pad)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(decoding.seed * 1_000_003 + b)
            result = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )  # (B, T + new)
        new = result[:, ids.shape[1] :].tolist()
        for (p, s), row in zip(batch, new, strict=True):
            answer, reason = _finish(row, set(eos_ids))
            text = tokenizer.decode(answer, skip_special_tokens=True)
            out.append(Generation(p, s, text, len(answer), reason))
        if on_batch is not None:
            on_batch(len(batch))
    return out


class GenerationCache:
    """Answers on disk, one JSON file per (weights, prompts, decoding) key."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @staticmethod
    def key(weights: str, prompts: Sequence[list[int]], decoding: Decoding) -> str:
        return digest("generations/v1", weights, [list(p) for p in prompts],
                      dataclasses.asdict(decoding))

    def get(self, key: str) -> list[Generation] | None:
        if self.root is None:
            return None
        path = self.root / f"{key}.json"
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return [Generation(**r) for r in rows]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # a damaged entry is regenerated, not trusted

    def put(self, key: str, generations: Sequence[Generation]) -> None:
        if self.root is None:
            return
        make_dir(self.root, "cache_dir")
        path = self.root / f"{key}.json"
        write_json(path, [dataclasses.asdict(g) for g in generations], indent=None)
