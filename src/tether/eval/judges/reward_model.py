"""A local reward model as judge: p(A better) = σ(r_A − r_B) (Bradley–Terry).

Any ``AutoModelForSequenceClassification`` with one output. Each (prompt, answer) is scored
once, in padded batches; the text is the tokenizer's chat template applied to a user turn and
an assistant turn when it has one, else ``prompt + "\\n" + answer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tether.errors import JudgeError
from tether.eval.hashing import weights_hash
from tether.eval.judges.base import JudgeItem, Verdict
from tether.eval.judges.registry import register_judge

if TYPE_CHECKING:
    from tether.eval.config import JudgeConfig

__all__ = ["RewardModelJudge"]


class RewardModelJudge:
    """``judge=reward_model judge_model=PATH``; deterministic, each pair judged once."""

    deterministic = True

    def __init__(
        self,
        path: str,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        memo_dir: Path | None = None,
    ) -> None:
        if not path:
            raise JudgeError("judge_model: required for judge=reward_model (a local model dir)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JudgeError(f"judge_model: cannot load reward model {path!r} ({first})") from None
        if self.model.config.num_labels != 1:
            raise JudgeError(
                f"judge_model: {path} has {self.model.config.num_labels} outputs; a reward model "
                "has one (AutoModelForSequenceClassification with num_labels=1)"
            )
        if self.tokenizer.pad_token_id is None:  # many reward models ship without a pad token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = max_length or limit or 4096
        self.identity = f"reward_model:{path}"
        # The weights decide the verdicts: a retrained reward model must not reuse old ones.
        self.template_hash = weights_hash(path, self.model, memo_dir)[:16]

    def _text(self, prompt: str, answer: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            from tether.data.chat import render_chat

            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
            return render_chat(self.tokenizer, messages, generation_prompt=False)
        return f"{prompt}\n{answer}"

    @torch.no_grad()
    def rewards(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scalar reward of each (prompt, answer)."""
        out: list[float] = []
        self.tokenizer.padding_side = "right"
        for start in range(0, len(pairs), self.batch_size):
            texts = [self._text(p, a) for p, a in pairs[start : start + self.batch_size]]
            enc = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            ).to(self.device)
            logits = self.model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).logits  # (B, 1)
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    def __call__(
        self, prompt: str, answer_a: str, answer_b: str, row: dict | None = None
    ) -> Verdict:
        return self.judge_many([JudgeItem(prompt, answer_a, answer_b, row)])[0]

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        keys = list(dict.fromkeys(k for i in items for k in ((i.prompt, i.answer_a),
                                                             (i.prompt, i.answer_b))))
        reward = dict(zip(keys, self.rewards(keys), strict=True))
        verdicts = []
        for i in items:
            ra, rb = reward[(i.prompt, i.answer_a)], reward[(i.prompt, i.answer_b)]
            p_a = 1.0 / (1.0 + math.exp(-(ra - rb))) if abs(ra - rb) < 700 else float(ra > rb)
            winner = "A" if ra > rb else "B" if rb > ra else "tie"
            raw = f"r_a={ra:.6g} r_b={rb:.6g}"
            verdicts.append(Verdict(winner, p_a=p_a, raw=raw))  # type: ignore[arg-type]
        return verdicts


@register_judge("reward_model", requires={"judge_model": " (a local model directory)"})
def _build(cfg: JudgeConfig, memo_dir: Path | None) -> RewardModelJudge:
    from tether.model.loading import resolve_device

    return RewardModelJudge(
        cfg.judge_model,
        # runtime keys of the config that carries the judge keys (eval's or pairs')
        device=resolve_device(getattr(cfg, "device", "auto")),
        batch_size=getattr(cfg, "batch_size", 8),
        trust_remote_code=getattr(cfg, "trust_remote_code", False),
        memo_dir=memo_dir,
    )
