"""TRL 1.16's own DPO losses on fixed per-token log-probs: the parity fixture of tether's losses.

TRL >= 1.0 has no standalone loss function: ``DPOTrainer._compute_loss`` reads per-token
log-probs from ``model(..., labels=..., fused_lm_head=True)`` and computes every loss type,
f-divergence, mixture, LD-DPO and WPO weighting inline. This script runs that very method on a
``DPOTrainer`` whose models are stubs returning given per-token log-probs (float64), with a
real ``DPOConfig`` and the attributes ``DPOTrainer.__init__`` sets from it (building the full
trainer would need a real model, tokenizer and dataset, none of which the loss reads). It
records the loss, each row's rewards (the tensors TRL hands to ``accelerator.gather``) and
d loss / d per-token policy log-prob.

Run it in a virtualenv with TRL (not tether's):

    python3 -m venv /work/wt/.trl-venv
    bash scripts/install_torch.sh /work/wt/.trl-venv && /work/wt/.trl-venv/bin/pip install "trl==1.16.*"
    /work/wt/.trl-venv/bin/python bench/trl_oracle.py > tests/losses/data/trl_oracle.json

The tests (tests/losses/test_losses_trl_parity.py) read the JSON without TRL installed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import torch
import trl
from trl import DPOConfig, DPOTrainer

B, T = 5, 9  # pairs, sequence length (prompt + completion + padding)
SEED = 1234

# (name, DPOConfig keys, dtype): every loss type, f-divergence, mixture and variant
CASES: list[tuple[str, dict[str, Any], torch.dtype]] = [
    *[(lt, {"loss_type": [lt]}, torch.float64) for lt in (
        "sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
        "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")],
    ("exo_pair", {"loss_type": ["exo_pair"], "label_smoothing": 1e-3}, torch.float64),
    ("exo_pair_eps0.2", {"loss_type": ["exo_pair"], "label_smoothing": 0.2}, torch.float64),
    ("robust_eps0.2", {"loss_type": ["robust"], "label_smoothing": 0.2}, torch.float64),
    ("aot_eps0.1", {"loss_type": ["aot"], "label_smoothing": 0.1}, torch.float64),
    ("aot_unpaired_eps0.1", {"loss_type": ["aot_unpaired"], "label_smoothing": 0.1},
     torch.float64),
    ("discopop_tau0.5", {"loss_type": ["discopop"], "discopop_tau": 0.5}, torch.float64),
    ("sigmoid_beta0.5", {"loss_type": ["sigmoid"], "beta": 0.5}, torch.float64),
    ("mpo", {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
     torch.float64),
    *[(f"sigmoid_{f}", {"loss_type": ["sigmoid"], "f_divergence_type": f}, torch.float64)
      for f in ("forward_kl", "js_divergence")],
    *[(f"{lt}_js_divergence", {"loss_type": [lt], "f_divergence_type": "js_divergence"},
       torch.float64) for lt in ("hinge", "robust", "discopop", "sigmoid_norm")],
    ("exo_pair_forward_kl", {"loss_type": ["exo_pair"], "label_smoothing": 1e-3,
                             "f_divergence_type": "forward_kl"}, torch.float64),
    # TRL's alpha_divergence branch has no float64 entry in its clamp table (a KeyError), so
    # it is recorded in float32
    *[(f"sigmoid_alpha{a}", {"loss_type": ["sigmoid"], "f_divergence_type": "alpha_divergence",
                             "f_alpha_divergence_coef": a}, torch.float32) for a in (0.5, 0.3)],
    ("ld_dpo_alpha0.5", {"loss_type": ["sigmoid"], "ld_alpha": 0.5}, torch.float64),
    ("wpo", {"loss_type": ["sigmoid"], "use_weighting": True}, torch.float64),
    # WPO with an sft term fails inside TRL 1.16 (an in-place multiply of an expanded tensor),
    # so the weighted mixture leaves sft out
    ("wpo_mix", {"loss_type": ["sigmoid", "bco_pair"], "loss_weights": [0.8, 0.2],
                 "use_weighting": True}, torch.float64),
]


def make_inputs() -> dict[str, torch.Tensor]:
    """Seeded per-token log-probs and masks; rows 0..B-1 chosen, B..2B-1 rejected."""
    g = torch.Generator().manual_seed(SEED)
    prompt = torch.randint(2, 4, (B,), generator=g)  # prompt tokens per pair
    lengths = torch.randint(1, T - 3, (2 * B,), generator=g)  # completion tokens per row
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    attention_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for i in range(2 * B):
        p, n = int(prompt[i % B]), int(min(lengths[i], T - prompt[i % B]))
        completion_mask[i, p : p + n] = 1
        attention_mask[i, : p + n] = 1
    policy = -3 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) - 0.05
    reference = policy + 0.6 * torch.randn(2 * B, T - 1, generator=g, dtype=torch.float64)
    reference = reference.clamp(max=-0.01)
    # log Σ_v p_v² of the policy at each position (WPO): at most log max p <= the token's logp
    log_sum_sq = policy - 0.4 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64)
    shift = completion_mask[:, 1:].to(torch.float64)
    return {"completion_mask": completion_mask, "attention_mask": attention_mask,
            "policy": policy * shift, "reference": reference * shift,
            "log_sum_sq_probs": log_sum_sq * shift}


class StubLM(torch.nn.Module):
    """A 'model' whose fused-LM-head output is the given per-token log-probs."""

    is_gradient_checkpointing = False

    def __init__(self, logps: torch.Tensor, log_sum_sq: torch.Tensor) -> None:
        super().__init__()
        self.logps, self.log_sum_sq = logps, log_sum_sq

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **_: Any) -> Any:
        # like the fused head: 0, with no gradient path, where the label is ignored (-100)
        target = (labels[:, 1:] != -100).to(self.logps.dtype)  # (2B, T-1)
        zeros = torch.zeros_like(self.logps)
        return SimpleNamespace(log_probs=self.logps * target, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool(), log_sum_sq_probs=self.log_sum_sq * target)


class StubAccelerator:
    """Single process; remembers what ``gather`` was given (TRL gathers the rewards first)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.gathered: list[torch.Tensor] = []

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        self.gathered.append(x.detach().clone())
        return x

    def gather_for_metrics(self, x: Any) -> Any:
        return x

    def unwrap_model(self, m: Any) -> Any:
        return m


