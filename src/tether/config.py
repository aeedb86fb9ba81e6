"""``TrainConfig``: every key ``tether train`` / ``tether sft`` read, with its checks.

Every config is a frozen dataclass whose fields carry a one-line ``help`` (and, for numbers, a
declared range); ``tether.config_loading`` loads any of them from YAML plus ``key=value``
overrides and is re-exported here (``load_config``, ``build_config``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from tether.config_loading import (
    _unknown,
    absolute_paths,
    build_config,
    config_help,
    config_markdown,
    load_config,
    save_config,
    to_dict,
)
from tether.fields import SEED_MAX, Checked, opt
from tether.losses.objective import LossConfig
from tether.reference_keys import reference_problems

__all__ = [
    "TrainConfig",
    "absolute_paths",
    "build_config",
    "config_help",
    "config_markdown",
    "load_config",
    "opt",
    "save_config",
    "to_dict",
]

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig(Checked, LossConfig):
    """Everything ``tether train`` and ``tether sft`` read. Flat keys users can type.

    The objective's keys (loss, beta, label_smoothing, length_normalize, gamma, ...) come
    from ``LossConfig``, which owns their meaning and checks. TRL's names are accepted too
    (``tether.trl_names``).
    """

    trl_names: ClassVar[bool] = True  # build_config translates DPOConfig names first

    # --- what to train, on what, where to write it
    model: str = opt("", "model: local directory or hub id (AutoModelForCausalLM)")
    revision: str | None = opt(
        None, "hub revision (branch, tag or commit) of a hub-id model and tokenizer"
    )
    tokenizer: str | None = opt(None, "tokenizer path or hub id (default: the model's)")
    data: str = opt("", "training data: .jsonl/.json/.parquet/.csv, a saved dataset or a hub id")
    eval_data: str | None = opt(None, "held-out data in any format `data` accepts")
    output_dir: str = opt("runs/train", "run directory (config.yaml, metrics.jsonl, model/ ...)")
    data_format: Literal["auto", "standard", "conversational", "implicit"] = opt(
        "auto", "how rows are read; auto detects from the fields"
    )
    field_map: dict[str, str] = opt(
        {}, "rename fields to tether's, e.g. field_map.chosen=output (target=source)"
    )
    prompt_template: str | None = opt(
        None, "build the prompt from fields, e.g. 'alpaca' or '{instruction}\\n{input}'"
    )
    split: str = opt("train", "split to read from a saved/hub dataset")

    # --- reference
    reference_model: str | None = opt(
        None, "reference model (default: the policy's starting point, `model`)"
    )
    reference: Literal["precomputed", "copy", "lora", "none", "auto"] = opt(
        "auto", "reference model: precomputed cache | frozen copy | lora | none (auto picks)"
    )
    ref_model_sync_steps: int = opt(
        0, "TR-DPO (Gorbatovski et al. 2024): every this many optimizer steps move the "
        "reference to ref_model_mixup_alpha·policy + (1 − α)·reference; 0: a fixed reference",
        ge=0,
    )
    ref_model_mixup_alpha: float = opt(
        0.6, "TR-DPO: α of the reference update (1: hard sync, the policy itself; <1: soft); "
        "read only with ref_model_sync_steps > 0", gt=0, le=1,
    )

    # --- optimisation
    lr: float = opt(5e-7, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    adam_betas: list[float] = opt([0.9, 0.999], "AdamW betas", ge=0, lt=1)
    batch_size: int = opt(8, "pairs per micro-batch", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step", ge=1)
    max_steps: int = opt(-1, "optimizer steps; -1 means run `epochs` epochs", ge=-1)
    epochs: float = opt(1.0, "passes over the data when max_steps is -1", ge=0)
    warmup_steps: int = opt(0, "linear warm-up steps", ge=0)
    warmup_ratio: float = opt(
        0.0, "warm-up as a fraction of the run's steps (TRL's name; instead of warmup_steps)",
        ge=0, le=1,
    )
    scheduler: Literal["linear", "cosine", "constant"] = opt(
        "linear", "decay after warm-up"
    )
    max_grad_norm: float = opt(1.0, "clip the gradient norm (0 disables)", ge=0)
    seed: int = opt(0, "seed for data order, initialisation and sampling", ge=0, le=SEED_MAX)

    # --- sequences
    max_length: int = opt(
        1024, "prompt + completion tokens; completions lose their end", ge=1
    )
    max_prompt_length: int | None = opt(
        None, "prompt tokens kept (its end survives); default: no separate limit", ge=1
    )
    chat_template: Literal["auto", "on", "off"] = opt(
        "auto", "use the tokenizer's chat template (auto: when it has one and rows are messages)"
    )
    chat_template_kwargs: dict[str, Any] = opt(
        {}, "keyword arguments for the chat template, e.g. chat_template_kwargs.enable_thinking="
        "false (Qwen 3)"
    )
    group_by_length: bool = opt(True, "batch rows of similar length together to cut padding")
    logprob_chunk: int = opt(
        1024, "tokens per chunk of the LM head (bounds logit memory)", ge=1
    )

    # --- numerics and device (tether/model/precision.py)
    precision: Literal["auto", "mixed", "bf16", "fp32"] = opt(
        "auto", "mixed: fp32 master weights, bf16 compute (16 B/param); bf16: pure bf16 (8 "
        "B/param; small-lr updates round away, warned); fp32; auto: mixed on bf16 GPUs (bf16 "
        "base with lora), fp32 on CPU, or what dtype/autocast say"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "with precision=auto: bfloat16/float16 = pure low-precision weights "
        "(precision=bf16); float32 or auto = fp32 weights"
    )
    autocast: Literal["auto", "on", "off"] = opt(
        "off", "with precision=auto and fp32 weights: on = precision=mixed; auto = on for bf16 "
        "GPUs and AVX-512 CPUs"
    )
    attn_implementation: str = opt(
        "auto", "attention kernel: auto = flex_attention on CUDA when batches carry masks "
        "(prefix_sharing, packing), else the model's; or sdpa, eager, flex_attention, "
        "flash_attention_2, ..."
    )
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    trust_remote_code: bool = opt(False, "allow model code from the hub (off unless you ask)")

    # --- speed and memory (each lever is measured in bench/README.md)
    prefix_sharing: bool = opt(
        True, "score each pair as one prompt‖chosen‖rejected sequence: the prompt runs once"
    )
    packing: bool = opt(
        False, "padding-free batches: plain rows back to back in one row, positions restarting "
        "(varlen attention on GPU); with prefix_sharing all pairs of a micro-batch in one row"
    )
    gradient_checkpointing: bool = opt(
        False, "recompute layer activations in the backward pass: less memory, more compute"
    )
    compile: bool = opt(False, "torch.compile the model's layers (slow first steps)")
    fused_adamw: bool = opt(True, "use PyTorch's fused AdamW kernel (CPU and CUDA)")

    # --- logging and evaluation
    log_every: int = opt(1, "write metrics every N optimizer steps", ge=1)
    eval_every: int = opt(
        0, "evaluate on eval_data every N steps (0: only at the end)", ge=0
    )
    eval_batch_size: int = opt(
        8, "pairs per batch for evaluation and reference passes", ge=1
    )
    cache_dir: str = opt("~/.cache/tether", "where reference log-probs are cached ($TETHER_CACHE "
                         "replaces the default)")
    progress: bool = opt(True, "show progress bars")
    report_to: list[str] = opt(
        [], "experiment trackers: tensorboard, wandb, mlflow, trackio or none (each an extra: "
        "pip install 'tether[wandb]'); metrics.jsonl is always written"
    )
    report: bool = opt(True, "write report.md and plots/ at each checkpoint and at the end")
    run_name: str | None = opt(None, "run name in the trackers (default: output_dir's name)")
    project: str = opt("tether", "project (W&B, trackio) or experiment (MLflow) in the trackers")

    # --- reliability
    save_every: int = opt(
        0, "write a resumable checkpoint every N optimizer steps (0: never)", ge=0
    )
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep", ge=1)
    save_total_limit: int | None = opt(
        None, "TRL's name for keep_checkpoints (wins when set)", ge=1
    )
    keep_best: str | None = opt(
        None, "eval metric whose best checkpoint is never pruned and becomes model/ at the end, "
        "e.g. eval/loss (a *loss* is better lower, any other metric higher)"
    )
    resume: bool | Literal["auto"] | str = opt(
        False, "true: continue from the newest checkpoint; auto: if there is one; or a "
        "checkpoint directory (checkpoints/step-N)"
    )
    max_bad_steps: int = opt(
        5, "abort after this many non-finite losses/gradients in a row (each is skipped)", ge=1
    )
    overwrite: bool = opt(
        False, "replace an earlier run in output_dir (its files are removed first; "
        "never the input model)"
    )

    # --- scale: LoRA/QLoRA through PEFT, torchrun DDP/FSDP2 (model/lora, training/distributed)
    lora: bool = opt(False, "train LoRA adapters (PEFT) instead of all weights")
    lora_r: int = opt(16, "LoRA rank", ge=1)
    lora_alpha: int = opt(32, "LoRA scale numerator: the update is (alpha / r) B A x", gt=0)
    lora_dropout: float = opt(
        0.0, "dropout on the LoRA input; keep 0: a random mask biases DPO's log-ratio", ge=0, lt=1
    )
    lora_target_modules: list[str] = opt(
        [], "module names to adapt, e.g. q_proj,v_proj (empty or all-linear: every linear "
        "layer but the head)"
    )
    lora_use_dora: bool = opt(False, "DoRA: weight-decomposed LoRA (Liu et al. 2024)")
    lora_use_rslora: bool = opt(False, "rsLoRA: scale by alpha / sqrt(r) (Kalajdzievski 2023)")
    lora_modules_to_save: list[str] = opt(
        [], "modules trained in full beside the adapters, e.g. embed_tokens (not lm_head)"
    )
    lora_adapter: str | None = opt(
        None, "existing PEFT adapter to start from (it is also the reference, frozen)"
    )
    merge: bool = opt(False, "with lora: also write model/merged/, the plain merged model")
    load_in_4bit: bool = opt(False, "QLoRA: 4-bit NF4 base through bitsandbytes (CUDA only)")
    distributed: Literal["auto", "ddp", "fsdp", "none"] = opt(
        "auto", "under torchrun: ddp (replicas) or fsdp (FSDP2 shards); auto = ddp"
    )

    # --- sharing (tether push): token from the HF_TOKEN environment variable only
    push_to_hub: str | None = opt(
        None, "after training, upload model/ and its card to this hub repo (org/name, private)"
    )

    @property
    def checkpoints_kept(self) -> int:
        """keep_checkpoints, or its alias save_total_limit when that is set."""
        return self.save_total_limit or self.keep_checkpoints

    def problems(self) -> list[str]:
        """Value checks that types alone cannot express."""
        # Plain ranges (lr > 0, batch_size >= 1, finite floats ...) are declared on the
        # fields and checked by build_config (tether.fields.range_problems); these are the rest.
        out = []
        if not self.model:
            out.append("model: required (a local directory or hub id)")
        if not self.data:
            out.append("data: required (a preference file, saved dataset or hub id)")
        from tether.tracking.trackers import TRACKERS  # the one list of tracker names

        unknown = [t for t in self.report_to if t not in (*TRACKERS, "none")]
        if unknown:
            out.append(f"report_to: unknown tracker {', '.join(unknown)}; choose from "
                       f"{', '.join((*TRACKERS, 'none'))}")
        if self.max_steps == 0 or self.max_steps < -1:
            out.append(f"max_steps: must be >= 1 or -1 (use epochs), got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            out.append(f"epochs: must be > 0, got {self.epochs}")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            out.append(
                f"max_prompt_length: must be in [1, max_length={self.max_length}), "
                f"got {self.max_prompt_length}"
            )
        if self.precision != "auto" and (self.dtype != "auto" or self.autocast != "off"):
            out.append(
                f"precision: precision={self.precision} sets the weights' dtype and autocast "
                "itself; leave dtype and autocast at their defaults (precision=mixed is what "
                "dtype=float32 autocast=on means, precision=bf16 is dtype=bfloat16)"
            )
        if self.warmup_ratio and self.warmup_steps:
            out.append("warmup_ratio: give warmup_steps or warmup_ratio, not both")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            out.append(f"adam_betas: must be two numbers in [0, 1), got {self.adam_betas}")
        from tether.losses import LOSSES

        if self.loss not in LOSSES:
            return [*out, _unknown("loss", self.loss, list(LOSSES)), *_scale_problems(self)]
        return [*out, *LossConfig.problems(self), *_scale_problems(self),
                *_checkpoint_problems(self)]


def _checkpoint_problems(cfg: TrainConfig) -> list[str]:
    """keep_best needs an eval metric measured at every checkpoint's step."""
    out = []
    if cfg.keep_checkpoints != 2 and cfg.save_total_limit not in (None, cfg.keep_checkpoints):
        out.append(f"save_total_limit: {cfg.save_total_limit} is an alias of keep_checkpoints "
                   f"({cfg.keep_checkpoints}); set one of them")
    if cfg.keep_best is None:
        return out
    if not cfg.keep_best.startswith("eval/"):
        out.append(f"keep_best: '{cfg.keep_best}' is not an eval metric; e.g. eval/loss or "
                   "eval/rewards/accuracies")
    if not cfg.eval_data or not cfg.eval_every or not cfg.save_every:
        out.append("keep_best: needs eval_data, eval_every and save_every (checkpoints to keep)")
    elif cfg.save_every % cfg.eval_every:
        out.append(f"keep_best: save_every ({cfg.save_every}) must be a multiple of eval_every "
                   f"({cfg.eval_every}), so every checkpoint has an eval value")
    return out


def _scale_problems(cfg: TrainConfig) -> list[str]:
    """Checks of the ``# --- scale`` keys."""
    out = []
    if not cfg.lora:
        given = {k: getattr(cfg, k) for k in ("lora_adapter", "merge", "load_in_4bit",
                                             "lora_use_dora", "lora_use_rslora",
                                             "lora_modules_to_save")}
        set_keys = [f"{k}={'true' if v is True else v}" for k, v in given.items() if v]
        set_keys += ["reference=lora"] if cfg.reference == "lora" else []
        out += [f"{k.split('=')[0]}: {k} works on LoRA adapters; add lora=true" for k in set_keys]
    if cfg.reference == "lora" and cfg.reference_model:
        out.append("reference: reference=lora is the policy's own base, so reference_model "
                   "does not apply; use reference=precomputed or copy with reference_model")
    out += reference_problems(cfg)
    if cfg.load_in_4bit and cfg.distributed == "fsdp":
        out.append("load_in_4bit: 4-bit weights cannot be FSDP-sharded; use distributed=ddp")
    return out


# --------------------------------------------------------------------------- loading
