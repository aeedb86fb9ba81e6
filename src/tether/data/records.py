"""Preference data: validate raw rows (``tether.data.sources``) and build records.

Formats (auto-detected from the fields):
- standard: ``prompt``, ``chosen``, ``rejected`` strings;
- conversational: each a list of ``{"role", "content"}`` messages (as TRL accepts);
- implicit prompt: only ``chosen`` and ``rejected`` conversations (Anthropic HH style); their
  longest shared prefix becomes the prompt, split at a message boundary for conversations and
  at a whitespace boundary for plain text (never inside a word, hence never mid-token);
- anything else through ``field_map`` (tether name -> source field) and ``prompt_template``.
"""

from __future__ import annotations

import functools
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.data.messages import check_message, check_tools
from tether.data.sources import Row, read_rows
from tether.errors import ConfigError, DataError

__all__ = [
    "DataReport",
    "Message",
    "PreferenceRecord",
    "PromptRecord",
    "Row",
    "Text",
    "load_preferences",
    "load_prompts",
    "read_rows",
]

Message = dict[str, Any]  # role, content; tool_calls, reasoning_content ... (data.messages)
Text = str | list[Message]
Tools = list[dict[str, Any]] | None  # a row's JSON-schema tool list, passed to the template

# Alpaca's prompt (Taori et al. 2023), the template Raschka's instruction data is built for.
TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task{input_clause}. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
    ),
}


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: Text
    chosen: Text
    rejected: Text
    source: str = ""
    tools: Tools = None


@dataclass(frozen=True)
class PromptRecord:
    """A held-out prompt; ``row`` keeps every field (ground truth for rule judges)."""

    prompt: Text
    row: dict[str, Any]
    source: str = ""
    tools: Tools = None


@dataclass
class DataReport:
    """What loading did to the data, printed and saved with the run."""

    path: str
    rows: int = 0
    kept: int = 0
    identical_dropped: int = 0
    format: str = ""
    notes: list[str] = field(default_factory=list)
    identical_sources: list[str] = field(default_factory=list)  # file:line of each dropped

    def summary(self) -> str:
        s = f"{self.path}: {self.rows} rows, {self.kept} kept ({self.format})"
        if self.identical_dropped:
            s += f", {self.identical_dropped} dropped with chosen == rejected (no signal)"
        return s


# --------------------------------------------------------------------------- reading rows


def _apply_template(template: str, data: Mapping[str, Any], source: str) -> str:
    if template in TEMPLATES:
        inp = str(data.get("input") or "").strip()
        return TEMPLATES[template].format(
            instruction=_field_text(data, "instruction", source),
            input_clause=", paired with an input that provides further context" if inp else "",
            input_block=f"### Input:\n{inp}\n\n" if inp else "",
        )
    _check_template(template)
    return template.format_map(_StrictFields(data, source))


