"""TRL's vocabulary: ``DPOConfig`` / ``TrainingArguments`` / TRL script names as tether keys.

A TRL user's YAML runs unchanged where the meaning is shared: ``translate_trl`` turns each
TRL name into the tether key(s) it means before the key check (``build_config``), and a name
whose meaning differs is a one-line error naming the tether key to use. ``TRL_NAMES`` is the
one table: the README's "Migrating from TRL" section is generated from it (``trl_markdown``)
and ``tests/test_trl_names.py`` checks that every name reaches the right key.

Names TRL and tether share with the same meaning (``max_steps``, ``seed``, ``beta`` ...) are
tether keys already and listed in ``SHARED``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SHARED", "TRL_LOSS_TYPES", "TRL_NAMES", "TrlName", "translate_trl", "trl_markdown"]

log = logging.getLogger("tether")

# value given, tether keys so far -> the tether keys it sets; ValueError: the meaning differs
Translate = Callable[[Any, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class TrlName:
    """One TRL name: the tether key(s) it becomes, how its value does, and a one-line note."""

    tether: str
    translate: Translate
    note: str


def _rename(key: str) -> Translate:
    return lambda value, _: {key: value}


def _steps(key: str) -> Translate:
    """``logging_steps``/``save_steps``/``eval_steps``: a count of steps; TRL's fraction of
    the run (a float below 1) has no tether form."""

    def translate(value: Any, _: Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(value, float) and 0 < value < 1:
            raise ValueError(f"a fraction of the run ({value}) has no tether form; give a step "
                             f"count as {key}")
        return {} if value is None else {key: value}

    return translate


def _only(allowed: Mapping[Any, dict[str, Any]], fix: str) -> Translate:
    """A value that means the same in tether for ``allowed``; any other is an error."""

    def translate(value: Any, _: Mapping[str, Any]) -> dict[str, Any]:
        key = value if isinstance(value, (str, bool, type(None))) else repr(value)
        if key in allowed:
            return dict(allowed[key])
        raise ValueError(f"{value!r} differs in tether: {fix}")

    return translate


def _ignored(value: Any, _: Mapping[str, Any]) -> dict[str, Any]:
    return {}


# TRL 1.16 loss_type -> tether loss (the README objective table's TRL column)
TRL_LOSS_TYPES = {
    "sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo", "robust": "robust",
    "exo_pair": "exo_pair", "nca_pair": "nca_pair", "bco_pair": "bco_pair",
    "sppo_hard": "sppo_hard", "aot": "aot", "aot_unpaired": "aot_unpaired",
    "apo_zero": "apo_zero", "apo_down": "apo_down", "discopop": "discopop",
    "sigmoid_norm": "sigmoid_norm", "sft": "sft",
}


def _loss_type(value: Any, _: Mapping[str, Any]) -> dict[str, Any]:
    names = [v for v in value.split(",") if v] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ValueError(f"expected a TRL loss type or a list of them, got {value!r}")
    unknown = [n for n in names if n not in TRL_LOSS_TYPES]
    if unknown:
        raise ValueError(f"unknown TRL loss type {unknown[0]!r}; valid: "
                         f"{', '.join(TRL_LOSS_TYPES)} (or set tether's loss)")
    if len(names) == 1 and names[0] != "sft":
        if names[0] == "ipo":  # TRL's IPO averages log-probs per token
            return {"loss": "ipo", "length_normalize": True}
        return {"loss": TRL_LOSS_TYPES[names[0]]}
    if "ipo" in names:
        raise ValueError("ipo in a list is TRL's per-token IPO, which a tether mixture term is "
                         "not; use loss=mixture with mixture=[...] of tether objectives")
    return {"loss": "mixture", "mixture": [TRL_LOSS_TYPES[n] for n in names]}


def _bf16(value: Any, _: Mapping[str, Any]) -> dict[str, Any]:
    # TRL's bf16 is mixed precision: fp32 master weights, bf16 autocast (tether's autocast=on)
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return {"dtype": "float32", "autocast": "on" if value else "off"}


def _scheduler(value: Any, so_far: Mapping[str, Any]) -> dict[str, Any]:
    if value in ("linear", "cosine"):
        return {"scheduler": value}
    if value == "constant_with_warmup":
        return {"scheduler": "constant"}
    if value == "constant" and not so_far.get("warmup_steps") and not so_far.get("warmup_ratio"):
        return {"scheduler": "constant"}  # TRL's constant skips warm-up; tether's warms up
    raise ValueError(f"{value!r} has no tether equivalent; use scheduler=linear, cosine or "
                     "constant (constant warms up first, as TRL's constant_with_warmup)")


def _eval_strategy(value: Any, so_far: Mapping[str, Any]) -> dict[str, Any]:
    if value == "no":
        return {"eval_every": 0}
    if value == "steps":  # TRL: eval_steps, else every logging_steps
        return {"eval_every": so_far.get("eval_every") or so_far.get("log_every", 1)}
    raise ValueError(f"{value!r} differs in tether, which evaluates by steps; use eval_every=N")


def _save_strategy(value: Any, so_far: Mapping[str, Any]) -> dict[str, Any]:
    if value == "no":
        return {"save_every": 0}
    if value == "steps":  # TRL's save_steps defaults to 500
        return {"save_every": so_far.get("save_every") or 500}
    raise ValueError(f"{value!r} differs in tether, which saves by steps; use save_every=N")


def _resume(value: Any, _: Mapping[str, Any]) -> dict[str, Any]:
    if value is None or isinstance(value, bool):
        return {} if value is None else {"resume": value}
    raise ValueError("a checkpoint path differs in tether, which resumes from "
                     "output_dir/checkpoints; set output_dir to that run and resume=true")


def _adam_beta(i: int) -> Translate:
    def translate(value: Any, so_far: Mapping[str, Any]) -> dict[str, Any]:
        betas = list(so_far.get("adam_betas", [0.9, 0.999]))
        betas[i] = value
        return {"adam_betas": betas}

    return translate


def _positive(key: str) -> Translate:
    return lambda value, _: {key: not value}


_KEEP_END = "tether keeps the prompt's end and cuts completions' ends; remove it"

# Applied in this order (a strategy after its steps; adam_beta2 after adam_beta1).
TRL_NAMES: dict[str, TrlName] = {
    "learning_rate": TrlName("lr", _rename("lr"), "peak learning rate"),
    "per_device_train_batch_size": TrlName("batch_size", _rename("batch_size"),
                                           "pairs per micro-batch on each process"),
    "per_device_eval_batch_size": TrlName("eval_batch_size", _rename("eval_batch_size"),
                                          "pairs per evaluation batch"),
    "gradient_accumulation_steps": TrlName("grad_accum", _rename("grad_accum"),
                                           "micro-batches per optimizer step"),
    "num_train_epochs": TrlName("epochs", _rename("epochs"), "used when max_steps is -1"),
    "logging_steps": TrlName("log_every", _steps("log_every"), "a step count (no fraction)"),
    "save_steps": TrlName("save_every", _steps("save_every"), "a step count (no fraction)"),
    "eval_steps": TrlName("eval_every", _steps("eval_every"), "a step count (no fraction)"),
    "logging_strategy": TrlName("log_every", _only({"steps": {}}, "use log_every=N"),
                                "steps only"),
    "eval_strategy": TrlName("eval_every", _eval_strategy,
                             "steps or no (tether also evaluates at the end with eval_data)"),
    "save_strategy": TrlName("save_every", _save_strategy, "steps (every save_steps) or no"),
    "lr_scheduler_type": TrlName(
        "scheduler", _scheduler,
        "linear, cosine; constant_with_warmup = constant; constant without warm-up"),
    "bf16": TrlName("autocast, dtype", _bf16,
                    "true = dtype=float32 autocast=on (fp32 weights, bf16 matmuls)"),
    "fp16": TrlName("dtype", _only({False: {}}, "use bf16=true or dtype=float16"),
                    "false only"),
    "loss_type": TrlName("loss", _loss_type,
                         "sigmoid = dpo; ipo = ipo + length_normalize; a list = mixture"),
    "f_divergence_type": TrlName("f_divergence", _rename("f_divergence"), "same values"),
    "f_alpha_divergence_coef": TrlName("f_alpha", _rename("f_alpha"), "α of alpha_divergence"),
    "precompute_ref_log_probs": TrlName(
        "reference", _only({True: {"reference": "precomputed"}, False: {}},
                           "use reference=precomputed"),
        "true = reference=precomputed; false: tether picks (same numbers)"),
    "ref_model": TrlName("reference_model", _rename("reference_model"),
                         "a path or hub id (an object: tether.train(ref_model=...))"),
    "model_name_or_path": TrlName("model", _rename("model"), "TRL scripts' ModelConfig"),
    "model_revision": TrlName("revision", _rename("revision"), "hub revision"),
    "torch_dtype": TrlName("dtype", _rename("dtype"), "auto, float32, bfloat16, float16"),
    "use_peft": TrlName("lora", _rename("lora"), "LoRA through PEFT (lora_r, lora_alpha ... "
                                                 "keep their names)"),
    "dataset_name": TrlName("data", _rename("data"), "a hub id, saved dataset or file"),
    "dataset_train_split": TrlName("split", _rename("split"), "split of data"),
    "dataset_test_split": TrlName(
        "eval_data", _only({}, "tether reads held-out rows from eval_data; set eval_data"),
        "an error: set eval_data"),
    "max_completion_length": TrlName(
        "max_length", _only({None: {}}, "tether bounds prompt + completion by max_length "
                                         "(and the prompt by max_prompt_length); use those"),
        "an error: use max_length"),
    "truncation_mode": TrlName("max_prompt_length", _only({"keep_end": {}}, _KEEP_END),
                               "keep_end only"),
    "resume_from_checkpoint": TrlName("resume", _resume,
                                      "true/false; a path is an error (set output_dir)"),
    "disable_tqdm": TrlName("progress", _positive("progress"), "progress = not disable_tqdm"),
    "use_cpu": TrlName("device", _only({True: {"device": "cpu"}, False: {}}, "use device="),
                       "true = device=cpu"),
    "optim": TrlName("fused_adamw", _only(
        {"adamw_torch": {"fused_adamw": False}, "adamw_torch_fused": {"fused_adamw": True}},
        "tether trains with AdamW; use adamw_torch or adamw_torch_fused"), "AdamW only"),
    "adam_beta1": TrlName("adam_betas", _adam_beta(0), "adam_betas[0]"),
    "adam_beta2": TrlName("adam_betas", _adam_beta(1), "adam_betas[1]"),
    "logging_dir": TrlName("(none)", _ignored, "ignored: metrics go to output_dir"),
}

# Same name, same meaning in TRL and tether (and warmup_ratio, resolved at set-up).
SHARED = ("output_dir", "max_steps", "seed", "max_grad_norm", "weight_decay", "warmup_steps",
          "warmup_ratio", "gradient_checkpointing", "beta", "label_smoothing", "loss_weights",
          "max_length", "max_prompt_length", "lora_r", "lora_alpha", "lora_dropout",
          "lora_target_modules", "load_in_4bit", "trust_remote_code", "save_total_limit",
          "report_to", "run_name")
_SHARED_NOTES = {"warmup_steps": "a step count (transformers 5's fraction below 1 is an error: "
                                 "use warmup_ratio)",
                 "label_smoothing": "same meaning, except beside loss_type: sigmoid (an error: "
                                    "TRL 1.16's sigmoid ignores it, tether's dpo is then cDPO)"}


def _shared_problems(raw: Mapping[str, Any]) -> list[str]:
    """Shared names whose meaning differs for some values: TRL 1.16's sigmoid loss has no ε
    (tether's dpo with label_smoothing is cDPO); transformers 5's warmup_steps below 1 is a
    ratio."""
    types = raw.get("loss_type")
    types = types if isinstance(types, list) else [types]
    out = []
    if "sigmoid" in types and raw.get("label_smoothing"):
        out.append("label_smoothing: TRL 1.16's sigmoid loss ignores it, tether's dpo would "
                   "train cDPO with it; remove it, or set loss=dpo instead of loss_type for cDPO")
    warmup = raw.get("warmup_steps")
    if isinstance(warmup, float) and 0 < warmup < 1:  # transformers 5 reads it as a ratio
        out.append(f"warmup_steps: a fraction ({warmup}) of the run is warmup_ratio in tether "
                   f"(warmup_steps counts steps); set warmup_ratio={warmup} instead")
    return out


def translate_trl(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` with TRL names replaced by tether keys, and one problem per name whose meaning
    differs (or that clashes with the tether key given beside it)."""
    out = {k: v for k, v in raw.items() if k not in TRL_NAMES}
    problems = _shared_problems(raw)
    for p in problems:  # reported here once, not again by the type check
        out.pop(p.split(":", 1)[0], None)
    for name, entry in TRL_NAMES.items():
        if name not in raw:
            continue
        try:
            keys = entry.translate(raw[name], out)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            continue
        for key, value in keys.items():
            if key in raw and raw[key] != value:
                problems.append(f"{name}: also given as {key}={raw[key]!r}; keep one")
        out.update(keys)
        if not keys:
            log.info("%s: %s", name, entry.note)
    return out, problems


def trl_markdown() -> str:
    """The README's "Migrating from TRL" table (checked by tests/test_trl_names.py)."""
    lines = ["| TRL name | tether key | note |", "|---|---|---|"]
    lines += [f"| `{n}` | `{e.tether}` | {e.note} |" for n, e in TRL_NAMES.items()]
    lines += [f"| `{n}` | `{n}` | {_SHARED_NOTES.get(n, 'same meaning')} |" for n in SHARED]
    return "\n".join(lines)


def warmup_from_ratio(ratio: float, total_steps: int) -> int:
    """TRL's warm-up steps for ``warmup_ratio``: ceil(ratio × total steps)."""
    return math.ceil(ratio * total_steps)
