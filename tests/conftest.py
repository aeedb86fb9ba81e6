"""Shared fixtures: a tiny tokenizer and tiny models trained/built in the test session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tether.model.tiny import tiny_gpt2, tiny_llama, train_tokenizer

torch.set_num_threads(2)

WORDS = "the a cat dog sat ran on under mat rug red blue big small yes no please thanks".split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def make_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs with an obvious preference: chosen answers are polite, rejected ones are not."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS[:10]) for _ in range(rng.randint(2, 6)))
        rows.append({"prompt": prompt + " ?", "chosen": " yes please thanks",
                     "rejected": " no " + rng.choice(WORDS[:8])})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(corpus() + ["? yes please thanks no"], vocab_size=300)


@pytest.fixture(scope="session")
def chat_tokenizer():
    return train_tokenizer(corpus() + ["? yes please thanks no"], vocab_size=300, chat_template=True)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    d = tmp_path_factory.mktemp("llama")
    tiny_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tokenizer) -> Path:
    d = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(tokenizer, hidden=32, layers=2, heads=4).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32))


def train_config(tmp_path: Path, **overrides: object):
    """A small, quiet TrainConfig writing into ``tmp_path`` (checked like a user's config)."""
    from tether.config import TrainConfig, build_config

    base: dict[str, object] = {
        "output_dir": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
        "device": "cpu",
        "batch_size": 4,
        "eval_batch_size": 8,
        "max_steps": 2,
        "lr": 1e-3,
        "report": False,  # report.md's plots cost seconds a run; tests/tracking draws them
    }
    base.update(overrides)
    return build_config(TrainConfig, base)


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    return [r for r in rows if "event" not in r]  # metric rows, not health events