@functools.lru_cache(maxsize=16)
def _check_template(template: str) -> None:
    """Allow ``{field}`` names only: ``str.format`` would also evaluate ``{prompt.__class__}``
    or ``{x[0]}``, reaching into Python objects from a config value (issue 14)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"prompt_template: cannot format ({e}); use {{field}} names") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            field_text = "{" + name + (f"!{conversion}" if conversion else "") + (
                f":{spec}" if spec else "") + "}"
            raise ConfigError(
                f"prompt_template: {field_text!r} is not a plain field name; use {{field}} names "
                "only, e.g. '{instruction}\\n{input}' (write {{ and }} for literal braces)"
            )


class _StrictFields(dict[str, Any]):
    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        super().__init__(data)
        self.source = source

    def __missing__(self, key: str) -> str:
        raise DataError(f"{self.source}: field '{key}' (used by prompt_template) is missing")


def _field_text(data: Mapping[str, Any], name: str, source: str) -> str:
    if name not in data:
        raise DataError(f"{source}: missing field '{name}'")
    v = data[name]
    if v is None:
        raise DataError(f"{source}: field '{name}' is empty (null); fill it in or remove the row")
    if not isinstance(v, str):
        raise DataError(f"{source}: field '{name}' must be a string, got {type(v).__name__}")
    return v


def _mapped(row: Row, field_map: Mapping[str, str] | None, template: str | None) -> dict[str, Any]:
    data = dict(row.data)
    for target, src in (field_map or {}).items():
        if src not in row.data:
            raise DataError(
                f"{row.source}: missing field '{src}' (mapped to '{target}' by field_map)"
            )
        data[target] = row.data[src]
    if template is not None:
        data["prompt"] = _apply_template(template, row.data, row.source)
    return data


# --------------------------------------------------------------------------- validation


def _check_text(value: Any, name: str, source: str, allow_empty: bool = False) -> Text:
    """A string or a list of {role, content} messages; raises with file:line and field."""
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise DataError(f"{source}: field '{name}' is empty; remove the row or fill it in")
        return value
    if isinstance(value, list):
        if not value and not allow_empty:
            raise DataError(f"{source}: field '{name}' is an empty list of messages")
        return [check_message(m, source, f"{name}[{i}]") for i, m in enumerate(value)]
    if value is None and not allow_empty:  # JSON null, or an empty CSV/Parquet cell
        raise DataError(f"{source}: field '{name}' is empty (null); fill it in or remove the row")
    raise DataError(
        f"{source}: field '{name}' must be a string or a list of messages, "
        f"got {type(value).__name__}"
    )


def _detect(data: Mapping[str, Any], source: str) -> str:
    if "chosen" not in data or "rejected" not in data:
        missing = [k for k in ("chosen", "rejected") if k not in data]
        raise DataError(
            f"{source}: missing field '{missing[0]}'; expected prompt/chosen/rejected "
            "(or use field_map, e.g. field_map.chosen=output)"
        )
    if "prompt" in data:
        return "conversational" if isinstance(data["chosen"], list) else "standard"
    return "implicit"


def _shared_prefix(chosen: Text, rejected: Text, source: str) -> tuple[Text, Text, Text]:
    """Split two full conversations (or texts) into (prompt, chosen, rejected)."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        # The prompt must end before an assistant turn: back off to the last non-assistant turn.
        while n > 0 and chosen[n - 1]["role"] == "assistant":
            n -= 1
        if n == 0 or n >= min(len(chosen), len(rejected)):
            raise DataError(
                f"{source}: chosen and rejected share no prompt turns (implicit format)"
            )
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        common = os.path.commonprefix([chosen, rejected])
        # HH-style text marks turns with "Assistant:": cut right after the last marker of the
        # shared part, so words both answers happen to start with stay in the answers.
        marker = common.rfind("Assistant:")
        if marker >= 0:
            n = marker + len("Assistant:")
        else:  # back off to a whitespace boundary: never split inside a word
            n = len(common)
            while n > 0 and not common[n - 1].isspace():
                n -= 1
        if n == 0:
            raise DataError(f"{source}: chosen and rejected share no prompt (implicit format)")
        return chosen[:n], chosen[n:], rejected[n:]
    raise DataError(f"{source}: chosen and rejected must both be strings or both message lists")


