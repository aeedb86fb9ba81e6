"""Pairwise objectives (dpo/cDPO, robust, ipo, hinge), reference-free ones (simpo, orpo, sft)
and the registry: hand-computed values, one optimizer step on a toy policy, and invariants."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from tether.errors import ConfigError
from tether.losses import (
    LOSS_SPECS,
    LOSSES,
    LossOutput,
    call_loss,
    dpo,
    hinge,
    ipo,
    log_odds,
    orpo,
    robust,
    sft,
    simpo,
)

T = torch.tensor
CHOSEN, REJECTED = [0, 1, 2], [3, 4, 1]  # token ids of a toy chosen / rejected completion


def softplus(x: float) -> float:
    """−log σ(x) = log(1 + e^−x)."""
    return math.log1p(math.exp(-x))


def seq_logp(logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Summed log-prob of ``tokens`` under position-wise logits (T, V): a policy in miniature."""
    return logits.log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)].sum()[None]


def one_step(objective: Callable[..., LossOutput], lr: float = 0.1) -> tuple[float, float, float]:
    """One SGD step of ``objective`` on a toy policy that starts equal to its reference.

    Returns (margin before, margin after, change of the chosen log-prob), where margin =
    log π(chosen) − log π(rejected).
    """
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(3, 5))  # (T, V)
    ref_c, ref_r = seq_logp(logits.detach(), CHOSEN), seq_logp(logits.detach(), REJECTED)
    lengths = T([float(len(CHOSEN))])
    pc, pr = seq_logp(logits, CHOSEN), seq_logp(logits, REJECTED)
    before, chosen_before = float((pc - pr).detach()), float(pc.detach())
    out = objective(pc, pr, ref_c, ref_r, chosen_lengths=lengths, rejected_lengths=lengths)
    out.losses.mean().backward()
    torch.optim.SGD([logits], lr=lr).step()
    with torch.no_grad():
        pc2, pr2 = seq_logp(logits, CHOSEN), seq_logp(logits, REJECTED)
    return before, float(pc2 - pr2), float(pc2) - chosen_before


# ------------------------------------------------------------------ dpo and cDPO


def test_dpo_loss_hand_computed():
    # h = (-1 - -2) - (-5 - -3) = 3 ; beta*h = 0.3 ; -log sigmoid(0.3) = log(1 + e^-0.3)
    out = dpo(*map(T, ([-1.0], [-5.0], [-2.0], [-3.0])), beta=0.1)
    torch.testing.assert_close(out.losses, T([math.log1p(math.exp(-0.3))]))
    # rewards = beta * (policy - reference): 0.1 * (-1 - -2) = 0.1 ; 0.1 * (-5 - -3) = -0.2
    torch.testing.assert_close(out.chosen_rewards, T([0.1]))
    torch.testing.assert_close(out.rejected_rewards, T([-0.2]))


def test_cdpo_label_smoothing_matches_its_formula():
    # h = 3, beta*h = 0.3, eps = 0.25:
    # 0.75 * -log s(0.3) + 0.25 * -log s(-0.3) = 0.75 * log(1 + e^-0.3) + 0.25 * log(1 + e^0.3)
    #   = 0.75 * 0.5543552 + 0.25 * 0.8543552 = 0.6293552
    out = dpo(*map(T, ([-1.0], [-5.0], [-2.0], [-3.0])), beta=0.1, label_smoothing=0.25)
    expected = 0.75 * softplus(0.3) + 0.25 * softplus(-0.3)
    torch.testing.assert_close(out.losses, T([expected]))
    assert abs(expected - 0.6293552) < 1e-6


