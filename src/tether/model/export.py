"""Make a checkpoint directory a model: what ``from_pretrained`` reads beside the weights.

``checkpoints/step-N/model.safetensors`` already holds the policy's weights under their
``state_dict`` names, which are the names ``save_pretrained`` uses. Adding the model's
``config.json`` (its own dropout values, see ``restore_dropout``), ``generation_config.json``
and the tokenizer files makes ``AutoModelForCausalLM.from_pretrained(step_dir)`` and
``tether eval model=step_dir`` work. A LoRA run's policy is a PEFT model: its checkpoint gets
the trained adapter (``adapter_config.json``, ``adapter_model.safetensors``) instead, which
``PeftModel.from_pretrained(base, step_dir)`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.model.loading import restore_dropout

__all__ = ["write_model_files"]


def write_model_files(model: Any, tokenizer: Any, directory: Path) -> None:
    """Write the loadable-model files of ``model`` (not its weights) into ``directory``."""
    if hasattr(model, "peft_config"):
        from tether.model.lora import TRAINED_ADAPTER

        model.save_pretrained(directory, selected_adapters=[TRAINED_ADAPTER])
    else:
        model.config.save_pretrained(directory)
        restore_dropout(model, directory)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