def load_preferences(
    path: str,
    *,
    data_format: str = "auto",
    field_map: Mapping[str, str] | None = None,
    prompt_template: str | None = None,
    split: str = "train",
) -> tuple[list[PreferenceRecord], DataReport]:
    """Read, map and validate preference pairs. Identical pairs are dropped and counted."""
    rows = read_rows(path, split)
    report = DataReport(path=path, rows=len(rows))
    if not rows:
        raise DataError(f"{path}: no rows")
    records = []
    formats = set()
    for row in rows:
        data = _mapped(row, field_map, prompt_template)
        fmt = data_format if data_format != "auto" else _detect(data, row.source)
        formats.add(fmt)
        chosen = _check_text(data.get("chosen"), "chosen", row.source)
        rejected = _check_text(data.get("rejected"), "rejected", row.source)
        if fmt == "implicit":
            prompt, chosen, rejected = _shared_prefix(chosen, rejected, row.source)
        else:
            if "prompt" not in data:
                raise DataError(f"{row.source}: missing field 'prompt' ({fmt} format)")
            prompt = _check_text(data["prompt"], "prompt", row.source)
        if chosen == rejected:
            report.identical_dropped += 1
            report.identical_sources.append(row.source)
            continue
        tools = check_tools(data.get("tools"), row.source)
        records.append(PreferenceRecord(prompt, chosen, rejected, row.source, tools))
    report.kept = len(records)
    report.format = "/".join(sorted(formats))
    if not records:
        raise DataError(f"{path}: no usable pairs left (all {len(rows)} have chosen == rejected)")
    return records, report


def load_prompts(
    path: str,
    *,
    field_map: Mapping[str, str] | None = None,
    prompt_template: str | None = None,
    split: str = "train",
) -> list[PromptRecord]:
    """Held-out prompts from prompt-only rows or full preference rows (implicit ones too)."""
    out = []
    for row in read_rows(path, split):
        data = _mapped(row, field_map, prompt_template)
        if "prompt" in data:
            prompt = _check_text(data["prompt"], "prompt", row.source)
        elif "chosen" in data and "rejected" in data:
            prompt, _, _ = _shared_prefix(
                _check_text(data["chosen"], "chosen", row.source),
                _check_text(data["rejected"], "rejected", row.source),
                row.source,
            )
        else:
            raise DataError(f"{row.source}: missing field 'prompt'")
        out.append(PromptRecord(prompt, dict(row.data), row.source,
                                check_tools(data.get("tools"), row.source)))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def load_completions(
    path: str,
    *,
    field_map: Mapping[str, str] | None = None,
    prompt_template: str | None = None,
    split: str = "train",
) -> list[PreferenceRecord]:
    """SFT rows: ``prompt`` + ``completion`` (or ``chosen``), or ``messages`` conversations.

    Returned as records with an empty ``rejected`` so tokenization is shared with pairs.
    """
    out = []
    for row in read_rows(path, split):
        data = _mapped(row, field_map, prompt_template)
        if "messages" in data and "prompt" not in data:
            if not isinstance(data["messages"], list):
                raise DataError(
                    f"{row.source}: field 'messages' must be a list of {{'role', 'content'}} "
                    f"messages, got {type(data['messages']).__name__}"
                )
            msgs = _check_text(data["messages"], "messages", row.source)
            assert isinstance(msgs, list)  # a list in, a list out
            k = max((i for i, m in enumerate(msgs) if m["role"] != "assistant"), default=-1) + 1
            if k == 0 or k == len(msgs):
                raise DataError(
                    f"{row.source}: field 'messages' must end with assistant turn(s) after a prompt"
                )
            # Every assistant turn is scored (data.turns): the completion starts at the first.
            first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            if first == 0:
                raise DataError(f"{row.source}: field 'messages' starts with an assistant turn; "
                                "it needs a prompt (a user or system turn) first")
            prompt: Text = msgs[:first]
            completion: Text = msgs[first:]
        else:
            name = "completion" if "completion" in data else "chosen"
            if name not in data:
                raise DataError(f"{row.source}: missing field 'completion' (or 'chosen')")
            if "prompt" not in data:
                raise DataError(f"{row.source}: missing field 'prompt'")
            prompt = _check_text(data["prompt"], "prompt", row.source)
            completion = _check_text(data[name], name, row.source)
        out.append(PreferenceRecord(prompt, completion, "", row.source,
                                    check_tools(data.get("tools"), row.source)))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def needs_chat(records: Sequence[PreferenceRecord]) -> bool:
    """True when the rows are conversations (the chat template then applies)."""
    return bool(records) and isinstance(records[0].prompt, list)
