"""From config to loss: the loss keys, their checks, and one call per data shape for the loop.

``LossConfig`` lists the flat config keys the objectives read, with defaults and help; the
training config carries the same fields and ``loss_config(cfg)`` picks them out. The loop then
calls ``pairwise_loss``, ``unpaired_loss`` or ``ranked_loss`` with log-probs *summed* over
completion tokens plus the token counts; these apply what is common to every objective (β's
per-objective default, ``length_normalize``, the NLL term) so the loss functions stay pure
formulas. ``loss_stats`` turns a ``LossOutput`` into the per-row numbers worth logging.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from tether.fields import opt
from tether.losses.base import LOSS_SPECS, LOSSES, LossOutput, LossSpec, token_mean
from tether.losses.fdivergence import F_DIVERGENCES
from tether.losses.mixture import PAIR_TERMS, LossTerm

__all__ = [
    "LossConfig",
    "add_nll",
    "loss_config",
    "loss_stats",
    "pairwise_loss",
    "ranked_loss",
    "reduce_losses",
    "unpaired_loss",
]

Tensor = torch.Tensor


def _param_keys() -> list[str]:
    """Keys that only some objectives read: the config fields a registered loss names in its
    signature (beta aside). Setting one the chosen objective ignores is an error rather than a
    silent no-op."""
    named = {p for fn in LOSSES.values() for p in inspect.signature(fn).parameters}
    return [f.name for f in dataclasses.fields(LossConfig)
            if f.name not in ("loss", "beta") and f.name in named]


def _loss_help() -> str:
    return f"objective, a name in tether.losses.LOSSES: {', '.join(LOSSES)}"


@dataclass(frozen=True)
class LossConfig:
    """The flat config keys of the objectives (``TrainConfig`` carries the same fields)."""

    loss: str = opt("dpo", _loss_help)
    beta: float | None = opt(
        None, "inverse temperature β of the implicit reward; unset: the objective's own "
        "default (0.1; simpo 2.0)", gt=0
    )
    label_smoothing: float = opt(
        0.0, "ε, the assumed rate of flipped labels: dpo becomes cDPO, robust needs it",
        ge=0, lt=0.5,
    )
    length_normalize: bool = opt(
        False, "average log-probs per token before the loss (dpo, ipo, ...); simpo, orpo and "
        "rrhf always do"
    )
    gamma: float = opt(1.0, "simpo: target reward margin γ (Meng et al. 2024)", ge=0)
    orpo_lambda: float = opt(
        0.1, "orpo: weight λ of the odds-ratio term (Hong et al. 2024)", ge=0
    )
    nll_weight: float = opt(
        0.0, "add this × the chosen completion's token-mean NLL to a pairwise loss (RPO, "
        "Pang et al. 2024)", ge=0
    )
    kto_desirable_weight: float = opt(1.0, "kto: weight λD of desirable rows", gt=0)
    kto_undesirable_weight: float = opt(1.0, "kto: weight λU of undesirable rows", gt=0)
    rank_pairs: Literal["all", "best_vs_rest", "best_vs_worst"] = opt(
        "all", "ranked data with a pairwise objective: which pairs each ranking gives"
    )
    rank_weight_by_gap: bool = opt(
        False, "ranked data: weight each pair by its score gap over the row's score range"
    )
    discopop_tau: float = opt(
        0.05, "discopop: temperature τ of the log-ratio modulation", gt=0
    )
    dpop_lambda: float = opt(
        50.0, "dpop: weight λ of the penalty max(0, log π_ref(y_w) − log πθ(y_w))", ge=0
    )
    rdpo_alpha: float = opt(
        0.01, "rdpo: weight α of the length gap |y_w| − |y_l|", ge=0
    )
    f_divergence: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = opt(
        "reverse_kl", "f-DPO regulariser of margin objectives (dpo, robust, hinge, exo_pair, "
        "discopop, sigmoid_norm); reverse_kl is DPO's own"
    )
    f_alpha: float = opt(
        0.5, "alpha_divergence: α (TRL's f_alpha_divergence_coef; the paper's α is 1 − α)",
        gt=0,
    )
    mixture: list[str] = opt(
        [], "loss=mixture: the pairwise objectives to add up, e.g. [dpo, bco_pair, sft] (MPO)"
    )
    loss_weights: list[float] = opt(
        [], "loss=mixture: one weight per objective in mixture (empty: all 1)", ge=0
    )
    ld_alpha: float | None = opt(
        None, "LD-DPO (Liu et al. 2024): weight α of the completion tokens past the pair's "
        "shorter length, for policy and reference; unset: off (= 1)", gt=0, le=1,
    )
    use_weighting: bool = opt(
        False, "WPO (Zhou et al. 2024): scale each pair's loss by the policy's length-normalised "
        "probabilities of both completions (TRL's use_weighting)"
    )

    @property
    def spec(self) -> LossSpec:
        return LOSS_SPECS[self.loss]

    def resolved_beta(self) -> float:
        """β as set, or the objective's own default when the run did not set one."""
        return self.spec.default_beta if self.beta is None else self.beta

    @functools.cached_property
    def fn(self) -> Callable[..., LossOutput]:
        """``LOSSES[loss]`` with the scalars it declares bound (β, ε, γ, ...), decided once.

        Called with the log-probs and the keyword arguments of ``takes`` (token counts ...)."""
        params = inspect.signature(LOSSES[self.loss]).parameters
        scalars = {k: v for k, v in self.loss_kwargs().items() if k in params}
        if "loss_terms" in params:  # a mixture: its terms, each bound to its own keys
            scalars["loss_terms"] = self.terms()
        return functools.partial(LOSSES[self.loss], **scalars)

    def terms(self) -> list[LossTerm]:
        """The terms of ``mixture`` with their weights, each bound like a loss of its own."""
        weights = self.loss_weights or [1.0] * len(self.mixture)
        out = []
        for name, weight in zip(self.mixture, weights, strict=True):
            if name in PAIR_TERMS:
                fn: Callable[..., LossOutput] = PAIR_TERMS[name]
            else:
                term = replace(self, loss=name, mixture=[], loss_weights=[], nll_weight=0.0,
                               length_normalize=False)
                fn = functools.partial(pairwise_loss, term)
            out.append(LossTerm(name, weight, fn))
        return out

    def used_keys(self) -> set[str]:
        """The keys the objective reads: its signature's, and its terms' for a mixture."""
        names = [self.loss, *[t for t in self.mixture if t in LOSSES and t not in PAIR_TERMS]]
        return {p for n in names for p in inspect.signature(LOSSES[n]).parameters}

    @functools.cached_property
    def takes(self) -> frozenset[str]:
        """The keyword arguments ``fn`` accepts beyond its bound scalars."""
        return frozenset(inspect.signature(LOSSES[self.loss]).parameters)

    def call(self, *logps: Tensor | None, **runtime: Any) -> LossOutput:
        """``fn`` with the runtime keyword arguments it declares (token counts, scores ...)."""
        return self.fn(*logps, **{k: v for k, v in runtime.items() if k in self.takes})

    def loss_kwargs(self) -> dict[str, Any]:
        """The scalars offered to every loss; each takes the ones its signature names."""
        kwargs = {key: getattr(self, key) for key in _param_keys()}
        return {**kwargs, "beta": self.resolved_beta()}

    def problems(self) -> list[str]:
        """Value checks, including keys set for an objective that does not read them.

        Each key's range (beta > 0, label_smoothing in [0, 0.5) ...) is declared on its field
        and checked by ``tether.config.build_config``.
        """
        if self.loss not in LOSSES:
            return [f"loss: unknown '{self.loss}'; valid: {', '.join(sorted(LOSSES))}"]
        out = _choice_problems(self) + _mixture_problems(self)
        spec, params = self.spec, self.used_keys()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in ("beta", *_param_keys()):
            if getattr(self, key) != defaults[key] and key not in params:
                users = [n for n, fn in LOSSES.items() if key in inspect.signature(fn).parameters]
                out.append(f"{key}: loss={self.loss} does not use it (used by "
                           f"{', '.join(users)}); remove it or pick one of those")
        if self.nll_weight > 0 and (spec.data != "pairs" or spec.includes_nll):
            out.append(f"nll_weight: applies to pairwise objectives without their own NLL "
                       f"term; loss={self.loss} has one or is not pairwise; set it to 0")
        rank_set = (self.rank_pairs, self.rank_weight_by_gap) != ("all", False)
        if rank_set and spec.data != "pairs":
            out.append(f"rank_pairs: loss={self.loss} does not train on pairs; rank_pairs and "
                       f"rank_weight_by_gap apply to pairwise objectives on ranked data")
        if (self.ld_alpha is not None or self.use_weighting) and spec.data != "pairs":
            out.append(f"ld_alpha/use_weighting: LD-DPO and WPO apply to pairwise objectives; "
                       f"loss={self.loss} is not one; remove the key")
        if self.ld_alpha is not None and not spec.needs_reference:
            out.append(f"ld_alpha: LD-DPO reweights the log-ratios of objectives with a "
                       f"reference; loss={self.loss} has none; remove ld_alpha")
        if self.length_normalize and spec.token_mean:
            out.append(f"length_normalize: loss={self.loss} always averages log-probs per "
                       f"token; remove the key")
        return out


