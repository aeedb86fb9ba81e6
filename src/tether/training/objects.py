"""Objects instead of paths: ``tether.train(config, model=..., train_dataset=..., ...)``.

The way TRL users work: a ``PreTrainedModel`` (or ``PeftModel``) already in memory, its
tokenizer, a ``datasets.Dataset`` / ``DatasetDict`` or a list of dicts, a PEFT ``LoraConfig``.
``prepare`` turns them into a ``TrainConfig`` whose keys record what was passed (``model:
<in-memory LlamaForCausalLM>``, ``data: <in-memory Dataset, 8 rows, sha256 ...>``, the
``lora_*`` keys of the ``LoraConfig`` or of a ``PeftModel``'s adapter) plus the ``Objects``
the set-up uses instead of loading. A config given without ``model``/``data`` is fine when
the objects stand for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.config import TrainConfig, build_config
from tether.data.memory import dataset_name
from tether.errors import ConfigError

__all__ = ["Objects", "prepare"]


@dataclass
class Objects:
    """What the caller handed over in memory; ``None``: load it from the config's path."""

    model: Any = None
    ref_model: Any = None
    tokenizer: Any = None
    datasets: dict[str, Any] = field(default_factory=dict)  # registry name -> rows


def _describe(obj: Any) -> str:
    if _is_peft(obj):  # <in-memory PeftModel of LlamaForCausalLM>
        return f"<in-memory {type(obj).__name__} of {type(obj.get_base_model()).__name__}>"
    return f"<in-memory {type(obj).__name__}>"


# LoraConfig fields tether's adapters do not set: any other value than PEFT's default differs
_LORA_DEFAULTS = {"bias": "none", "use_rslora": False, "use_dora": False,
                  "modules_to_save": None, "init_lora_weights": True}


def lora_keys(peft_config: Any) -> dict[str, Any]:
    """The ``lora_*`` keys of a PEFT ``LoraConfig``; an error for settings tether lacks."""
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise ConfigError(f"peft_config: expected a peft.LoraConfig, got "
                          f"{type(peft_config).__name__}")
    for name, default in _LORA_DEFAULTS.items():
        if getattr(peft_config, name, default) != default:
            raise ConfigError(f"peft_config: {name}={getattr(peft_config, name)!r} is not "
                              f"supported; leave it at {default!r} (lora_r, lora_alpha, "
                              "lora_dropout and target_modules are)")
    targets = peft_config.target_modules
    targets = [] if targets in (None, "all-linear") else (
        [targets] if isinstance(targets, str) else sorted(targets))
    return {"lora": True, "lora_r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
            "lora_dropout": peft_config.lora_dropout, "lora_target_modules": targets}


def prepare(
    config: TrainConfig | Mapping[str, Any],
    *,
    model: Any = None,
    ref_model: Any = None,
    tokenizer: Any = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    peft_config: Any = None,
) -> tuple[TrainConfig, Objects]:
    """The config that records the objects, and the objects themselves."""
    given = (model, ref_model, tokenizer, train_dataset, eval_dataset, peft_config)
    if isinstance(config, TrainConfig) and all(x is None for x in given):
        return config, Objects()  # paths only, as from the command line
    raw = dict(config) if isinstance(config, Mapping) else dataclasses.asdict(config)
    if isinstance(config, Mapping):  # a TrainConfig must name some model; a dict need not
        from tether.trl_names import translate_trl

        named, _ = translate_trl(config)  # model_name_or_path is model, dataset_name data
        for key, argument, obj in (("model", "model", model), ("data", "train_dataset",
                                   train_dataset), ("eval_data", "eval_dataset", eval_dataset)):
            if obj is not None and not isinstance(obj, str) and named.get(key):
                raise ConfigError(f"{key}: given as {named[key]!r} and as {argument}=; "
                                  "keep one")
    objects = Objects(model=model, ref_model=ref_model, tokenizer=tokenizer)
    if model is not None:
        if isinstance(model, str):
            raw["model"] = model
        else:
            _check_model(model, "model")
            raw["model"] = _describe(model)
            if tokenizer is None and not raw.get("tokenizer"):
                raise ConfigError("tokenizer: an in-memory model needs its tokenizer; pass "
                                  "tokenizer=... (or set tokenizer to a path)")
    if ref_model is not None:
        _check_model(ref_model, "ref_model")
        raw["reference_model"] = _describe(ref_model)
    if tokenizer is not None:
        raw["tokenizer"] = _describe(tokenizer)
    split = str(raw.get("split", "train"))
    for key, data, argument, part in (("data", train_dataset, "train_dataset", split),
                                      ("eval_data", eval_dataset, "eval_dataset", "test")):
        if data is not None:
            name, rows = dataset_name(data, part, argument)
            raw[key] = name
            objects.datasets[name] = rows
    if peft_config is not None:
        raw.update(lora_keys(peft_config))
    if _is_peft(model):
        raw.update(_peft_model_keys(model, peft_config))
    if model is not None and not isinstance(model, str) and raw.get("merge"):
        raise ConfigError("merge: needs the base model on disk; with model=<object>, merge "
                          "the saved adapter yourself (PeftModel.merge_and_unload)")
    return build_config(TrainConfig, raw, where="tether.train"), objects


def _peft_model_keys(model: Any, peft_config: Any) -> dict[str, Any]:
    """A PeftModel trains its own adapter (TRL: its reference is the base, adapters off)."""
    from tether.model.lora import TRAINED_ADAPTER

    if peft_config is not None:
        raise ConfigError("peft_config: the model is a PeftModel with adapters already; "
                          "drop peft_config or pass the base model")
    if model.active_adapter != TRAINED_ADAPTER or len(model.peft_config) != 1:
        raise ConfigError(f"model: a PeftModel needs one adapter named '{TRAINED_ADAPTER}', "
                          f"got {', '.join(model.peft_config)}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model: the PeftModel has no trainable parameters; load it with "
                          "PeftModel.from_pretrained(..., is_trainable=True)")
    return lora_keys(model.peft_config[TRAINED_ADAPTER])


def _check_model(model: Any, argument: str) -> None:
    import torch

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise ConfigError(f"{argument}: expected a transformers PreTrainedModel, got "
                          f"{type(model).__name__}")


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def ready_model(model: Any, dtype: Any, device: Any) -> Any:
    """An in-memory model as ``load_model`` gives one: on ``device`` in ``dtype``, every
    dropout at 0 (DPO's log-ratios need it). The caller's object is moved, not copied."""
    from tether.model.loading import disable_dropout

    disable_dropout(model)
    return model.to(device=device, dtype=dtype)


def ready_tokenizer(tokenizer: Any) -> Any:
    """An in-memory tokenizer as ``load_tokenizer`` gives one: EOS pads when there is no pad."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("tokenizer: the tokenizer has no EOS token; set tokenizer.eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
