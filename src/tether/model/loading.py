"""Loading and saving models and tokenizers, devices and dtypes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from tether.errors import ModelError
from tether.io import is_hub_id, replace_dir

__all__ = [
    "context_window", "load_model", "load_tokenizer", "resolve_device", "resolve_dtype",
    "restore_dropout", "save_model",
]

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
    """A path that does not exist is refused before the Hub is asked; a hub id goes on."""
    if Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")) or not is_hub_id(name):
        raise ModelError(f"{what}: '{name}' does not exist; pass a model directory or a hub id")


def _source(name: str) -> str:
    """A local directory (``~`` expanded) or the hub id as given."""
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def load_tokenizer(
    name: str, trust_remote_code: bool = False, *, field: str = "tokenizer",
    revision: str | None = None,
) -> Any:
    """Load a tokenizer; one without a pad token gets EOS as pad (logged).

    ``field`` is the config key errors name: ``model`` when the tokenizer comes from the model.
    ``revision``: a branch, tag or commit of a hub id.
    """
    _exists_or_hub_id(name, field)
    try:
        tok = AutoTokenizer.from_pretrained(
            _source(name), trust_remote_code=trust_remote_code, revision=revision
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
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM in ``dtype`` with every dropout set to 0 (DPO's log-ratios need it).

    ``quantization_config`` (QLoRA, see ``tether.model.lora``) places the model on ``device`` while
    loading, since a quantized model cannot be moved afterwards. ``empty``: the architecture
    only, its parameters and buffers on the ``meta`` device (no memory, no weights read; FSDP
    ranks other than 0 get their shards from rank 0, see ``tether.training.distributed``)."""
    _exists_or_hub_id(name, "model")
    path = _source(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code,
                                            revision=revision)
        # attention_dropout, hidden_dropout, resid_pdrop, embd_pdrop, ...: zeroed in memory,
        # remembered so that a saved config.json keeps the model's own values (restore_dropout)
        dropout = {k: v for k, v in config.to_dict().items()
                   if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop"))}
        for key in dropout:
            setattr(config, key, 0.0)
        if empty:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, trust_remote_code=trust_remote_code,
                    **({"attn_implementation": attn_implementation} if attn_implementation
                       else {}),
                )
            disable_dropout(model)
            setattr(model, _DROPOUT_ATTR, dropout)
            return model
        placement = {"quantization_config": quantization_config, "device_map": {"": device}}
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            revision=revision,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}),
            use_safetensors=True,  # never unpickle weights (pytorch_model.bin)
            **(placement if quantization_config is not None else {}),
        )
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ("; the weights file is damaged or incomplete: copy it again"
                if isinstance(e, SafetensorError) else
                "; tether reads weights only from safetensors, never pickle (.bin): convert "
                "them once where you trust the file" if "safetensors" in first else "")
        raise ModelError(f"model: cannot load '{name}' ({first}){hint}") from None
    disable_dropout(model)
    setattr(model, _DROPOUT_ATTR, dropout)
    return model if quantization_config is not None else model.to(device)  # type: ignore[arg-type]


_DROPOUT_ATTR = "_tether_config_dropout"  # the config's dropout values before load_model


def restore_dropout(model: Any, directory: Path) -> None:
    """Put the model's own dropout values back into ``directory/config.json``: dropout is off
    in memory for training (DPO's log-ratios), not in the model a user takes away."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dropout = getattr(base, _DROPOUT_ATTR, None)
    path = directory / "config.json"
    if not dropout or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update({k: v for k, v in dropout.items() if k in config})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def context_window(path: str, trust_remote_code: bool = False) -> int | None:
    """The longest sequence the model at ``path`` takes (its config's max_position_embeddings,
    or n_positions for GPT-2-style configs), without loading the weights; None if unstated."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # loading the model itself will report what is wrong
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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
        restore_dropout(model, tmp)  # the model's own dropout values, not training's zeros
        tokenizer.save_pretrained(tmp)

    replace_dir(out, build)