def _choice_problems(cfg: LossConfig) -> list[str]:
    """Checks beyond the declared numeric ranges: names and keys that go together."""
    out = []
    if cfg.f_divergence not in F_DIVERGENCES:
        out.append(f"f_divergence: unknown '{cfg.f_divergence}'; valid: "
                   f"{', '.join(F_DIVERGENCES)}")
    if cfg.f_alpha != 0.5 and cfg.f_divergence != "alpha_divergence":
        out.append("f_alpha: only alpha_divergence reads it; set f_divergence=alpha_divergence "
                   "or remove f_alpha")
    return out


def _mixture_problems(cfg: LossConfig) -> list[str]:
    """``mixture`` and ``loss_weights`` are set exactly when ``loss=mixture``, and name
    distinct pairwise objectives with one non-negative weight each."""
    if cfg.loss != "mixture":
        if cfg.mixture or cfg.loss_weights:
            return [f"mixture: loss={cfg.loss} is not a mixture; set loss=mixture or remove "
                    f"mixture and loss_weights"]
        return []
    out = []
    if not cfg.mixture:
        out.append("mixture: loss=mixture needs the objectives to add, e.g. "
                   "mixture=[dpo,bco_pair,sft]")
    for name in cfg.mixture:
        pairwise = name in LOSSES and LOSS_SPECS[name].data == "pairs" and name != "mixture"
        if name not in PAIR_TERMS and not pairwise:
            out.append(f"mixture: '{name}' is not a pairwise objective; valid: "
                       f"{', '.join(sorted({*PAIR_TERMS, *_pairwise_names()}))}")
    if len(set(cfg.mixture)) != len(cfg.mixture):
        out.append(f"mixture: an objective is listed twice in {cfg.mixture}; merge the weights")
    if cfg.loss_weights and len(cfg.loss_weights) != len(cfg.mixture):
        out.append(f"loss_weights: {len(cfg.loss_weights)} weights for {len(cfg.mixture)} "
                   f"objectives in mixture; give one each (or none: all 1)")
    if any(w < 0 for w in cfg.loss_weights):
        out.append(f"loss_weights: must be >= 0, got {cfg.loss_weights}")
    return out