def test_dpo_policy_equal_to_reference_gives_log2_and_zero_rewards():
    torch.manual_seed(0)
    pc, pr = -10 * torch.rand(5), -10 * torch.rand(5)
    out = dpo(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    torch.testing.assert_close(out.losses, torch.full((5,), math.log(2)))
    torch.testing.assert_close(out.chosen_rewards, torch.zeros(5))
    torch.testing.assert_close(out.rejected_rewards, torch.zeros(5))


def test_rewards_carry_no_gradient():
    pc = T([-1.0], requires_grad=True)
    out = dpo(pc, T([-5.0]), T([-2.0]), T([-3.0]), beta=0.1)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


# ------------------------------------------------------------------ robust


def test_robust_hand_computed():
    # eps = 0.25, beta*h = 0.3:
    # [-0.75 log s(0.3) + 0.25 log s(-0.3)] / (1 - 0.5)
    #   = [0.75 * 0.5543552 - 0.25 * 0.8543552] / 0.5 = 0.2021776 / 0.5 = 0.4043552
    out = robust(*map(T, ([-1.0], [-5.0], [-2.0], [-3.0])), beta=0.1, label_smoothing=0.25)
    expected = (0.75 * softplus(0.3) - 0.25 * softplus(-0.3)) / 0.5
    torch.testing.assert_close(out.losses, T([expected]))
    assert abs(out.losses.item() - 0.4043552) < 1e-6


def test_robust_with_eps_zero_equals_dpo():
    torch.manual_seed(1)
    logps = [-20 * torch.rand(6) for _ in range(4)]
    torch.testing.assert_close(
        robust(*logps, beta=0.3, label_smoothing=0.0).losses, dpo(*logps, beta=0.3).losses
    )


def test_robust_is_unbiased_for_the_clean_dpo_loss():
    # Chowdhury et al.'s point: with labels flipped at rate eps, the expected robust loss
    # (1-eps)*L(h) + eps*L(-h) is the clean DPO loss -log s(beta*h).
    torch.manual_seed(2)
    pc, pr, rc, rr = (-20 * torch.rand(6) for _ in range(4))
    eps = 0.2
    expected = (1 - eps) * robust(pc, pr, rc, rr, beta=0.1, label_smoothing=eps).losses + eps * (
        robust(pr, pc, rr, rc, beta=0.1, label_smoothing=eps).losses
    )
    torch.testing.assert_close(expected, dpo(pc, pr, rc, rr, beta=0.1).losses)


def test_robust_rejects_eps_of_one_half():
    with pytest.raises(ConfigError, match="label_smoothing"):
        robust(*map(T, ([-1.0], [-5.0], [-2.0], [-3.0])), beta=0.1, label_smoothing=0.5)


# ------------------------------------------------------------------ ipo and hinge


def test_ipo_hand_computed():
    # h = 3, 1/(2*beta) = 1/0.2 = 5 ; (3 - 5)^2 = 4
    out = ipo(*map(T, ([-1.0], [-5.0], [-2.0], [-3.0])), beta=0.1)
    torch.testing.assert_close(out.losses, T([4.0]))


def test_ipo_at_its_target_has_zero_loss_and_zero_gradient():
    # beta = 0.25 -> target h = 1/(2*0.25) = 2 ; pc - rc = 1.5, pr - rr = -0.5 -> h = 2
    pc, pr = T([-1.0], requires_grad=True), T([-4.0], requires_grad=True)
    out = ipo(pc, pr, T([-2.5]), T([-3.5]), beta=0.25)
    out.losses.sum().backward()
    assert out.losses.item() == 0.0
    assert pc.grad is not None and pr.grad is not None
    assert pc.grad.item() == 0.0 and pr.grad.item() == 0.0


def test_hinge_hand_computed_and_flat_past_the_margin():
    # h = 3, beta = 0.1: max(0, 1 - 0.3) = 0.7 ; h = 20: max(0, 1 - 2) = 0
    pc = T([-1.0, 16.0], requires_grad=True)
    out = hinge(pc, T([-5.0, -5.0]), T([-2.0, -2.0]), T([-3.0, -3.0]), beta=0.1)
    torch.testing.assert_close(out.losses, T([0.7, 0.0]))
    out.losses.sum().backward()
    assert pc.grad is not None
    torch.testing.assert_close(pc.grad, T([-0.1, 0.0]))  # d/dpc (1 - 0.1 h) = -0.1


# ------------------------------------------------------------------ simpo


def test_simpo_hand_computed():
    # beta*pc/|yc| = 2 * -6/3 = -4 ; beta*pr/|yr| = 2 * -12/4 = -6 ; -4 - -6 - gamma(1) = 1
    # loss = -log s(1) = log(1 + e^-1) = 0.3132617
    out = simpo(
        T([-6.0]), T([-12.0]), None, None,
        chosen_lengths=T([3]), rejected_lengths=T([4]), beta=2.0, gamma=1.0,
    )
    torch.testing.assert_close(out.losses, T([softplus(1.0)]))
    torch.testing.assert_close(out.chosen_rewards, T([-4.0]))
    torch.testing.assert_close(out.rejected_rewards, T([-6.0]))


def test_simpo_ignores_the_reference_and_defaults_to_beta_two():
    spec = LOSS_SPECS["simpo"]
    assert not spec.needs_reference and spec.default_beta == 2.0
    args = (T([-6.0]), T([-12.0]))
    lengths = {"chosen_lengths": T([3]), "rejected_lengths": T([4])}
    a = simpo(*args, None, None, **lengths, beta=2.0)
    b = simpo(*args, T([-1.0]), T([-1.0]), **lengths, beta=2.0)
    torch.testing.assert_close(a.losses, b.losses)


# ------------------------------------------------------------------ orpo


def test_log_odds_hand_computed_and_stable_near_probability_one():
    # log odds(-0.5) = -0.5 - log(1 - e^-0.5) = -0.5 - log(0.3934693) = 0.4327521
    torch.testing.assert_close(log_odds(T([-0.5])), T([-0.5 - math.log(1 - math.exp(-0.5))]))
    # p = -1e-6: 1 - e^p = 1e-6 (to 6 digits) -> log odds = -1e-6 - log(1e-6) = 13.815510;
    # the naive float32 log(1 - exp(p)) is off in the second digit there.
    p = T([-1e-6])
    torch.testing.assert_close(log_odds(p), T([-1e-6 - math.log(-math.expm1(-1e-6))]))
    naive = p - torch.log(1 - torch.exp(p))
    assert abs(naive.item() - 13.815510) > 1e-2
    assert torch.isfinite(log_odds(T([0.0]))).all()  # P = 1 exactly: clamped, finite


def test_orpo_hand_computed():
    # pc = -2/4 = -0.5, pr = -6/3 = -2
    # log odds(-0.5) = 0.4327521 ; log odds(-2) = -2 - log(1 - e^-2) = -1.8545865
    # ratio = 2.2873386 ; loss = 0.5 + 0.1 * log(1 + e^-2.2873386) = 0.5 + 0.1 * 0.0967110
    lo = lambda p: p - math.log(1 - math.exp(p))  # noqa: E731
    ratio = lo(-0.5) - lo(-2.0)
    out = orpo(
        T([-2.0]), T([-6.0]), None, None,
        chosen_lengths=T([4]), rejected_lengths=T([3]), orpo_lambda=0.1,
    )
    torch.testing.assert_close(out.losses, T([0.5 + 0.1 * softplus(ratio)]))
    assert abs(out.losses.item() - 0.5096711) < 1e-6
    torch.testing.assert_close(out.metrics["log_odds_ratio"], T(ratio))
    torch.testing.assert_close(out.metrics["nll"], T(0.5))


# ------------------------------------------------------------------ sft and the registry


def test_sft_is_token_mean_nll():
    # -(-6)/3 = 2 ; -(-2)/4 = 0.5
    out = sft(T([-6.0, -2.0]), T([3, 4]))
    torch.testing.assert_close(out.losses, T([2.0, 0.5]))


def test_call_loss_passes_only_declared_keywords():
    out = call_loss(
        "ipo", *map(T, ([-1.0], [-5.0], [-2.0], [-3.0])),
        beta=0.1, label_smoothing=0.4, gamma=9.0, chosen_lengths=T([3]),
    )
    torch.testing.assert_close(out.losses, T([4.0]))  # label_smoothing etc. never reached ipo


def test_every_registered_loss_has_a_paper_docstring_and_spec():
    for name, fn in LOSSES.items():
        assert fn.__doc__ and ("arXiv" in fn.__doc__ or name == "sft"), name
        assert name in LOSS_SPECS


# ------------------------------------------------------------------ one optimizer step


def _with(fn: Callable[..., LossOutput], **params: float) -> Callable[..., LossOutput]:
    return lambda *logps, **lengths: call_loss(fn.__name__, *logps, **lengths, **params)


@pytest.mark.parametrize(
    "objective",
    [
        _with(dpo, beta=0.1),
        _with(dpo, beta=0.1, label_smoothing=0.2),
        _with(robust, beta=0.1, label_smoothing=0.2),
        _with(ipo, beta=0.1),
        _with(hinge, beta=0.1),
        _with(simpo, beta=2.0, gamma=1.0),
        _with(orpo, orpo_lambda=0.1),
    ],
    ids=["dpo", "cdpo", "robust", "ipo", "hinge", "simpo", "orpo"],
)
def test_one_step_raises_chosen_over_rejected(objective: Callable[..., LossOutput]):
    before, after, _ = one_step(objective)
    assert after > before + 1e-4


def test_orpo_step_also_raises_the_chosen_log_prob():
    # its NLL term pulls the chosen completion up, not just the margin
    _, _, chosen_change = one_step(_with(orpo, orpo_lambda=0.1))
    assert chosen_change > 0
