"""Per-token and per-pair weights that change what a pairwise objective sees: LD-DPO and WPO.

- **LD-DPO** (Liu et al. 2024, *Length Desensitization in Direct Preference Optimization*, arXiv
  2409.06411): each completion's log-prob becomes the sum over the pair's shared-length
  prefix plus α × the sum over the rest,

      log π̃(y|x) = Σ_{t <= l_p} log π(y_t|·) + α · Σ_{t > l_p} log π(y_t|·)

  with l_p = min(|y_w|, |y_l|), for the policy and the reference alike. ``ld_token_weights``
  gives the per-token weights (1, α, or 0 off the completion); the log-prob scorers sum
  ``weight × log-prob`` when a batch's ``completion_mask`` carries them,
  so no per-token tensor leaves the chunked LM head.
- **WPO** (Zhou et al. 2024, *WPO: Enhancing RLHF with Weighted Preference Optimization*, arXiv
  2406.11827, Eq. 2 in TRL 1.16's form): each pair's loss is scaled by
  w(x, y_w) · w(x, y_l), with the length-normalised, vocabulary-aligned probability

      w(x, y) = exp( (1/|y|) Σ_t [ log π(y_t|·) − log Σ_v π(v|·)² ] )

  under the current policy, detached (no gradient flows through the weight).
"""

from __future__ import annotations

import torch

__all__ = ["ld_token_weights", "wpo_weights"]

Tensor = torch.Tensor


def ld_token_weights(completion_mask: Tensor, pairs: int, alpha: float) -> Tensor:
    """LD-DPO's per-token weights ``(2B, T)`` fp32 for a pair batch (chosen rows, then rejected).

    Completion token i (counted from 1 among the *scored* positions 1..T-1, as the scorers
    count them) weighs 1 when i <= l_p = min(|y_w|, |y_l|) of its pair, α after it; positions
    off the completion weigh 0. Column 0 keeps the mask's value (it is never scored).
    """
    scored = completion_mask[:, 1:].float()  # (2B, T-1)
    position = scored.cumsum(1)  # (2B, T-1) i-th completion token
    lengths = scored.sum(1)  # (2B,)
    shared = torch.minimum(lengths[:pairs], lengths[pairs:]).repeat(2)[:, None]  # (2B, 1)
    weights = torch.where(position <= shared, 1.0, alpha) * scored  # (2B, T-1)
    return torch.cat([completion_mask[:, :1].float(), weights], dim=1)


def wpo_weights(
    chosen_aligned: Tensor,
    rejected_aligned: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """WPO pair weights ``(B,)``, detached: w(x, y_w) · w(x, y_l).

    ``*_aligned`` are Σ_t [log π(y_t|·) − log Σ_v π(v|·)²] over each completion ``(B,)``;
    empty completions count as one token (TRL's ``clamp_min(1)``).
    """
    chosen = chosen_aligned / chosen_lengths.clamp(min=1).to(chosen_aligned.dtype)
    rejected = rejected_aligned / rejected_lengths.clamp(min=1).to(rejected_aligned.dtype)
    return torch.exp(chosen + rejected).detach()
