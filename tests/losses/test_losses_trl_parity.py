"""tether's objectives against TRL 1.16's own numbers, without TRL installed.

``data/trl_oracle.json`` was made by ``bench/trl_oracle.py`` (its ``command`` field says how):
TRL's ``DPOTrainer._compute_loss`` run on seeded per-token log-probs. Each case gives the batch
loss, every row's rewards and d loss / d per-token policy log-prob; here the same per-token
log-probs are summed per completion, fed to tether's configured objective, and differentiated
back to the tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tether.config import build_config
from tether.losses import LossConfig, pairwise_loss
from tether.losses.weighting import ld_token_weights, wpo_weights

ORACLE = json.loads((Path(__file__).parent / "data" / "trl_oracle.json").read_text())
MPO = {"loss": "mixture", "mixture": ["dpo", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}

# TRL case -> tether config keys (beta 0.1 and everything else at its default unless named)
CASES: dict[str, dict[str, Any]] = {
    "sigmoid": {"loss": "dpo"},
    "hinge": {"loss": "hinge"},
    "ipo": {"loss": "ipo", "length_normalize": True},  # TRL's ipo averages per token
    "nca_pair": {"loss": "nca_pair"},
    "bco_pair": {"loss": "bco_pair"},
    "sppo_hard": {"loss": "sppo_hard"},
    "aot": {"loss": "aot"},
    "aot_unpaired": {"loss": "aot_unpaired"},
    "apo_zero": {"loss": "apo_zero"},
    "apo_down": {"loss": "apo_down"},
    "discopop": {"loss": "discopop"},
    "sft": {"loss": "mixture", "mixture": ["sft"], "beta": None},
    "sigmoid_norm": {"loss": "sigmoid_norm"},
    "exo_pair": {"loss": "exo_pair", "label_smoothing": 1e-3},
    "exo_pair_eps0.2": {"loss": "exo_pair", "label_smoothing": 0.2},
    "robust_eps0.2": {"loss": "robust", "label_smoothing": 0.2},
    "aot_eps0.1": {"loss": "aot", "label_smoothing": 0.1},
    "aot_unpaired_eps0.1": {"loss": "aot_unpaired", "label_smoothing": 0.1},
    "discopop_tau0.5": {"loss": "discopop", "discopop_tau": 0.5},
    "sigmoid_beta0.5": {"loss": "dpo", "beta": 0.5},
    "mpo": MPO,
    "sigmoid_forward_kl": {"loss": "dpo", "f_divergence": "forward_kl"},
    "sigmoid_js_divergence": {"loss": "dpo", "f_divergence": "js_divergence"},
    "hinge_js_divergence": {"loss": "hinge", "f_divergence": "js_divergence"},
    "robust_js_divergence": {"loss": "robust", "f_divergence": "js_divergence"},
    "discopop_js_divergence": {"loss": "discopop", "f_divergence": "js_divergence"},
    "sigmoid_norm_js_divergence": {"loss": "sigmoid_norm", "f_divergence": "js_divergence"},
    "exo_pair_forward_kl": {"loss": "exo_pair", "label_smoothing": 1e-3,
                            "f_divergence": "forward_kl"},
    "sigmoid_alpha0.5": {"loss": "dpo", "f_divergence": "alpha_divergence"},
    "sigmoid_alpha0.3": {"loss": "dpo", "f_divergence": "alpha_divergence", "f_alpha": 0.3},
    "ld_dpo_alpha0.5": {"loss": "dpo", "ld_alpha": 0.5},
    "wpo": {"loss": "dpo", "use_weighting": True},
    "wpo_mix": {"loss": "mixture", "mixture": ["dpo", "bco_pair"], "loss_weights": [0.8, 0.2],
                "use_weighting": True},
}
# rewards tether defines differently from TRL's β·(summed log-ratio): ipo with
# length_normalize logs β·(mean log-ratio); a mixture logs its first term's (sft has none)
OWN_REWARDS = {"ipo", "sft"}
# TRL's exo_pair takes log ε and log(1 − ε) of torch.tensor(ε), a float32 tensor, so its
# float64 loss carries float32 rounding of those constants (~1e-8 relative); tether's are float64
FLOAT32_CONSTANTS = {"exo_pair", "exo_pair_eps0.2", "exo_pair_forward_kl"}
NOT_YET: set[str] = set()


def test_every_oracle_case_is_compared_or_listed_as_not_yet():
    assert set(ORACLE["cases"]) == set(CASES) | NOT_YET
    assert ORACLE["trl_version"].startswith("1.16")


def _run(case: dict[str, Any], keys: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    dtype = getattr(torch, case["dtype"])
    inputs = ORACLE["inputs"]
    B = ORACLE["pairs"]
    cfg = build_config(LossConfig, {"beta": 0.1, **keys})
    mask = torch.tensor(inputs["completion_mask"])
    shift = mask[:, 1:].to(dtype)  # (2B, T-1)
    counts = shift.sum(1).long()
    if cfg.ld_alpha is not None:  # the weights the scorers apply: 1 on the shared prefix, α after
        shift = ld_token_weights(mask, B, cfg.ld_alpha)[:, 1:].to(dtype)
    tokens = torch.tensor(inputs["policy"], dtype=dtype, requires_grad=True)  # (2B, T-1)
    policy = (tokens * shift).sum(1)  # (2B,) summed completion log-probs
    reference = (torch.tensor(inputs["reference"], dtype=dtype) * shift).sum(1)
    weights = None
    if cfg.use_weighting:  # Σ_t log p_t − log Σ_v p_v², as the LM head gives it
        log_sum_sq = torch.tensor(inputs["log_sum_sq_probs"], dtype=dtype)
        aligned = ((tokens - log_sum_sq) * (mask[:, 1:] != 0)).sum(1)
        weights = wpo_weights(aligned[:B], aligned[B:], counts[:B], counts[B:])
    out = pairwise_loss(cfg, policy[:B], policy[B:], reference[:B], reference[B:],
                        chosen_lengths=counts[:B], rejected_lengths=counts[B:],
                        pair_weights=weights)
    loss = out.losses.mean()
    loss.backward()
    assert tokens.grad is not None
    return loss.detach(), out.chosen_rewards, out.rejected_rewards, tokens.grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_trl(name: str):
    case = ORACLE["cases"][name]
    loss, chosen, rejected, grad = _run(case, CASES[name])
    dtype = getattr(torch, case["dtype"])
    # float64: 1e-9 relative; TRL's alpha-divergence only runs in float32
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5,
                                                                         "atol": 1e-7}
    if name in FLOAT32_CONSTANTS:
        tol = {"rtol": 1e-7, "atol": 1e-10}
    torch.testing.assert_close(loss, torch.tensor(case["loss"], dtype=dtype), **tol)
    torch.testing.assert_close(grad, torch.tensor(case["grad_policy_token_logps"], dtype=dtype),
                               **tol)
    if name not in OWN_REWARDS:
        torch.testing.assert_close(chosen, torch.tensor(case["chosen_rewards"], dtype=dtype),
                                   **tol)
        torch.testing.assert_close(rejected, torch.tensor(case["rejected_rewards"], dtype=dtype),
                                   **tol)


def test_the_fixture_is_not_degenerate():
    # the gradients differ between objectives and reach every completion token
    grads = {n: torch.tensor(ORACLE["cases"][n]["grad_policy_token_logps"]) for n in CASES}
    assert not torch.allclose(grads["sigmoid"], grads["nca_pair"])
    assert not torch.allclose(grads["aot"], grads["sigmoid"])  # sorting changes the pairing
    shift = torch.tensor(ORACLE["inputs"]["completion_mask"])[:, 1:].bool()
    assert (grads["sigmoid"][shift] != 0).all() and (grads["sigmoid"][~shift] == 0).all()
