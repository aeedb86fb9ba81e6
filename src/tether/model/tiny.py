"""Tiny local models and tokenizers, built offline: for the demo, the tests and the benchmarks.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained with ``tokenizers``
on the texts given; the models are random-initialised ``transformers`` Llama or GPT-2 models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

__all__ = ["CHAT_TEMPLATE", "tiny_gpt2", "tiny_llama", "train_tokenizer"]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# A ChatML-style template; the end-of-turn token is the tokenizer's EOS, as in most chat models,
# and the template puts a newline after it (the case where EOS handling is easy to get wrong).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, chat_template: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    It adds BOS at the start of every encoded text (like Llama) and knows ``<pad>``. With
    ``chat_template`` it gets a ChatML-style template whose end-of-turn token is EOS.
    """
    specials = [PAD, BOS, EOS, IM_START, IM_END] if chat_template else [PAD, BOS, EOS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    eos = IM_END if chat_template else EOS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=eos, pad_token=PAD, unk_token=None
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 512,
    tie_embeddings: bool = False,
    seed: int = 0,
) -> PreTrainedModel:
    """A random-initialised Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        **_ids(tokenizer),
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """A random-initialised GPT-2 (learned positions, LayerNorm, tied embeddings)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_ids(tokenizer),
    )
    return GPT2LMHeadModel(config)
