"""tether iterate checks everything its rounds will need before round 1 samples anything: the
train.* keys, the eval settings and both prompt files (a typo used to surface only after a
round of sampling and training)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_pairs, write_jsonl
from tether.config import build_config
from tether.errors import ConfigError
from tether.workflows.iterate import IterateConfig, iterate

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"]} for r in make_pairs(4)])


def _iterate(tmp_path: Path, model: Path, prompts: Path, *extra: str):
    args = [f"model={model}", f"data={prompts}", f"output_dir={tmp_path / 'it'}",
            "judge=rule", "judge_rule=tether.eval.rules:shorter", "max_new_tokens=4",
            f"cache_dir={tmp_path / 'c'}", "progress=false", "device=cpu", *extra]
    return subprocess.run([sys.executable, "-m", "tether", "--quiet", "iterate", *args],
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("extra, expected", [
    (("train.lrr=1e-3",), "iterate: train.: unknown key 'lrr'"),
    (("train.batch_size=0",), "iterate: train.: batch_size: must be >= 1, got 0"),
])
def test_bad_keys_fail_before_round_1(tmp_path, llama_dir, prompts, extra, expected):
    proc = _iterate(tmp_path, llama_dir, prompts, f"eval_data={prompts}", *extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("tether iterate: error: ") and expected in line, line
    assert not (tmp_path / "it" / "round-1").exists()  # nothing was sampled


def test_missing_eval_data_fails_before_round_1(tmp_path, llama_dir, prompts):
    missing = tmp_path / "held-out.jsonl"
    proc = _iterate(tmp_path, llama_dir, prompts, f"eval_data={missing}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(missing) in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "it" / "round-1").exists()


def test_round_2_train_config_is_checked_before_round_1(tmp_path, llama_dir, prompts):
    """reference_mode=fixed gives round 2 a reference_model, which reference=lora refuses."""
    cfg = build_config(IterateConfig, {
        "model": str(llama_dir), "data": str(prompts), "eval_data": str(prompts),
        "output_dir": str(tmp_path / "it"), "rounds": 2, "reference_mode": "fixed",
        "judge": "rule", "judge_rule": "tether.eval.rules:shorter", "max_new_tokens": 4,
        "train": {"lora": True, "reference": "lora"}, "cache_dir": str(tmp_path / "c"),
        "progress": False, "device": "cpu"})
    with pytest.raises(ConfigError, match="reference=lora is the policy's own base"):
        iterate(cfg)
    assert not (tmp_path / "it" / "round-1").exists()
