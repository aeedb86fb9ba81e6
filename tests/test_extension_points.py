"""The public API and the extension points: a loss, a data shape and a judge added in a test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

import tether
from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.errors import ConfigError
from tether.eval.judges.base import JudgeItem, Verdict
from tether.losses import LOSS_SPECS, LOSSES, LossSpec, dpo
from tether.model.tiny import tiny_llama
from tether.shapes import SHAPES, Loaded, PairsShape
from tether.training.loop import train

SRC = Path(__file__).resolve().parents[1] / "src"


def test_public_api_names_resolve_and_every_module_imports_on_its_own():
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name
    for name in ("train", "sft", "evaluate", "pairs", "iterate"):
        assert callable(getattr(tether, name))
    # Each module imported first, with no other tether module loaded (torch stays cached).
    script = """
import importlib, pkgutil, sys
import torch, transformers
import tether
names = [m.name for m in pkgutil.walk_packages(tether.__path__, 'tether.')
         if not m.name.endswith('__main__')]
for name in names:
    for k in [k for k in sys.modules if k == 'tether' or k.startswith('tether.')]:
        del sys.modules[k]
    importlib.import_module(name)
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) > 60


def test_config_classes_check_their_values_on_construction():
    with pytest.raises(ConfigError) as e:
        tether.TrainConfig(model="m", data="d", lr=-1, batch_size=0)
    assert str(e.value) == ("TrainConfig: lr: must be > 0, got -1; "
                            "batch_size: must be >= 1, got 0")
    with pytest.raises(ConfigError, match="EvalConfig: model: required"):
        tether.EvalConfig()
    assert tether.TrainConfig(model="m", data="d").lr > 0  # a sound config builds


def test_a_loss_added_in_the_test_is_one_function_and_one_registry_line(
    llama_dir, pairs_file, tmp_path
):
    @tether.register_loss("dpo_twice")
    def dpo_twice(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, beta: float = 0.1):
        """2 × DPO: the same gradient direction, twice the loss."""
        out = dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, beta=beta)
        return type(out)(2 * out.losses, out.chosen_rewards, out.rejected_rewards)

    try:
        run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file),
                                 loss="dpo_twice", max_steps=1))
        first = read_metrics(run)[0]
        assert first["loss"] == pytest.approx(2 * math.log(2), rel=1e-5)  # policy == reference
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    finally:
        LOSSES.pop("dpo_twice"), LOSS_SPECS.pop("dpo_twice")


class SwappedPairs:
    """A data shape: preference pairs with chosen and rejected swapped at load time."""

    name = "swapped_pairs"
    prefix_sharing = False

    def load(self, cfg, path, tokenizer) -> Loaded:
        loaded = PairsShape().load(cfg, path, tokenizer)
        loaded.rows = [type(r)(r.prompt, r.rejected, r.chosen, r.source) for r in loaded.rows]
        return loaded

    def step(self, cfg, rows, logps, counts, reference):
        return PairsShape().step(cfg, rows, logps, counts, reference)


def test_a_shape_added_in_the_test_is_one_class_and_one_registry_line(
    llama_dir, pairs_file, tmp_path
):
    tether.register_shape(SwappedPairs())
    tether.register_loss("dpo_swapped", LossSpec(data="swapped_pairs"))(dpo)
    try:
        common = {"model": str(llama_dir), "data": str(pairs_file), "max_steps": 1,
                  "prefix_sharing": False}
        plain = read_metrics(train(train_config(tmp_path / "a", **common)))[0]
        swapped = read_metrics(train(train_config(tmp_path / "b", loss="dpo_swapped",
                                                  **common)))[0]
        assert swapped["logps/chosen"] == pytest.approx(plain["logps/rejected"], rel=1e-6)
        assert swapped["logps/rejected"] == pytest.approx(plain["logps/chosen"], rel=1e-6)
    finally:
        SHAPES.pop("swapped_pairs"), LOSSES.pop("dpo_swapped"), LOSS_SPECS.pop("dpo_swapped")


class Longer:
    """A judge: the longer answer wins."""

    identity = "longer-v1"
    deterministic = True

    def __call__(self, prompt: str, answer_a: str, answer_b: str, row=None) -> Verdict:
        if len(answer_a) == len(answer_b):
            return Verdict("tie")
        return Verdict("A" if len(answer_a) > len(answer_b) else "B")

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [self(i.prompt, i.answer_a, i.answer_b, i.row) for i in items]


def test_a_judge_registered_in_the_test_works_through_config_and_cli(tokenizer, tmp_path,
                                                                      capsys):
    from tether.cli import main
    from tether.eval.judges.registry import JUDGES

    tether.register_judge("longer", requires={"judge_model": " (any name, for the test)"})(
        lambda cfg, memo: Longer())
    try:
        ref, run = tmp_path / "ref", tmp_path / "run"
        for seed, d in ((0, ref), (1, run / "model")):
            tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1,
                       seed=seed).save_pretrained(d)
            tokenizer.save_pretrained(d)
        (run / "config.yaml").write_text(yaml.safe_dump({"model": str(ref)}))
        data = write_jsonl(tmp_path / "heldout.jsonl", make_pairs(4))
        args = ["eval", f"model={run}", f"data={data}", "judge=longer", "max_new_tokens=5",
                "progress=false", f"cache_dir={tmp_path / 'cache'}"]
        assert main(args) == 2  # the judge's required key, checked like a built-in's
        assert "judge_model: required for judge=longer" in capsys.readouterr().err
        assert main([*args, "judge_model=x"]) == 0
        results = json.loads((run / "eval" / "results.json").read_text())
        assert results["judge"] == "longer-v1"
        assert results["wins"] + results["ties"] + results["losses"] == 4
    finally:
        JUDGES.pop("longer")
