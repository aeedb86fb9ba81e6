"""Judges that compare two answers to one prompt (rule, reward model, OpenAI-compatible, human).

A new judge is one module registering its builder with ``register_judge``.
"""

from tether.eval.judges.base import Judge, JudgeItem, Verdict, Winner
from tether.eval.judges.registry import JUDGES, build_judge, register_judge

__all__ = ["JUDGES", "Judge", "JudgeItem", "Verdict", "Winner", "build_judge", "register_judge"]
