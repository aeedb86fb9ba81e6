"""Loading any config class: YAML plus ``key=value`` overrides, checked and coerced.

``load_config`` / ``build_config`` check the keys (with "did you mean", TRL's names for
``TrainConfig``), coerce and type-check the values, run the class's own ``problems()`` and the
declared numeric ranges, and report everything wrong at once in a single ``ConfigError``.
``config_help`` and ``config_markdown`` render the key reference for ``--help`` and the README.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from tether.errors import ConfigError
from tether.fields import deferred_checks, field_help, range_problems
from tether.io import cache_root, write_text
from tether.yaml_loader import YamlRefused, load_yaml

__all__ = [
    "absolute_paths", "build_config", "config_help", "config_markdown", "load_config",
    "save_config", "to_dict",
]

C = TypeVar("C")


def _unknown(what: str, name: str, valid: Sequence[str], also: Sequence[str] = ()) -> str:
    """``also``: names a close match may suggest that the full list leaves out (TRL's)."""
    close = difflib.get_close_matches(name, [*valid, *also], n=1, cutoff=0.5)
    if close:
        return f"{what}: unknown '{name}' (did you mean '{close[0]}'?)"
    return f"{what}: unknown '{name}'; valid: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ValueError with a readable reason."""
    if tp is Any:  # passed on to another config, which checks it
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ValueError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message says it best
            raise ValueError(errors[0])
        raise ValueError(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML turns on/off/yes/no into bools
            value = {True: "on", False: "off"}.get(value, value)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-7 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(key, v, vt) for k, v in value.items()}
    raise TypeError(f"config field {key} has unsupported type {tp}")  # internal bug


def _is_text(hints: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` (``a`` or ``a.b`` of a mapping field) holds a string or null."""
    head, _, sub = key.partition(".")
    tp = hints.get(head)
    if sub:
        if typing.get_origin(tp) is not dict:
            return False
        tp = typing.get_args(tp)[1]
    return tp is str or (
        typing.get_origin(tp) in (Union, types.UnionType)
        and set(typing.get_args(tp)) == {str, type(None)}
    )


def _parse_override(item: str, hints: Mapping[str, Any]) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. beta=0.1")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    if _is_text(hints, key) and raw.strip() not in ("null", "~"):
        # Verbatim: YAML would read prompt_template={question} as a mapping, 'Q: {x}' as a
        # mapping too, field_map.prompt=yes as true and data=#x as null.
        return key, raw
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YamlRefused as e:
        raise ConfigError(f"override '{key}': {e}") from None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of over 4300 digits
        value = raw
    return key, value


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> C:
    """Build ``cls`` from a YAML file and ``key=value`` overrides, reporting all problems at once.

    Dotted keys set one entry of a mapping field: ``field_map.chosen=output``.
    """
    raw: dict[str, Any] = {}
    where = "overrides"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        try:
            loaded = load_yaml(text)
        except YamlRefused as e:
            raise ConfigError(f"{path}:{e.line}: {e}") from None
        except (yaml.YAMLError, ValueError) as e:  # ValueError: an int of over 4300 digits
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", e)
            raise ConfigError(f"{path}{line}: not valid YAML ({problem})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
        raw.update(loaded)
    hints = typing.get_type_hints(cls)
    items = (
        overrides.items() if isinstance(overrides, Mapping)
        else (_parse_override(o, hints) for o in overrides)
    )
    for key, value in items:
        if "." in key:
            head, sub = key.split(".", 1)
            base = raw.get(head)
            raw[head] = {**(base if isinstance(base, dict) else {}), sub: value}
        else:
            raw[key] = value
    return build_config(cls, raw, where=where)


def build_config(cls: type[C], raw: Mapping[str, Any], where: str = "config") -> C:
    """Check and coerce a plain mapping into ``cls`` (all problems in one ConfigError)."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    fields = set(names)
    problems: list[str] = []
    trl: list[str] = []
    if getattr(cls, "trl_names", False):  # TRL's vocabulary -> tether keys, before the check
        from tether.trl_names import TRL_NAMES, translate_trl

        raw, problems = translate_trl(raw)
        trl = list(TRL_NAMES)  # "did you mean" knows them
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            message = _unknown("key", key, names, trl)
            problems.append(message.replace("key: unknown", "unknown key", 1))
            continue
        try:
            values[key] = _coerce(key, value, hints[key])
        except ValueError as e:
            problems.append(f"{key}: {e}")
    # Value checks run even when some keys failed, on the keys that parsed, so the user sees
    # every problem in one go; a key already reported is not reported twice. The declared
    # ranges (finite floats included) come last: a class's own message for a key is the more
    # specific one (adam_betas: two numbers in [0, 1)).
    with deferred_checks():
        cfg = cls(**values)
    reported = {p.split(":", 1)[0] for p in problems}
    problems.extend(
        p for p in cfg.problems() if p.split(":", 1)[0] not in reported  # type: ignore[attr-defined]
    )
    for p in range_problems(cfg):
        if p.split(":", 1)[0] not in {q.split(":", 1)[0] for q in problems}:
            problems.append(p)
    if not problems:
        return cfg
    raise ConfigError(f"{where}: " + "; ".join(problems))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: Path) -> None:
    """Write the resolved config, exactly what ran, as YAML."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_help(cls: type) -> str:
    """One line per key: name, type, default, help (used by ``--help`` and the README)."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = (
            f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        )
        lines.append(
            f"  {f.name:<20} {_type_name(hints[f.name]):<28} default {default!r}: "
            f"{field_help(f)}"
        )
    return "\n".join(lines)


def config_markdown(cls: type) -> str:
    """The config reference as a Markdown table (the README's copy is checked by a test)."""
    hints = typing.get_type_hints(cls)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        kind = _type_name(hints[f.name]).replace(" | ", " / ")
        lines.append(
            f"| `{f.name}` | {kind} | `{default!r}` | {field_help(f)} |".replace(
                "\\n", "\\\\n"
            )
        )
    return "\n".join(lines)


# Keys naming local files or directories, recorded absolute so that a run directory (its
# config.yaml, its adapter's base model) works from any folder.
_PATH_KEYS = ("model", "tokenizer", "reference_model", "data", "eval_data", "output_dir",
              "cache_dir")


def absolute_paths(cfg: C) -> C:
    """``cfg`` with every relative local path made absolute (hub ids stay as they are)."""
    changes = {}
    for key in _PATH_KEYS:
        value = getattr(cfg, key, None)
        if not value or not isinstance(value, str):
            continue
        path = cache_root(value) if key == "cache_dir" else Path(value).expanduser()
        if key in ("output_dir", "cache_dir") or path.exists():
            changes[key] = str(path.resolve())
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]
