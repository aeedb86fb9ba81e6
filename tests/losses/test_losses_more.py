"""The objectives beyond DPO's first family: hand-computed values (DPOP, R-DPO, Cal-DPO, SimPER
and the TRL ones), invariants at policy == reference, one optimizer step each, f-divergence
scores and mixtures through the config."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tether.config import build_config
from tether.errors import ConfigError
from tether.losses import (
    LossConfig,
    LossOutput,
    aot,
    apo_zero,
    bco_pair,
    cal_dpo,
    call_loss,
    discopop,
    dpo,
    dpop,
    exo_pair,
    nca_pair,
    pairwise_loss,
    rdpo,
    simper,
    sppo_hard,
)
from tether.losses.fdivergence import score

T = torch.tensor
FOUR = (T([-1.0]), T([-5.0]), T([-2.0]), T([-3.0]))  # u_w = 1, u_l = -2, h = 3
LENGTHS = {"chosen_lengths": T([2]), "rejected_lengths": T([4])}


def softplus(x: float) -> float:
    return math.log1p(math.exp(-x))  # −log σ(x)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpop_hand_computed_penalty_only_below_the_reference():
    # row 0: πc = -1 >= rc = -2 -> no penalty: -log σ(0.1 * 3) = softplus(0.3)
    # row 1: πc = -4, rc = -2 -> penalty 2 ; h = (-4 - -2) - (-5 - -3) = 0
    #        -log σ(0.1 * (0 - 50 * 2)) = softplus(-10)
    out = dpop(T([-1.0, -4.0]), T([-5.0, -5.0]), T([-2.0, -2.0]), T([-3.0, -3.0]), beta=0.1,
               dpop_lambda=50.0)
    torch.testing.assert_close(out.losses, T([softplus(0.3), softplus(-10.0)]))
    torch.testing.assert_close(out.metrics["dpop_penalty"], T(1.0))  # mean(0, 2)
    # λ = 0 is dpo
    torch.testing.assert_close(dpop(*FOUR, beta=0.1, dpop_lambda=0.0).losses,
                               dpo(*FOUR, beta=0.1).losses)


def test_rdpo_hand_computed_length_gap():
    # β·h = 0.3 ; α·(|yw| − |yl|) = 0.01 * (2 − 4) = −0.02 ; −log σ(0.28)
    out = rdpo(*FOUR, beta=0.1, rdpo_alpha=0.01, **LENGTHS)
    torch.testing.assert_close(out.losses, T([softplus(0.28)]))


def test_cal_dpo_hand_computed_is_contrastive_plus_sppo_hard():
    # u_w = 1, u_l = -2, β = 0.5 -> 1/(2β) = 1
    # −log σ(3) + (1 − 1)² + (−2 + 1)² = softplus(3) + 1
    out = cal_dpo(*FOUR, beta=0.5)
    torch.testing.assert_close(out.losses, T([softplus(3.0) + 1.0]))
    torch.testing.assert_close(sppo_hard(*FOUR, beta=0.5).losses, T([1.0]))
    torch.testing.assert_close(out.chosen_rewards, T([0.5]))  # β·u_w


def test_simper_hand_computed_inverse_perplexities():
    # πc/|yc| = -1/2, πr/|yr| = -5/4 ; loss = −e^−0.5 + e^−1.25 = −0.6065307 + 0.2865048
    out = simper(FOUR[0], FOUR[1], None, None, **LENGTHS)
    torch.testing.assert_close(out.losses, T([-math.exp(-0.5) + math.exp(-1.25)]))
    assert abs(out.losses.item() - (-0.3200259)) < 1e-6
    torch.testing.assert_close(out.chosen_rewards, T([math.exp(-0.5)]))


def test_trl_family_hand_computed():
    # β = 1: u_w = 1, u_l = -2, h = 3
    args = (*FOUR,)
    torch.testing.assert_close(nca_pair(*args, beta=1.0).losses,
                               T([softplus(1) + 0.5 * softplus(-1) + 0.5 * softplus(2)]))
    torch.testing.assert_close(bco_pair(*args, beta=1.0).losses, T([softplus(1) + softplus(2)]))
    torch.testing.assert_close(apo_zero(*args, beta=1.0).losses, T([1 - sig(1) + sig(-2)]))
    # discopop at ρ = 3, τ = 1: m = σ(3); (1 − m)·softplus(3) + m·e^−3
    m = sig(3)
    torch.testing.assert_close(discopop(*args, beta=1.0, discopop_tau=1.0).losses,
                               T([(1 - m) * softplus(3) + m * math.exp(-3)]))
    # exo at z = 3, ε = 0.1: σ(3)(log σ(3) − log 0.9) + σ(−3)(log σ(−3) − log 0.1)
    q = sig(3)
    want = q * (math.log(q) - math.log(0.9)) + (1 - q) * (math.log(1 - q) - math.log(0.1))
    torch.testing.assert_close(exo_pair(*args, beta=1.0, label_smoothing=0.1).losses, T([want]))


def test_discopop_has_a_bump_at_zero_with_the_papers_tau():
    # slope of the loss in ρ = β·h: positive just around 0 (descent lowers the margin), negative
    # outside, as computed from the formula: d/dρ at 0 = (1 − log 2)/(4τ) − 3/4 = 0.784 for τ = 0.05
    def slope(rho: float, tau: float) -> float:
        h = T([rho * 10], dtype=torch.float64, requires_grad=True)
        zero = torch.zeros(1, dtype=torch.float64)
        discopop(h, zero, zero, zero, beta=0.1, discopop_tau=tau).losses.sum().backward()
        assert h.grad is not None
        return float(h.grad) * 10

    assert abs(slope(0.0, 0.05) - ((1 - math.log(2)) / 0.2 - 0.75)) < 1e-9
    assert slope(-0.3, 0.05) < 0 < slope(-0.05, 0.05) and slope(0.2, 0.05) < 0
    assert slope(0.0, 1.0) < 0  # a wide τ has no bump


def test_exo_unset_label_smoothing_is_the_papers_epsilon():
    torch.testing.assert_close(exo_pair(*FOUR, beta=0.1).losses,
                               exo_pair(*FOUR, beta=0.1, label_smoothing=1e-3).losses)


def test_aot_sorts_across_the_batch():
    # policy log-odds πc − πr = [3, -1], reference rc − rr = [-2, 0]; sorted: [-1, 3], [-2, 0]
    # δ = [1, 3] ; a per-pair DPO would use [3 − -2, -1 − 0] = [5, -1]
    out = aot(T([-1.0, -2.0]), T([-4.0, -1.0]), T([-3.0, -1.0]), T([-1.0, -1.0]), beta=1.0)
    torch.testing.assert_close(out.losses, T([softplus(1.0), softplus(3.0)]))


@pytest.mark.parametrize(
    ("name", "at_equal"),
    [
        ("nca_pair", 2 * math.log(2)),  # log2 + ½log2 + ½log2
        ("bco_pair", 2 * math.log(2)),
        ("apo_zero", 1.0),
        ("apo_down", 1.0),
        ("discopop", 0.5 * math.log(2) + 0.5),  # m = ½: ½·log 2 + ½·e^0
        ("dpop", math.log(2)),
        ("sigmoid_norm", math.log(2)),
        ("exo_pair", -math.log(2) - 0.5 * math.log(1e-3 * (1 - 1e-3))),
        ("aot", math.log(2)),
        ("aot_unpaired", math.log(2)),
        ("sppo_hard", 2 * 25.0),  # (0 − 5)² + (0 + 5)² at β = 0.1
        ("cal_dpo", math.log(2) + 50.0),
    ],
)
def test_policy_equal_to_reference_gives_the_known_value(name: str, at_equal: float):
    torch.manual_seed(0)
    pc, pr = -10 * torch.rand(4), -10 * torch.rand(4)
    lengths = {"chosen_lengths": T([3, 1, 2, 5]), "rejected_lengths": T([2, 2, 4, 1])}
    out = call_loss(name, pc, pr, pc.clone(), pr.clone(), beta=0.1, **lengths)
    torch.testing.assert_close(out.losses, torch.full((4,), at_equal))
    torch.testing.assert_close(out.chosen_rewards, torch.zeros(4))


def _step(name: str, **params: float) -> tuple[float, float]:
    """One SGD step on a toy policy that starts at its reference; (margin before, after)."""
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(3, 5))  # (T, V)

    def logp(lg: torch.Tensor, toks: list[int]) -> torch.Tensor:
        return lg.log_softmax(-1)[torch.arange(3), T(toks)].sum()[None]

    c, r = [0, 1, 2], [3, 4, 1]
    ref_c, ref_r = logp(logits.detach(), c), logp(logits.detach(), r)
    lengths = {"chosen_lengths": T([3]), "rejected_lengths": T([3])}
    pc, pr = logp(logits, c), logp(logits, r)
    out: LossOutput = call_loss(name, pc, pr, ref_c, ref_r, **lengths, **params)
    out.losses.mean().backward()
    torch.optim.SGD([logits], lr=0.1).step()
    with torch.no_grad():
        return float((pc - pr).detach()), float(logp(logits, c) - logp(logits, r))


@pytest.mark.parametrize(
    ("name", "params"),
    [("exo_pair", {"beta": 0.1}), ("nca_pair", {"beta": 0.1}), ("bco_pair", {"beta": 0.1}),
     ("sppo_hard", {"beta": 0.1}), ("apo_zero", {"beta": 0.1}), ("apo_down", {"beta": 0.1}),
     ("discopop", {"beta": 0.1, "discopop_tau": 1.0}), ("sigmoid_norm", {"beta": 0.1}), ("dpop", {"beta": 0.1}),
     ("rdpo", {"beta": 0.1}), ("cal_dpo", {"beta": 0.1}), ("aot", {"beta": 0.1}),
     ("aot_unpaired", {"beta": 0.1}), ("simper", {})],
)
def test_one_step_raises_chosen_over_rejected(name: str, params: dict[str, float]):
    before, after = _step(name, **params)
    assert after > before + 1e-4


# ------------------------------------------------------------------ f-divergences


def test_f_divergence_scores_hand_computed():
    u = T([0.5])
    torch.testing.assert_close(score(u, "reverse_kl"), u)
    torch.testing.assert_close(score(u, "forward_kl"), T([1 - math.exp(-0.5)]))
    torch.testing.assert_close(score(u, "js_divergence"), T([math.log(2) + math.log(sig(0.5))]))
    # α = 0.5: (e^(−0.5·0.5) − 1)/(−0.5)
    torch.testing.assert_close(score(u, "alpha_divergence", 0.5),
                               T([(math.exp(-0.25) - 1) / -0.5]))
    torch.testing.assert_close(score(u, "alpha_divergence", 1.0), u)  # the limit: reverse KL


def test_f_divergence_through_the_config_and_its_checks():
    cfg = build_config(LossConfig, {"loss": "dpo", "f_divergence": "forward_kl"})
    h = (1 - math.exp(-1)) - (1 - math.exp(2))  # u_w = 1, u_l = -2
    out = pairwise_loss(cfg, *FOUR, **LENGTHS)
    torch.testing.assert_close(out.losses, T([softplus(0.1 * h)]))
    for keys, problem in (
        ({"loss": "nca_pair", "f_divergence": "js_divergence"}, "f_divergence: loss=nca_pair"),
        ({"loss": "dpo", "f_alpha": 0.3}, "f_alpha: only alpha_divergence reads it"),
        ({"loss": "dpo", "f_divergence": "kl"}, "f_divergence: expected one of"),
    ):
        with pytest.raises(ConfigError, match=re.escape(problem)):
            build_config(LossConfig, keys)


# ------------------------------------------------------------------ mixtures


def test_mixture_is_the_weighted_sum_with_each_term_logged():
    cfg = build_config(LossConfig, {"loss": "mixture", "mixture": ["dpo", "bco_pair", "sft"],
                                    "loss_weights": [0.8, 0.2, 1.0]})
    pc, pr, rc, rr = T([-1.0, -4.0]), T([-5.0, -2.0]), T([-2.0, -3.0]), T([-3.0, -3.0])
    lengths = {"chosen_lengths": T([2, 6]), "rejected_lengths": T([4, 1])}
    out = pairwise_loss(cfg, pc, pr, rc, rr, **lengths)
    d, b = dpo(pc, pr, rc, rr, beta=0.1).losses, bco_pair(pc, pr, rc, rr, beta=0.1).losses
    sft = (1.0 + 4.0) / (2 + 6)  # the batch's chosen tokens: −Σπc / Σ|yc|
    torch.testing.assert_close(out.losses.mean(), 0.8 * d.mean() + 0.2 * b.mean() + sft)
    torch.testing.assert_close(out.metrics["loss/sft"], T(sft))
    torch.testing.assert_close(out.metrics["loss/bco_pair"], b.mean())
    torch.testing.assert_close(out.chosen_rewards, dpo(pc, pr, rc, rr, beta=0.1).chosen_rewards)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"loss": "mixture"}, "mixture: loss=mixture needs"),
        ({"loss": "mixture", "mixture": ["dpo", "kto"]}, "mixture: 'kto' is not a pairwise"),
        ({"loss": "mixture", "mixture": ["dpo"], "loss_weights": [1, 2]}, "loss_weights: 2"),
        ({"loss": "dpo", "mixture": ["dpo"]}, "mixture: loss=dpo is not a mixture"),
        ({"loss": "mixture", "mixture": ["dpo"], "gamma": 0.5}, "gamma: loss=mixture"),
    ],
)
def test_mixture_config_problems(keys: dict[str, object], problem: str):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        build_config(LossConfig, keys)


def test_mixture_terms_take_their_own_keys():
    # simpo's γ reaches simpo inside a mixture; dpo's β defaults per term
    cfg = build_config(LossConfig, {"loss": "mixture", "mixture": ["dpo", "simpo"],
                                    "gamma": 0.5})
    out = pairwise_loss(cfg, *FOUR, **LENGTHS)
    simpo_loss = softplus(2.0 * (-1 / 2) - 2.0 * (-5 / 4) - 0.5)  # β = 2 (simpo's own default)
    torch.testing.assert_close(out.losses, dpo(*FOUR, beta=0.1).losses + simpo_loss)


