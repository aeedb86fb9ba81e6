"""LoRA and QLoRA through PEFT: adapters on a frozen base, and that base as the reference.

``lora=true`` wraps the policy in a PEFT ``LoraConfig`` (every linear layer of the decoder by
default, r=16, alpha=32) and trains only the adapters. ``reference=lora`` (what ``auto`` picks
then) scores the reference with the *same* weights, adapters switched off: one copy of the
base in memory. When the run starts from a trained adapter (``lora_adapter``) the starting
point is base + that adapter, so the reference is that adapter loaded a second time, frozen,
under the name ``reference``; the trainable copy is ``default``.

Why ``lora_dropout`` defaults to 0: DPO's implicit reward is β·log π(y|x)/π_ref(y|x). With
dropout on the adapter input, the policy term is computed by a random sub-network while the
reference term is not, so the log-ratio carries noise that is not in the objective; and since
the loss −log σ(β·h) is convex in the margin h, that noise does not average out (Jensen): it
biases the loss, the gradient and the reward metrics. ``load_model`` already sets the base's own
dropout to 0 for the same reason.

Output (``model/`` of the run directory):

```
model/                 the PEFT adapter: adapter_config.json, adapter_model.safetensors, tokenizer
model/merged/          merge=true only: base + adapter folded in, a plain transformers model
```

QLoRA (``load_in_4bit``) loads the base as 4-bit NF4 through bitsandbytes, which needs a CUDA
GPU; elsewhere it is refused with one line. The merged model is always built from the base in
its stored precision, never from the 4-bit copy.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tether.errors import ConfigError, ModelError
from tether.io import replace_dir
from tether.model.loading import load_model, restore_dropout

if TYPE_CHECKING:
    from tether.config import TrainConfig

__all__ = ["REFERENCE_ADAPTER", "apply_lora", "load_4bit", "save_lora"]

log = logging.getLogger("tether")

REFERENCE_ADAPTER = "reference"  # the frozen copy of a starting adapter
TRAINED_ADAPTER = "default"  # PEFT's name for the first adapter: the one being trained


def load_4bit(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The base model as 4-bit NF4 (QLoRA); a one-line ModelError without CUDA or bitsandbytes."""
    if device.type != "cuda":
        raise ModelError(
            f"load_in_4bit: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels) but the device is "
            f"{device}; drop load_in_4bit=true to train LoRA adapters on a full-precision base"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(
            "load_in_4bit: needs the bitsandbytes package; pip install bitsandbytes"
        ) from None
    from transformers import BitsAndBytesConfig

    compute = dtype if dtype != torch.float32 else torch.bfloat16
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    return load_model(cfg.model, dtype=compute, device=device,
                      trust_remote_code=cfg.trust_remote_code, quantization_config=quant,
                      revision=cfg.revision)


def apply_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with trainable LoRA adapters (a PEFT model); unchanged unless ``lora=true``."""
    if not cfg.lora:
        return model
    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        model = _with_adapters(model, cfg)
    if cfg.lora_dropout > 0:
        log.warning("lora_dropout=%s: the policy's log-probs become noisy while the reference's "
                    "are not, which biases DPO's log-ratio; 0 is the safe choice", cfg.lora_dropout)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA: %d trainable parameters of %d (%.2f%%)", trainable, total,
             100 * trainable / max(1, total))
    return model


def _with_adapters(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if isinstance(model, PeftModel):  # tether.train(model=PeftModel): trains its own adapter
        return model

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.lora_adapter:
        path = _adapter_dir(cfg.lora_adapter)
        try:
            model = PeftModel.from_pretrained(model, path, is_trainable=True)
            model.load_adapter(path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ModelError(
                f"lora_adapter: '{cfg.lora_adapter}' does not fit model '{cfg.model}' "
                f"({str(e).splitlines()[0]}); pass the adapter trained on this base"
            ) from None
        log.info("LoRA: starting from adapter %s (its own r/alpha/targets; the lora_* keys are "
                 "not used)", path)
    else:
        given = [t for t in cfg.lora_target_modules if t != "all-linear"]
        targets: str | list[str] = given or "all-linear"
        for key, names in (("lora_target_modules", given),
                           ("lora_modules_to_save", cfg.lora_modules_to_save)):
            if "lm_head" in names:
                raise ConfigError(
                    f"{key}: the LM head cannot be adapted or trained in full here (the chunked "
                    "log-prob path reads its weight directly); leave lm_head out"
                )
        config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM", use_dora=cfg.lora_use_dora,
            use_rslora=cfg.lora_use_rslora, modules_to_save=cfg.lora_modules_to_save or None,
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as e:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                            if isinstance(m, nn.Linear)})
            raise ConfigError(
                f"lora_target_modules: {cfg.lora_target_modules} ({str(e).splitlines()[0]}); "
                f"linear layers in this model: {', '.join(names)}"
            ) from None
    return model


def _adapter_dir(name: str) -> str:
    path = Path(name).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelError(
            f"lora_adapter: '{name}' has no adapter_config.json; pass a directory written by "
            "PEFT's save_pretrained (e.g. the model/ of an earlier lora=true run)"
        )
    return str(path)


@contextmanager
def reference_weights(model: Any) -> Iterator[None]:
    """Inside: the PEFT ``model`` computes the reference (adapters off, or the frozen starting
    adapter). PEFT's switches flip ``requires_grad`` as they go; the flags are put back exactly,
    since the optimizer's (and DDP's, FSDP's) parameters must keep them."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    try:
        if REFERENCE_ADAPTER in model.peft_config:
            model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            yield
        else:
            with model.disable_adapter():
                yield
    finally:
        if REFERENCE_ADAPTER in model.peft_config:
            model.set_adapter(TRAINED_ADAPTER)
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)


def save_lora(
    model: Any, tokenizer: Any, out: Path, cfg: TrainConfig,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Write the trained adapter (PEFT format) to ``out`` and, with ``merge=true``, the merged
    full model to ``out/merged``. ``state_dict``: the gathered weights of an FSDP-sharded model.

    Built beside ``out`` and switched in by ``tether.io.replace_dir``, like ``save_model``.
    """

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, selected_adapters=[TRAINED_ADAPTER], state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if cfg.merge:
            merge_adapter(cfg, tmp, tmp / "merged", model.get_base_model().dtype)
            tokenizer.save_pretrained(tmp / "merged")

    replace_dir(out, build)


def merge_adapter(cfg: TrainConfig, adapter: Path, out: Path, dtype: torch.dtype) -> None:
    """Base (re-read in ``dtype`` on the CPU, never 4-bit) + adapter, folded: W + (α/r)·B·A."""
    from peft import PeftModel

    base = load_model(cfg.model, dtype=dtype, device="cpu",
                      trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    restore_dropout(base, out)
    log.info("merged model written to %s", out)