def trainer(args: DPOConfig, policy: StubLM, reference: StubLM) -> DPOTrainer:
    """The trainer state ``_compute_loss`` reads, set as ``DPOTrainer.__init__`` sets it."""
    t = DPOTrainer.__new__(DPOTrainer)
    t.args, t.model, t.ref_model = args, policy, reference
    t.accelerator = StubAccelerator()
    t.beta, t.precompute_ref_logps = args.beta, False
    t.loss_types = args.loss_type
    t.loss_weights = args.loss_weights or [1.0] * len(t.loss_types)
    t.ld_alpha, t.label_smoothing = args.ld_alpha, args.label_smoothing
    t.f_divergence_type = args.f_divergence_type
    t.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    t.use_weighting, t.aux_loss_enabled = args.use_weighting, False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens, t._tp_size = 0, 1
    return t


def run_case(config: dict[str, Any], dtype: torch.dtype, data: dict[str, torch.Tensor]) -> dict:
    args = DPOConfig(output_dir="/tmp/trl-oracle", report_to=[], use_cpu=True, bf16=False,
                     **config)
    policy_logps = data["policy"].detach().clone().to(dtype).requires_grad_(True)
    policy = StubLM(policy_logps, data["log_sum_sq_probs"].to(dtype))
    reference = StubLM(data["reference"].to(dtype), data["log_sum_sq_probs"].to(dtype))
    t = trainer(args, policy.train(), reference)
    inputs = {"input_ids": torch.ones_like(data["completion_mask"]),
              "attention_mask": data["attention_mask"],
              "completion_mask": data["completion_mask"]}
    loss = t._compute_loss(policy, inputs, return_outputs=False)
    loss.backward()
    chosen_rewards, rejected_rewards = t.accelerator.gathered[:2]
    return {"config": config, "dtype": str(dtype).removeprefix("torch."), "loss": loss.item(),
            "chosen_rewards": chosen_rewards.tolist(),
            "rejected_rewards": rejected_rewards.tolist(),
            "grad_policy_token_logps": policy_logps.grad.tolist()}


def main() -> None:
    torch.set_num_threads(1)
    data = make_inputs()
    out = {
        "trl_version": trl.__version__, "torch_version": torch.__version__,
        "command": "/work/wt/.trl-venv/bin/python bench/trl_oracle.py > "
                   "tests/losses/data/trl_oracle.json",
        "pairs": B,
        "inputs": {k: v.tolist() for k, v in data.items()},
        "cases": {name: run_case(config, dtype, data) for name, config, dtype in CASES},
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