def _pairwise_names() -> list[str]:
    return [n for n, s in LOSS_SPECS.items() if s.data == "pairs" and n != "mixture"]


def loss_config(cfg: Any) -> LossConfig:
    """The ``LossConfig`` inside a larger config (any object with the same attribute names).

    Keys the larger config lacks take their defaults.
    """
    names = [f.name for f in dataclasses.fields(LossConfig)]
    return LossConfig(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


def add_nll(out: LossOutput, policy_chosen_logps: Tensor, chosen_lengths: Tensor,
            nll_weight: float) -> LossOutput:
    """Any preference loss plus ``nll_weight`` × token-mean NLL of the chosen completion.

        loss = loss_pref + α·( −log πθ(y_w|x) / |y_w| )

    The NLL term of Pang et al. 2024 ("Iterative Reasoning Preference Optimization", arXiv
    2404.19733), often called RPO: it keeps the chosen completion's likelihood from falling
    while the margin grows. ``policy_chosen_logps`` must be the summed log-probs. Metric
    ``nll``.
    """
    if nll_weight == 0:
        return out
    nll = -token_mean(policy_chosen_logps, chosen_lengths)  # (B,)
    metrics = {**out.metrics, "nll": nll.detach().mean()}
    return replace(out, losses=out.losses + nll_weight * nll, metrics=metrics)


def _normalized(logps: Tensor | None, lengths: Tensor, on: bool) -> Tensor | None:
    return token_mean(logps, lengths) if on and logps is not None else logps


def pairwise_loss(
    cfg: LossConfig,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    pair_weights: Tensor | None = None,
) -> LossOutput:
    """The configured pairwise objective on summed ``(B,)`` log-probs and their token counts.

    Reference tensors are ``None`` for reference-free objectives. ``length_normalize`` turns
    sums into per-token means first, except for objectives that average by definition.
    ``pair_weights`` ``(B,)`` (WPO's, ``tether.losses.weighting``) scale the preference loss,
    before the NLL term.
    """
    spec = cfg.spec
    missing = reference_chosen_logps is None or reference_rejected_logps is None
    if spec.needs_reference and missing:
        raise ValueError(f"loss={cfg.loss} needs reference log-probs")  # a pipeline bug
    on = cfg.length_normalize and not spec.token_mean
    out = cfg.call(
        _normalized(policy_chosen_logps, chosen_lengths, on),
        _normalized(policy_rejected_logps, rejected_lengths, on),
        _normalized(reference_chosen_logps, chosen_lengths, on),
        _normalized(reference_rejected_logps, rejected_lengths, on),
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    if pair_weights is not None:
        out = replace(out, losses=out.losses * pair_weights)
    return add_nll(out, policy_chosen_logps, chosen_lengths, cfg.nll_weight)


def unpaired_loss(
    cfg: LossConfig,
    policy_logps: Tensor,
    reference_logps: Tensor,
    policy_kl_logps: Tensor,
    reference_kl_logps: Tensor,
    labels: Tensor,
    *,
    lengths: Tensor,
    kl_lengths: Tensor,
) -> LossOutput:
    """The configured unpaired objective (KTO): labelled rows and their mismatched pairs."""
    on = cfg.length_normalize
    return cfg.fn(
        _normalized(policy_logps, lengths, on),
        _normalized(reference_logps, lengths, on),
        _normalized(policy_kl_logps, kl_lengths, on),
        _normalized(reference_kl_logps, kl_lengths, on),
        labels,
    )


def ranked_loss(
    cfg: LossConfig,
    policy_logps: Tensor,
    reference_logps: Tensor | None,
    *,
    response_lengths: Tensor,
    response_scores: Tensor,
    response_mask: Tensor | None = None,
) -> LossOutput:
    """The configured ranked objective on ``(B, K)`` summed log-probs, responses best first."""
    on = cfg.length_normalize and not cfg.spec.token_mean
    return cfg.call(
        _normalized(policy_logps, response_lengths, on),
        _normalized(reference_logps, response_lengths, on),
        response_lengths=response_lengths,
        response_scores=response_scores,
        response_mask=response_mask,
    )


def reduce_losses(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean of the per-example losses, or their weighted mean Σ w·l / Σ w (score-gap weights
    of pairs expanded from rankings)."""
    if weights is None:
        return losses.mean()
    return (weights * losses).sum() / weights.sum().clamp(min=torch.finfo(losses.dtype).tiny)


def loss_stats(
    out: LossOutput, spec: LossSpec, labels: Tensor | None = None
) -> dict[str, Tensor]:
    """Per-row statistics worth logging, as far as the objective defines them, ``(B,)`` each.

    The loop averages each over the rows where it is not NaN. ``rewards/chosen`` and
    ``rewards/rejected`` where the objective has rewards (for KTO, given ``labels``: desirable
    and undesirable rows, NaN on the others); ``rewards/accuracies`` and ``rewards/margins``
    only where rewards come in pairs (pairwise objectives; ranked ones, best vs worst); then
    the objective's own ``metrics``, one value per batch repeated on its rows.
    """
    losses = out.losses.detach()
    stats = {"loss": losses}
    if spec.data in ("pairs", "ranked"):
        c, r = out.chosen_rewards, out.rejected_rewards
        stats["rewards/chosen"], stats["rewards/rejected"] = c, r
        stats["rewards/accuracies"] = (c > r).to(losses.dtype)
        stats["rewards/margins"] = c - r
    elif spec.data == "unpaired" and labels is not None:
        desirable = labels.to(torch.bool)
        for name, rows, values in (("chosen", desirable, out.chosen_rewards),
                                   ("rejected", ~desirable, out.rejected_rewards)):
            full = torch.full_like(losses, float("nan"))
            full[rows] = values.to(full.dtype)
            stats[f"rewards/{name}"] = full
    for key, value in out.metrics.items():
        stats[key] = value.detach().to(losses.dtype).expand_as(losses)
    return stats
