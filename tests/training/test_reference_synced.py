"""TR-DPO's synced reference: the update rule by hand, and what a run with it logs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.config import TrainConfig, build_config
from tether.errors import ConfigError
from tether.training.loop import train
from tether.training.reference import FrozenCopy, reference_kind, synced_reference


def _one_weight(value: float) -> nn.Linear:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def _set(m: nn.Linear, value: float) -> None:
    with torch.no_grad():
        m.weight.fill_(value)


def test_soft_update_follows_the_mixup_formula():
    # α = 0.25, every step: ref ← 0.25·θ + 0.75·ref
    policy = _one_weight(0.0)
    ref, after_step = synced_reference(FrozenCopy(policy, chunk=4), policy, every=1, alpha=0.25)
    assert ref is not None
    copy = ref.inner.model  # type: ignore[attr-defined]
    _set(policy, 4.0)
    after_step(1)
    assert copy.weight.item() == pytest.approx(1.0)  # 0.25·4 + 0.75·0
    _set(policy, 8.0)
    after_step(2)
    assert copy.weight.item() == pytest.approx(2.75)  # 0.25·8 + 0.75·1
    assert policy.weight.item() == 8.0  # the policy is never touched


def test_hard_update_every_n_steps_is_the_policy_of_that_step(llama_dir: Path):
    from tether.model.loading import load_model

    policy = load_model(str(llama_dir))
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    ref, after_step = synced_reference(FrozenCopy(policy, chunk=4), policy, every=3, alpha=1.0)
    copy = ref.inner.model  # type: ignore[union-attr]
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    snapshots = {}
    for step in range(1, 8):
        opt.zero_grad()
        sum((p**2).sum() for p in policy.parameters()).backward()  # type: ignore[union-attr]
        opt.step()
        after_step(step)
        snapshots[step] = {k: v.clone() for k, v in policy.state_dict().items()}
        synced_at = step - step % 3  # the last multiple of 3 (0: the start)
        want = start if synced_at == 0 else snapshots[synced_at]
        for k, v in copy.state_dict().items():
            torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    assert not torch.equal(snapshots[6]["lm_head.weight"], snapshots[7]["lm_head.weight"])


def test_a_synced_reference_is_a_copy_and_refuses_what_cannot_follow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    cfg = build_config(TrainConfig, {"model": "m", "data": "d", "ref_model_sync_steps": 4})
    with caplog.at_level(logging.INFO, logger="tether"):
        assert reference_kind(cfg) == "copy"  # auto: a precomputed table cannot move
    assert "reference: copy, because ref_model_sync_steps=4" in caplog.text
    with pytest.raises(ConfigError, match="reference=precomputed"):
        build_config(TrainConfig, {"model": "m", "data": "d", "ref_model_sync_steps": 4,
                                   "reference": "precomputed"})
    with pytest.raises(ConfigError, match="ref_model_mixup_alpha"):
        build_config(TrainConfig, {"model": "m", "data": "d", "ref_model_mixup_alpha": 0.5})
    with pytest.raises(ConfigError, match="ref_model_mixup_alpha"):
        build_config(TrainConfig, {"model": "m", "data": "d", "ref_model_sync_steps": 1,
                                   "ref_model_mixup_alpha": 1.5})
    for bad in ({"loss": "simpo"}, {"lora": True}, {"resume": True}):
        with pytest.raises(ConfigError, match="ref_model_sync_steps"):
            build_config(TrainConfig, {"model": "m", "data": "d", "ref_model_sync_steps": 2,
                                       **bad})


def test_hard_sync_every_step_keeps_the_rewards_at_zero(tmp_path: Path, llama_dir: Path):
    # with the reference synced to the policy after every step, each step starts with
    # policy == reference: zero rewards and loss log 2, while the policy still learns
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    common = {"model": str(llama_dir), "data": str(data), "max_steps": 6, "log_every": 1}
    synced = train(train_config(tmp_path / "a", **common, ref_model_sync_steps=1,
                                ref_model_mixup_alpha=1.0))
    fixed = train(train_config(tmp_path / "b", **common, reference="copy"))
    rows, base = read_metrics(synced), read_metrics(fixed)
    for r in rows:
        assert abs(r["rewards/margins"]) < 1e-5 and r["loss"] == pytest.approx(math.log(2),
                                                                                abs=1e-5)
    assert rows[-1]["logps/chosen"] != rows[0]["logps/chosen"]  # the policy moved
    assert base[-1]["rewards/margins"] > 0.05  # a fixed reference lets the margin grow


def test_soft_sync_trains_and_raises_the_margin(tmp_path: Path, llama_dir: Path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(data), max_steps=6,
                             log_every=1, ref_model_sync_steps=2, ref_model_mixup_alpha=0.5))
    rows = read_metrics(run)
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"] + 0.01
    assert all(math.isfinite(r["loss"]) for r in rows)
