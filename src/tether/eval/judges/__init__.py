"""Judges that compare two answers to one prompt (rule, reward model, OpenAI-compatible, human)."""

from tether.eval.judges.base import Judge, Verdict, Winner

__all__ = ["Judge", "Verdict", "Winner"]
