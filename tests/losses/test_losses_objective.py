"""From config keys to losses: β defaults, length normalisation, the NLL term, key checks,
weighted reduction and metrics."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tether.config import build_config, load_config
from tether.errors import ConfigError
from tether.losses import (
    LOSS_SPECS,
    LossConfig,
    add_nll,
    dpo,
    kto,
    loss_config,
    loss_stats,
    pairwise_loss,
    plackett_luce,
    ranked_loss,
    reduce_losses,
    rrhf,
    sft,
    unpaired_loss,
)

T = torch.tensor
FOUR = (T([-1.0]), T([-5.0]), T([-2.0]), T([-3.0]))  # h = 3
LENGTHS = {"chosen_lengths": T([2]), "rejected_lengths": T([4])}


def test_unset_beta_is_the_objectives_own_default():
    assert LossConfig(loss="dpo").resolved_beta() == 0.1
    assert LossConfig(loss="simpo").resolved_beta() == 2.0
    assert LossConfig(loss="simpo", beta=0.5).resolved_beta() == 0.5
    # simpo through pairwise_loss with beta unset: beta*pc/|yc| = 2 * -1/2 = -1,
    # beta*pr/|yr| = 2 * -5/4 = -2.5 ; -1 - -2.5 - gamma(1) = 0.5 ; loss = log(1 + e^-0.5)
    out = pairwise_loss(LossConfig(loss="simpo"), FOUR[0], FOUR[1], None, None, **LENGTHS)
    torch.testing.assert_close(out.losses, T([math.log1p(math.exp(-0.5))]))


def test_length_normalize_averages_before_a_summed_loss():
    # means: pc = -1/2, pr = -5/4, rc = -2/2, rr = -3/4 ; h = (-0.5 - -1) - (-1.25 - -0.75) = 1
    # ipo with beta = 0.5 (target 1/(2*0.5) = 1): (1 - 1)^2 = 0
    cfg = LossConfig(loss="ipo", beta=0.5, length_normalize=True)
    torch.testing.assert_close(pairwise_loss(cfg, *FOUR, **LENGTHS).losses, T([0.0]))
    # summed, the paper's default: h = 3 -> (3 - 1)^2 = 4
    summed = pairwise_loss(LossConfig(loss="ipo", beta=0.5), *FOUR, **LENGTHS)
    torch.testing.assert_close(summed.losses, T([4.0]))


def test_length_normalize_leaves_token_mean_objectives_alone():
    # simpo averages per token by definition; length_normalize must not average twice
    plain = pairwise_loss(LossConfig(loss="simpo"), FOUR[0], FOUR[1], None, None, **LENGTHS)

    cfg = LossConfig(loss="simpo", length_normalize=True)
    twice = pairwise_loss(cfg, FOUR[0], FOUR[1], None, None, **LENGTHS)
    torch.testing.assert_close(twice.losses, plain.losses)


def test_nll_weight_adds_the_token_mean_nll_of_chosen():
    # dpo(h = 3) + 0.5 * (-(-1)/2) = dpo + 0.25
    cfg = LossConfig(loss="dpo", nll_weight=0.5)
    out = pairwise_loss(cfg, *FOUR, **LENGTHS)
    torch.testing.assert_close(out.losses, dpo(*FOUR, beta=0.1).losses + 0.25)
    torch.testing.assert_close(out.metrics["nll"], T(0.5))
    # the rewards are those of the wrapped loss
    torch.testing.assert_close(out.chosen_rewards, dpo(*FOUR, beta=0.1).chosen_rewards)


def test_nll_term_lifts_the_chosen_log_prob_more_than_dpo_alone():
    def chosen_change(nll_weight: float) -> float:
        torch.manual_seed(0)
        logits = torch.nn.Parameter(torch.randn(3, 5))
        logp = lambda lg, toks: lg.log_softmax(-1)[torch.arange(3), T(toks)].sum()[None]  # noqa: E731
        ref_c, ref_r = logp(logits.detach(), [0, 1, 2]), logp(logits.detach(), [3, 4, 1])
        pc = logp(logits, [0, 1, 2])
        out = add_nll(dpo(pc, logp(logits, [3, 4, 1]), ref_c, ref_r, beta=0.1), pc, T([3]),
                      nll_weight)
        out.losses.sum().backward()
        torch.optim.SGD([logits], lr=0.1).step()
        return float(logp(logits, [0, 1, 2]).detach() - pc.detach())

    assert chosen_change(1.0) > chosen_change(0.0) + 1e-3


def test_reference_free_losses_take_no_reference_but_reference_losses_demand_one():
    assert not LOSS_SPECS["orpo"].needs_reference and not LOSS_SPECS["rrhf"].needs_reference
    pairwise_loss(LossConfig(loss="orpo"), FOUR[0], FOUR[1], None, None, **LENGTHS)
    with pytest.raises(ValueError, match="reference"):
        pairwise_loss(LossConfig(loss="dpo"), FOUR[0], FOUR[1], None, None, **LENGTHS)


def test_unpaired_and_ranked_entry_points_match_the_functions():
    args = (T([-3.0, -6.0]), T([-5.0, -5.0]), T([-4.0, -6.0]), T([-7.0, -5.0]), T([True, False]))
    cfg = LossConfig(loss="kto", kto_undesirable_weight=2.0)
    out = unpaired_loss(cfg, *args, lengths=T([1, 1]), kl_lengths=T([1, 1]))
    torch.testing.assert_close(out.losses, kto(*args, beta=0.1, kto_undesirable_weight=2.0).losses)
    pol, ref = T([[-1.0, -3.0, -5.0]]), T([[-3.0, -4.0, -5.0]])
    kw = {"response_lengths": T([[1, 1, 1]]), "response_scores": T([[3.0, 2.0, 1.0]])}
    pl = ranked_loss(LossConfig(loss="plackett_luce", beta=1.0), pol, ref, **kw)
    torch.testing.assert_close(pl.losses, plackett_luce(pol, ref, beta=1.0).losses)
    rr = ranked_loss(LossConfig(loss="rrhf"), pol, None, **kw)
    torch.testing.assert_close(rr.losses, rrhf(pol, **kw).losses)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"loss": "dpo", "gamma": 0.5}, "gamma: loss=dpo does not use it (used by simpo)"),
        ({"loss": "ipo", "label_smoothing": 0.1}, "label_smoothing: loss=ipo"),
        ({"loss": "orpo", "beta": 0.2}, "beta: loss=orpo does not use it"),
        ({"loss": "orpo", "nll_weight": 0.1}, "nll_weight: applies to pairwise"),
        ({"loss": "kto", "nll_weight": 0.1}, "nll_weight: applies to pairwise"),
        ({"loss": "simpo", "length_normalize": True}, "length_normalize: loss=simpo"),
        ({"loss": "rrhf", "rank_pairs": "best_vs_worst"}, "rank_pairs: loss=rrhf does not"),
        ({"loss": "dpo", "beta": 0.0}, "beta: must be > 0"),
        ({"loss": "robust", "label_smoothing": 0.5}, "label_smoothing: must be in [0, 0.5)"),
        ({"loss": "kto", "kto_desirable_weight": 0}, "kto_desirable_weight: must be > 0"),
        ({"loss": "dpo", "rank_pairs": "best"}, "rank_pairs: expected one of"),
        ({"loss": "dpp"}, "loss: unknown 'dpp'"),
    ],
)
def test_config_problems_are_reported(keys: dict[str, object], problem: str):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        build_config(LossConfig, keys)


def test_config_loads_from_overrides():
    cfg = load_config(LossConfig, overrides=["loss=simpo", "gamma=0.5", "beta=2.5"])
    assert (cfg.loss, cfg.gamma, cfg.resolved_beta()) == ("simpo", 0.5, 2.5)
    assert load_config(LossConfig, overrides=["nll_weight=1", "loss=dpo"]).nll_weight == 1.0


def test_loss_config_picks_the_keys_out_of_a_larger_config():
    class Big:
        loss, beta, gamma, lr = "simpo", None, 0.3, 1e-6

    assert loss_config(Big()) == LossConfig(loss="simpo", gamma=0.3)


def test_reduce_losses_weighted_mean():
    # (1*1 + 0.5*4) / 1.5 = 2
    torch.testing.assert_close(reduce_losses(T([1.0, 4.0]), T([1.0, 0.5])), T(2.0))
    torch.testing.assert_close(reduce_losses(T([1.0, 4.0])), T(2.5))


def test_stats_follow_the_objective():
    pair = loss_stats(dpo(*FOUR, beta=0.1), LOSS_SPECS["dpo"])
    # rewards 0.1 and -0.2 -> accuracy 1, margin 0.3
    torch.testing.assert_close(pair["rewards/accuracies"], T([1.0]))
    torch.testing.assert_close(pair["rewards/margins"], T([0.3]))
    labels = T([True, False, True])
    out = kto(T([-3.0, -6.0, -4.0]), T([-5.0, -5.0, -5.0]), T([-4.0]), T([-7.0]), labels,
              beta=0.1)
    unpaired = loss_stats(out, LOSS_SPECS["kto"], labels)
    assert "rewards/accuracies" not in unpaired
    # desirable rows 0 and 2: 0.1*2, 0.1*1 ; undesirable row 1: 0.1*-1 ; NaN elsewhere
    torch.testing.assert_close(unpaired["rewards/chosen"], T([0.2, math.nan, 0.1]),
                               equal_nan=True)
    torch.testing.assert_close(unpaired["rewards/rejected"], T([math.nan, -0.1, math.nan]),
                               equal_nan=True)
    torch.testing.assert_close(unpaired["kl"], T([3.0, 3.0, 3.0]))  # z0 on every row
    assert set(loss_stats(sft(T([-6.0]), T([3])), LOSS_SPECS["sft"])) == {"loss"}
