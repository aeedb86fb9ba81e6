"""``model/README.md``: a Hugging Face Hub model card for the trained model.

YAML front matter the Hub reads (``base_model``, ``library_name``, ``tags``), then what a reader
needs to trust the model: the base model and its revision, the data files with their SHA-256,
the objective and its keys, the steps, the final metrics, the versions and the command line.
``tether eval`` rewrites the section between the ``tether:eval`` markers with its win-rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from tether.io import is_hub_id, write_text
from tether.losses.objective import LossConfig

__all__ = ["EVAL_BEGIN", "EVAL_END", "file_sha256", "model_card", "write_eval_section"]

EVAL_BEGIN, EVAL_END = "<!-- tether:eval -->", "<!-- /tether:eval -->"
_NO_EVAL = "Not evaluated yet: `tether eval model=<run dir>` writes its win-rate here."


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_lines(cfg: Any) -> list[str]:
    """One line per data source: a local file with its SHA-256, else the name as given."""
    out = []
    for key in ("data", "eval_data"):
        value = getattr(cfg, key, None)
        if not value:
            continue
        path = Path(value).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
            [path] if path.is_file() else []
        if not files:
            out.append(f"- `{key}`: `{value}` (hub dataset)")
        out += [f"- `{key}`: `{f.name}` sha256 `{file_sha256(f)}`" for f in files]
    return out


def _objective(cfg: Any) -> dict[str, Any]:
    """The loss, its β, and every objective key set away from its default."""
    from tether.losses import LOSS_SPECS

    keys = {"loss": cfg.loss}
    spec = LOSS_SPECS.get(cfg.loss)
    keys["beta"] = cfg.beta if cfg.beta is not None else getattr(spec, "default_beta", None)
    for f in dataclasses.fields(LossConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name not in keys and getattr(cfg, f.name) != default:
            keys[f.name] = getattr(cfg, f.name)
    return keys


def _front_matter(cfg: Any) -> str:
    meta: dict[str, Any] = {}
    if is_hub_id(cfg.model) and not Path(cfg.model).expanduser().exists():
        meta["base_model"] = cfg.model
    meta["library_name"] = "peft" if cfg.lora else "transformers"
    family = "sft" if cfg.loss == "sft" else "dpo"
    tags = ["tether", family, cfg.loss, *(["lora"] if cfg.lora else [])]
    meta["tags"] = list(dict.fromkeys(tags))
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def model_card(cfg: Any, record: dict[str, Any], metrics: list[dict[str, Any]],
               name: str) -> str:
    """The card's text. ``record``: run.json (versions, command, summary); ``metrics``: the
    lines of metrics.jsonl."""
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
    final = {**(train[-1] if train else {}), **(evals[-1] if evals else {})}
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()
             if k in ("loss", "rewards/accuracies", "rewards/margins") or k.startswith("eval/")}
    revision = f" at revision `{cfg.revision}`" if cfg.revision else ""
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    summary = record.get("summary") or {}
    lines = [
        _front_matter(cfg), f"# {name}", "",
        f"Trained with tether from `{cfg.model}`{revision}"
        f"{' (LoRA adapter)' if cfg.lora else ''}.", "",
        "## Training data", "", *_data_lines(cfg), "",
        "## Objective", "", "```json", json.dumps(_objective(cfg), indent=2), "```", "",
        f"Steps: {summary.get('steps', final.get('step'))}. Final metrics: "
        + (", ".join(f"`{k}` {v}" for k, v in shown.items()) or "none logged") + ".", "",
        "## Evaluation", "", EVAL_BEGIN, _NO_EVAL, EVAL_END, "",
        "## Provenance", "", f"Versions: {versions}.", "",
        "```", record.get("command", ""), "```", "",
    ]
    return "\n".join(lines)


def write_eval_section(card: Path, results: dict[str, Any]) -> bool:
    """Replace the card's eval section with ``results`` (tether eval); False without a card."""
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(EVAL_BEGIN) + ".*?" + re.escape(EVAL_END), re.S)
    if not pattern.search(text):
        return False
    rate, ci = results.get("win_rate"), results.get("ci95") or [None, None]
    if rate is None:
        body = f"No judge ran (judge={results.get('judge_kind')})."
    else:
        interval = f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if None not in ci[:2] else ""
        body = (f"Win-rate against `{results['models']['reference']}`: **{rate:.3f}**"
                f"{interval} over {results.get('n')} judged pairs "
                f"({results.get('wins')} wins, {results.get('ties')} ties, "
                f"{results.get('losses')} losses); judge `{results.get('judge')}`, "
                f"{results.get('prompts')} prompts from `{results.get('data')}`.")
    write_text(card, pattern.sub(lambda _: f"{EVAL_BEGIN}\n{body}\n{EVAL_END}", text))
    return True
