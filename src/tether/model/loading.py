"""Loading and saving models and tokenizers, devices and dtypes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from tether.errors import ModelError
from tether.io import replace_dir

__all__ = ["load_model", "load_tokenizer", "resolve_device", "resolve_dtype", "save_model"]

log = logging.getLogger("tether")
hf_logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"device: unknown '{name}'; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device: '{name}' asked for, but no CUDA GPU is visible; use device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp32 elsewhere (CPU training stays fp32)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[name]


def _exists_or_hub_id(name: str, what: str) -> None:
    p = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or p.suffix != "" or name.count("/") > 1
    if looks_local and not p.exists():
        raise ModelError(f"{what}: '{name}' does not exist; pass a model directory or a hub id")


def load_tokenizer(name: str, trust_remote_code: bool = False, *, field: str = "tokenizer") -> Any:
    """Load a tokenizer; one without a pad token gets EOS as pad (logged).

    ``field`` is the config key errors name: ``model`` when the tokenizer comes from the model.
    """
    _exists_or_hub_id(name, field)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(Path(name).expanduser()) if Path(name).expanduser().exists() else name,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{field}: cannot load a tokenizer from '{name}' ({first})") from None
    if tok.eos_token_id is None:
        raise ModelError(
            f"{field}: tokenizer '{name}' has no EOS token; set eos_token in its config"
        )
    if tok.pad_token_id is None:
        log.warning("tokenizer %s has no pad token: using EOS (%r) to pad", name, tok.eos_token)
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
    quantization_config: Any = None,
    empty: bool = False,
) -> PreTrainedModel:
    """Load a causal LM in ``dtype`` with every dropout set to 0 (DPO's log-ratios need it).

    ``quantization_config`` (QLoRA, see ``tether.model.lora``) places the model on ``device`` while
    loading, since a quantized model cannot be moved afterwards. ``empty``: the architecture
    only, its parameters and buffers on the ``meta`` device (no memory, no weights read; FSDP
    ranks other than 0 get their shards from rank 0, see ``tether.training.distributed``)."""
    _exists_or_hub_id(name, "model")
    path = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        for key, value in config.to_dict().items():
            # attention_dropout, hidden_dropout, resid_pdrop, embd_pdrop, ...
            if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
                setattr(config, key, 0.0)
        if empty:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, trust_remote_code=trust_remote_code
                )
            disable_dropout(model)
            return model
        placement = {"quantization_config": quantization_config, "device_map": {"": device}}
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            **(placement if quantization_config is not None else {}),
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"model: cannot load '{name}' ({str(e).splitlines()[0]})") from None
    disable_dropout(model)
    return model if quantization_config is not None else model.to(device)  # type: ignore[arg-type]


def disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def save_model(
    model: PreTrainedModel, tokenizer: Any, out: Path, state_dict: dict[str, Any] | None = None
) -> None:
    """``save_pretrained`` (safetensors) plus the tokenizer: loadable without tether.
    ``state_dict``: the gathered weights of an FSDP-sharded model (``tether.training.distributed``).

    Built beside ``out`` and switched in by ``tether.io.replace_dir``: a crash or a full disk
    never leaves a half model there, nor a temporary copy behind.
    """

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)

    replace_dir(out, build)
