"""KTO (unpaired), Plackett–Luce and RRHF (ranked), and the expansion of rankings into pairs."""

from __future__ import annotations

import math

import pytest
import torch

from tether.losses import (
    RankedPair,
    RankMode,
    dpo,
    expand_ranking,
    kto,
    mismatched_indices,
    plackett_luce,
    ranking_order,
    rrhf,
    scores_from_ranking,
    split_pair,
)

T = torch.tensor


def seq_logp(logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Summed log-prob of ``tokens`` under position-wise logits (T, V)."""
    return logits.log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)].sum()


# ------------------------------------------------------------------ kto


def test_kto_hand_computed():
    # r = policy - reference: desirable -3 - -5 = 2 ; undesirable -6 - -5 = -1
    # mismatched pairs: (-4 - -7) = 3 and (-6 - -5) = -1 -> mean 1 -> z0 = max(0, 1) = 1
    # desirable:   lD * (1 - s(0.1 * (2 - 1)))  = 1 * (1 - s(0.1)) = 0.4750208
    # undesirable: lU * (1 - s(0.1 * (1 - -1))) = 2 * (1 - s(0.2)) = 2 * 0.4501660 = 0.9003320
    out = kto(
        T([-3.0, -6.0]), T([-5.0, -5.0]), T([-4.0, -6.0]), T([-7.0, -5.0]), T([True, False]),
        beta=0.1, kto_desirable_weight=1.0, kto_undesirable_weight=2.0,
    )
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    torch.testing.assert_close(out.losses, T([1 - sig(0.1), 2 * (1 - sig(0.2))]))
    torch.testing.assert_close(out.metrics["kl"], T(1.0))
    # rewards beta*r split by label: desirable [0.2], undesirable [-0.1]
    torch.testing.assert_close(out.chosen_rewards, T([0.2]))
    torch.testing.assert_close(out.rejected_rewards, T([-0.1]))


def test_kto_reference_point_is_clamped_at_zero():
    # mismatched pairs: (-6 - -5) = -1, (-7 - -5) = -2 -> mean -1.5 -> z0 = 0
    # desirable r = 2: 1 - s(0.2)
    out = kto(T([-3.0]), T([-5.0]), T([-6.0, -7.0]), T([-5.0, -5.0]), T([True]), beta=0.1)
    torch.testing.assert_close(out.metrics["kl"], T(0.0))
    torch.testing.assert_close(out.losses, T([1 - 1 / (1 + math.exp(-0.2))]))


def test_kto_reference_point_carries_no_gradient():
    policy_kl = T([-4.0, -6.0], requires_grad=True)
    policy = T([-3.0, -6.0], requires_grad=True)
    out = kto(policy, T([-5.0, -5.0]), policy_kl, T([-7.0, -5.0]), T([True, False]), beta=0.1)
    out.losses.sum().backward()
    assert policy.grad is not None and policy.grad.abs().sum() > 0
    assert policy_kl.grad is None  # z0 enters the loss (tested above) but not the graph


def test_kto_step_raises_desirable_and_lowers_undesirable():
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(3, 5))
    good, bad, other = [0, 1, 2], [3, 4, 1], [2, 2, 0]
    ref = logits.detach()
    ref_logps = torch.stack([seq_logp(ref, good), seq_logp(ref, bad)])
    ref_kl = torch.stack([seq_logp(ref, other), seq_logp(ref, good)])
    logps = torch.stack([seq_logp(logits, good), seq_logp(logits, bad)])
    kl = torch.stack([seq_logp(logits, other), seq_logp(logits, good)])
    kto(logps, ref_logps, kl, ref_kl, T([True, False]), beta=0.1).losses.sum().backward()
    torch.optim.SGD([logits], lr=0.5).step()
    with torch.no_grad():
        assert seq_logp(logits, good) > logps[0] + 1e-4
        assert seq_logp(logits, bad) < logps[1] - 1e-4


def test_mismatched_indices_never_pair_a_row_with_itself():
    for n in range(2, 7):
        idx = mismatched_indices(n)
        assert sorted(idx) == list(range(n)) and all(i != j for i, j in enumerate(idx))


def test_split_pair():
    assert split_pair("x", "good", "bad") == [("x", "good", True), ("x", "bad", False)]


# ------------------------------------------------------------------ plackett-luce


def test_plackett_luce_hand_computed():
    # rho = beta*(policy - reference) = [2, 1, 0] with beta = 1, best first:
    # -[(2 - log(e^2 + e + 1)) + (1 - log(e + 1)) + (0 - 0)]
    #   = -[(2 - 2.4076059) + (1 - 1.3132617)] = 0.4076059 + 0.3132617 = 0.7208676
    out = plackett_luce(T([[-1.0, -3.0, -5.0]]), T([[-3.0, -4.0, -5.0]]), beta=1.0)
    e = math.e
    expected = -((2 - math.log(e**2 + e + 1)) + (1 - math.log(e + 1)))
    torch.testing.assert_close(out.losses, T([expected]))
    assert abs(expected - 0.7208676) < 1e-6
    torch.testing.assert_close(out.chosen_rewards, T([2.0]))
    torch.testing.assert_close(out.rejected_rewards, T([0.0]))
    torch.testing.assert_close(out.metrics["ranking_accuracy"], T(1.0))


def test_plackett_luce_with_two_responses_equals_dpo():
    torch.manual_seed(3)
    pc, pr, rc, rr = (-20 * torch.rand(6) for _ in range(4))
    pl = plackett_luce(torch.stack([pc, pr], -1), torch.stack([rc, rr], -1), beta=0.3)
    ref = dpo(pc, pr, rc, rr, beta=0.3)
    torch.testing.assert_close(pl.losses, ref.losses)
    torch.testing.assert_close(pl.chosen_rewards, ref.chosen_rewards)
    torch.testing.assert_close(pl.rejected_rewards, ref.rejected_rewards)


def test_plackett_luce_masked_responses_drop_out_with_finite_gradients():
    # row 0 has 3 real responses and a padding slot whose value must not matter
    policy = T([[-1.0, -3.0, -5.0, 123.0]], requires_grad=True)
    reference = T([[-3.0, -4.0, -5.0, 0.0]])
    mask = T([[True, True, True, False]])
    out = plackett_luce(policy, reference, beta=1.0, response_mask=mask)
    three = plackett_luce(policy[:, :3].detach(), reference[:, :3], beta=1.0)
    torch.testing.assert_close(out.losses, three.losses.detach())
    torch.testing.assert_close(out.rejected_rewards, T([0.0]))  # worst real response
    out.losses.sum().backward()
    assert policy.grad is not None and torch.isfinite(policy.grad).all()
    assert policy.grad[0, 3] == 0


def test_plackett_luce_step_raises_best_over_worst():
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(3, 5))
    responses = [[0, 1, 2], [3, 4, 1], [2, 2, 0]]  # best first
    ref = torch.stack([seq_logp(logits.detach(), r) for r in responses])[None]
    logps = torch.stack([seq_logp(logits, r) for r in responses])[None]  # (1, 3)
    plackett_luce(logps, ref, beta=0.1).losses.sum().backward()
    torch.optim.SGD([logits], lr=0.5).step()
    with torch.no_grad():
        after = torch.stack([seq_logp(logits, r) for r in responses])
    assert after[0] - after[2] > logps[0, 0] - logps[0, 2] + 1e-4


# ------------------------------------------------------------------ rrhf


def test_rrhf_hand_computed():
    # p = sums/lengths = [-6/4, -2/2, -9/3] = [-1.5, -1, -3] ; scores [3, 1, 2] (best: 0)
    # worse/better pairs: (1 < 0): max(0, -1 - -1.5) = 0.5 ; (1 < 2): max(0, -1 - -3) = 2 ;
    # (2 < 0): max(0, -3 - -1.5) = 0 -> L_rank = 2.5 ; L_ft = -p_0 = 1.5 ; loss = 4.0
    out = rrhf(
        T([[-6.0, -2.0, -9.0]]),
        response_lengths=T([[4, 2, 3]]),
        response_scores=T([[3.0, 1.0, 2.0]]),
    )
    torch.testing.assert_close(out.losses, T([4.0]))
    torch.testing.assert_close(out.chosen_rewards, T([-1.5]))  # p of the best (score 3)
    torch.testing.assert_close(out.rejected_rewards, T([-1.0]))  # p of the worst (score 1)
    torch.testing.assert_close(out.metrics["nll"], T(1.5))
    # pairs in order: (0 > 2) agrees (-1.5 > -3); (0 > 1) and (2 > 1) do not -> 1/3
    torch.testing.assert_close(out.metrics["ranking_accuracy"], T(1 / 3))


def test_rrhf_ties_and_padding_do_not_enter():
    # tied scores (2, 2) give no pair; the masked 3rd response is ignored though it would
    # otherwise be the "best" and be ranked wrongly
    out = rrhf(
        T([[-1.0, -3.0, 0.0]]),
        response_lengths=T([[1, 1, 1]]),
        response_scores=T([[2.0, 2.0, 9.0]]),
        response_mask=T([[True, True, False]]),
    )
    torch.testing.assert_close(out.losses, T([1.0]))  # L_rank 0 + NLL of response 0


def test_rrhf_step_raises_best_over_worst():
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(3, 5))
    responses = [[0, 1, 2], [3, 4, 1], [2, 2, 0]]
    scores = T([[1.0, 3.0, 2.0]])
    logps = torch.stack([seq_logp(logits, r) for r in responses])[None]
    p = logps.detach() / 3
    assert p[0, 1] < p[0, 0] or p[0, 1] < p[0, 2]  # the start violates the ranking
    rrhf(logps, response_lengths=T([[3, 3, 3]]), response_scores=scores).losses.sum().backward()
    torch.optim.SGD([logits], lr=0.5).step()
    with torch.no_grad():
        after = torch.stack([seq_logp(logits, r) for r in responses])
    assert after[1] - after[0] > logps[0, 1] - logps[0, 0] + 1e-4  # best (1) over worst (0)


# ------------------------------------------------------------------ rankings into pairs


def test_ranking_order_and_scores_from_ranking():
    assert ranking_order([1.0, 3.0, 2.0]) == [1, 2, 0]
    assert ranking_order([2.0, 5.0, 2.0]) == [1, 0, 2]  # ties keep row order
    assert ranking_order(scores_from_ranking([2, 1, 3])) == [1, 0, 2]  # rank 1 = best


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("all", [(1, 2), (1, 0), (2, 0)]),
        ("best_vs_rest", [(1, 2), (1, 0)]),
        ("best_vs_worst", [(1, 0)]),
    ],
)
def test_expand_ranking_modes(mode: RankMode, expected: list[tuple[int, int]]):
    pairs = expand_ranking([1.0, 3.0, 2.0], mode)
    assert [(p.chosen, p.rejected) for p in pairs] == expected
    assert all(p.weight == 1.0 for p in pairs)


def test_expand_ranking_weights_by_gap_over_range():
    # scores [1, 3, 2]: range 2 ; gaps (1,2) = 1 -> 0.5 ; (1,0) = 2 -> 1 ; (2,0) = 1 -> 0.5
    pairs = expand_ranking([1.0, 3.0, 2.0], "all", weight_by_gap=True)
    assert pairs == [RankedPair(1, 2, 0.5), RankedPair(1, 0, 1.0), RankedPair(2, 0, 0.5)]


def test_expand_ranking_never_pairs_ties():
    assert expand_ranking([2.0, 2.0, 1.0], "all") == [RankedPair(0, 2, 1.0), RankedPair(1, 2, 1.0)]
    assert expand_ranking([2.0, 2.0, 1.0], "best_vs_rest") == [RankedPair(0, 2, 1.0)]
    assert expand_ranking([4.0, 4.0], "all") == []
    with pytest.raises(ValueError, match="at least 2"):
        expand_ranking([1.0])
