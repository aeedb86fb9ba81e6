"""The benchmark's workload: a word-level tokenizer whose ids are exactly the words' numbers, a
random-init Llama, and preference pairs of random token ids written as text.

Text made of words ``w<id>`` separated by spaces tokenizes to exactly those ids in any
tokenizer pipeline (tether's and TRL's both call the tokenizer on prompt and prompt+answer), so
both tools train on the same token ids without either being fed ids by a back door.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIALS = 3  # ids 0, 1, 2 are <pad>, <s>, </s>; the words w3 ... w{V-1} follow


@dataclass(frozen=True)
class Workload:
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 4
    intermediate: int = 1536
    vocab: int = 32_000
    prompt_len: int = 192  # mean prompt tokens (BOS included)
    completion_len: int = 64  # mean completion tokens (EOS included)
    spread: float = 0.15  # lengths are uniform in mean × (1 ± spread)
    pairs: int = 40
    seed: int = 0
    tie_embeddings: bool = False  # Llama 3.2 1B ties its LM head to the input embedding
    max_positions: int = 4096
    rope_theta: float = 10_000.0  # Llama 3.x: 500,000
    save_dtype: str = "float32"  # bfloat16 halves the disk and load time of the GPU shapes

    @property
    def name(self) -> str:
        extra = "".join(
            [f"-kv{self.kv_heads}-m{self.intermediate}" if self.save_dtype != "float32" else "",
             "-tied" if self.tie_embeddings else "", f"-{self.save_dtype}"
             if self.save_dtype != "float32" else ""]
        )
        return (
            f"h{self.hidden}-l{self.layers}-v{self.vocab // 1000}k-"
            f"p{self.prompt_len}-c{self.completion_len}-n{self.pairs}-s{self.seed}{extra}"
        )


def build_tokenizer(vocab: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {PAD: 0, BOS: 1, EOS: 2, **{f"w{i}": i for i in range(SPECIALS, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([PAD, BOS, EOS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None
    )


def _words(rng: random.Random, n: int, vocab: int) -> str:
    return " ".join(f"w{rng.randrange(SPECIALS, vocab)}" for _ in range(n))


def _length(rng: random.Random, mean: int, spread: float) -> int:
    return max(2, round(mean * (1 + rng.uniform(-spread, spread))))


def make_pairs(w: Workload) -> list[dict[str, str]]:
    """Prompts of ~prompt_len tokens (BOS counts), answers of ~completion_len (EOS counts)."""
    rng = random.Random(w.seed)
    rows = []
    for _ in range(w.pairs):
        p = _length(rng, w.prompt_len, w.spread) - 1
        c = _length(rng, w.completion_len, w.spread) - 1
        r = _length(rng, w.completion_len, w.spread) - 1
        rows.append({
            "prompt": _words(rng, p, w.vocab),
            "chosen": " " + _words(rng, c, w.vocab),
            "rejected": " " + _words(rng, r, w.vocab),
        })
    return rows


def materialise(w: Workload, root: Path) -> Path:
    """Write model/ (safetensors + tokenizer), pairs.jsonl and workload.json under root/<name>."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = root / w.name
    if (out / "workload.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(w.vocab)
    torch.manual_seed(w.seed)
    config = LlamaConfig(
        hidden_size=w.hidden, num_hidden_layers=w.layers, num_attention_heads=w.heads,
        num_key_value_heads=w.kv_heads, intermediate_size=w.intermediate,
        max_position_embeddings=w.max_positions, vocab_size=w.vocab, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, tie_word_embeddings=w.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": w.rope_theta},
    )
    # random weights drawn where they are quickest (an 8B model takes minutes on a CPU)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, w.save_dtype))
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for row in make_pairs(w):
            f.write(json.dumps(row) + "\n")
    (out / "workload.json").write_text(json.dumps(asdict(w), indent=2) + "\n")
    return out
