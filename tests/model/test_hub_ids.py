"""Hub ids load through the real Hugging Face cache, offline; run directories work anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import make_pairs, write_jsonl
from tether.errors import ModelError
from tether.model.loading import is_hub_id, load_model
from tether.model.tiny import tiny_llama

SRC = Path(__file__).resolve().parents[2] / "src"
REPO = "tether-test/Tiny-0.5B-Instruct"  # a dot in the name, as Qwen/Qwen2.5-0.5B-Instruct


def _snapshot(hf_home: Path, repo: str, ref: str, commit: str, model_dir: Path) -> None:
    """Lay out a model as huggingface_hub's cache holds a downloaded snapshot."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    shutil.copytree(model_dir, root / "snapshots" / commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tokenizer) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    for seed, ref, commit in ((0, "main", "a" * 40), (1, "v1", "b" * 40)):
        d = tmp_path_factory.mktemp(f"snap{seed}")
        tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=seed).save_pretrained(d)
        tokenizer.save_pretrained(d)
        _snapshot(home, REPO, ref, commit, d)
    return home


def _env(hf_home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct",
                                  "Qwen/Qwen3-0.6B", "gpt2", "org/name_with.dots-1"])
def test_dotted_names_are_hub_ids(name):
    assert is_hub_id(name)


@pytest.mark.parametrize("name", ["./model", "/abs/model", "~/m", "a/b/c", "a..b", "a--b"])
def test_paths_that_do_not_exist_are_refused_before_the_hub(name):
    assert not is_hub_id(name) or name.startswith((".", "/", "~"))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(name)


def test_train_a_dotted_hub_id_from_the_offline_cache_with_a_revision(hub_cache, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    common = [f"data={data}", "max_steps=1", "batch_size=4", "progress=false",
              f"cache_dir={tmp_path / 'cache'}"]
    for revision, expect in ((None, "a" * 40), ("v1", "b" * 40)):
        out = tmp_path / f"run-{revision}"
        args = [f"model={REPO}", f"output_dir={out}", *common]
        if revision:
            args.append(f"revision={revision}")
        proc = subprocess.run([sys.executable, "-m", "tether", "train", *args],
                              capture_output=True, text=True, env=_env(hub_cache), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        snapshot = (hub_cache / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
                    / expect)
        start = load_file(str(snapshot / "model.safetensors"))
        # the run started from the snapshot of that revision: the embedding barely moved
        trained = load_file(str(out / "model" / "model.safetensors"))
        key = "model.embed_tokens.weight"
        assert (trained[key] - start[key]).abs().max() < 0.05
        assert yaml.safe_load((out / "config.yaml").read_text())["model"] == REPO


def test_run_directory_works_from_another_folder(llama_dir, tmp_path):
    """Relative paths at training time are recorded absolute, so eval runs from elsewhere."""
    work, other = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), other.mkdir()
    shutil.copytree(llama_dir, work / "sft")
    write_jsonl(work / "pairs.jsonl", make_pairs(8))
    write_jsonl(work / "heldout.jsonl", make_pairs(3, seed=5))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = [sys.executable, "-m", "tether"]
    train = subprocess.run([*run, "train", "model=sft", "data=pairs.jsonl", "output_dir=runs/x",
                            "max_steps=1", "batch_size=4", "progress=false", "cache_dir=cache"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    cfg = yaml.safe_load((work / "runs" / "x" / "config.yaml").read_text())
    assert cfg["model"] == str((work / "sft").resolve())
    assert cfg["data"] == str((work / "pairs.jsonl").resolve())
    ev = subprocess.run([*run, "eval", f"model={work / 'runs' / 'x'}",
                         f"data={work / 'heldout.jsonl'}", "judge=rule",
                         "judge_rule=tether.eval.rules:shorter", "max_new_tokens=4",
                         "progress=false", f"cache_dir={tmp_path / 'c2'}"],
                        cwd=other, env=env, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    results = json.loads((work / "runs" / "x" / "eval" / "results.json").read_text())
    assert results["models"]["reference"] == str((work / "sft").resolve())
