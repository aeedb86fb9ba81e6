"""Validating chat messages, tool calls and a row's ``tools`` column (issue 19, item 2).

Messages follow the format ``transformers`` chat templates and TRL take: ``role`` and
``content``; assistant messages may carry ``tool_calls`` (``[{"type": "function", "function":
{"name": ..., "arguments": {...}}}]``) and their reasoning (``reasoning_content`` or
``thinking``); ``tool`` messages may name the call they answer (``tool_call_id``, ``name``).
Arguments given as a JSON string are parsed into the object templates expect (Llama 3.1 writes
``arguments | tojson``, which would quote a string twice). Every error names the field down to
the offending key, e.g. ``chosen[0].tool_calls[0].function.arguments``.
"""

from __future__ import annotations

import json
from typing import Any

from tether.errors import DataError

__all__ = ["ROLES", "check_message", "check_tools"]

ROLES = ("system", "user", "assistant", "tool")  # what chat templates know how to render
_TEXT_KEYS = ("reasoning_content", "thinking", "tool_call_id", "name")


def check_message(m: Any, source: str, name: str) -> dict[str, Any]:
    """One validated message; ``name`` is its field, e.g. ``chosen[0]``."""
    where = f"{source}: field '{name}'"
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise DataError(f"{where} must be a {{'role': str, 'content': str}} message")
    if m["role"] not in ROLES:  # a chat template would mis-render or drop the turn
        raise DataError(
            f"{where} has role {m['role']!r}; expected one of {', '.join(ROLES)} "
            "(rename it, e.g. with a script, or remove the row)"
        )
    calls = m.get("tool_calls")
    content = m.get("content")
    if content is None and calls:
        content = ""  # an assistant turn that only calls a tool
    if not isinstance(content, str):
        raise DataError(f"{where} must be a {{'role': str, 'content': str}} message")
    out: dict[str, Any] = {"role": m["role"], "content": content}
    for key in _TEXT_KEYS:
        if m.get(key) is not None:
            if not isinstance(m[key], str):
                raise DataError(
                    f"{source}: field '{name}.{key}' must be a string, got {type(m[key]).__name__}"
                )
            out[key] = m[key]
    if calls is not None:
        if m["role"] != "assistant":
            raise DataError(
                f"{source}: field '{name}.tool_calls': only assistant messages call tools"
            )
        if not isinstance(calls, list) or not calls:
            raise DataError(f"{source}: field '{name}.tool_calls' must be a non-empty list")
        out["tool_calls"] = [
            _check_call(c, source, f"{name}.tool_calls[{i}]") for i, c in enumerate(calls)
        ]
    return out


def _check_call(call: Any, source: str, name: str) -> dict[str, Any]:
    def where(key: str = "") -> str:
        return f"{source}: field '{name}{key}'"

    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        raise DataError(
            f"{where()} must be {{'type': 'function', 'function': {{'name': str, 'arguments': "
            "{...}}}}"
        )
    if call.get("type", "function") != "function":
        raise DataError(f"{where('.type')} is {call['type']!r}; expected 'function'")
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise DataError(f"{where('.function.name')} must be a non-empty string")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as e:
            raise DataError(f"{where('.function.arguments')} is not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise DataError(
            f"{where('.function.arguments')} must be a JSON object, got {type(args).__name__}"
        )
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def check_tools(value: Any, source: str) -> list[dict[str, Any]] | None:
    """The row's ``tools`` column: a JSON-schema list (or its JSON text); None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise DataError(f"{source}: field 'tools' is not valid JSON ({e})") from None
    if not isinstance(value, list):
        raise DataError(
            f"{source}: field 'tools' must be a list of tool schemas, got {type(value).__name__}"
        )
    for i, tool in enumerate(value):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError(
                f"{source}: field 'tools[{i}]' must be a JSON schema {{'type': 'function', "
                "'function': {'name': str, 'description': str, 'parameters': {...}}}"
            )
    return value or None
