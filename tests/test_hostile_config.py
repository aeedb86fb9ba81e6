"""Hostile configs (issue 14): non-finite and out-of-range numbers, YAML duplicate keys, deep
nesting and alias bombs are one-line ConfigErrors, and ``tether train`` exits 2 on them."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.cli import main
from tether.config import TrainConfig, build_config, load_config
from tether.demo.run import DemoConfig
from tether.errors import ConfigError
from tether.eval.config import EvalConfig, JudgeConfig
from tether.fields import Bounds, deferred_checks, opt, range_problems
from tether.losses import LOSSES
from tether.losses.objective import LossConfig
from tether.workflows.iterate import IterateConfig
from tether.workflows.pairs import PairsConfig

SRC = Path(__file__).resolve().parents[1] / "src"
REQUIRED = ["model=m", "data=d.jsonl"]
# a key only some objectives read is tried with one that reads it (taken from the signatures)
LOSS_FOR = {key: next(n for n, fn in LOSSES.items() if key in inspect.signature(fn).parameters)
            for key in ("gamma", "orpo_lambda", "kto_desirable_weight", "kto_undesirable_weight",
                        "discopop_tau", "dpop_lambda", "rdpo_alpha")}
EXTRA = {"loss_weights": {"loss": "mixture", "mixture": ["dpo"]},
         "f_alpha": {"f_divergence": "alpha_divergence"},
         "ref_model_mixup_alpha": {"ref_model_sync_steps": 1}}
CONFIGS = [TrainConfig, LossConfig, JudgeConfig, EvalConfig, PairsConfig, IterateConfig,
           DemoConfig]


def numeric_fields(cls: type) -> list[tuple[str, type, bool]]:
    """(name, int or float, is a list) of every numeric field, read from the type hints."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        tp = args[0] if len(args) == 1 else tp
        is_list = typing.get_origin(tp) is list
        item = typing.get_args(tp)[0] if is_list else tp
        if item in (int, float):
            out.append((name, item, is_list))
    return out


def test_every_config_has_numeric_keys_and_their_defaults_are_in_range():
    for cls in CONFIGS:
        assert numeric_fields(cls), cls  # the parametrised test below has something to check
        with deferred_checks():  # defaults alone miss required keys (model, data)
            default = cls()
        assert range_problems(default) == [], cls  # raises TypeError for a key without a range


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_key_refuses_non_finite_and_huge_values(cls):
    for name, kind, is_list in numeric_fields(cls):
        bad_values: list[object] = (
            [math.nan, math.inf, -math.inf] if kind is float else [2**64, -(2**64)]
        )
        for bad in bad_values:
            value = [bad] if is_list else bad
            with pytest.raises(ConfigError) as err:  # with an objective that reads the key
                build_config(cls, {name: value, **({"loss": LOSS_FOR[name]} if name in LOSS_FOR
                                                   else {}), **EXTRA.get(name, {})})
            parts = [p for p in str(err.value).split("; ") if re.match(rf"(config: )?{name}: ", p)]
            assert len(parts) == 1, (name, bad, str(err.value))
            assert repr(bad) in parts[0], (name, parts[0])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=inf", "lr: must be a finite number > 0, got inf"),
        ("lr=nan", "lr: must be a finite number > 0, got nan"),
        ("beta=inf", "beta: must be a finite number > 0, got inf"),
        ("epochs=inf", "epochs: must be a finite number >= 0, got inf"),
        ("weight_decay=-5", "weight_decay: must be >= 0, got -5.0"),
        ("seed=-1", "seed: must be in [0, 4294967295], got -1"),
        ("seed=12345678901234567890", "seed: must be in [0, 4294967295], got 12345678901234567890"),
        ("batch_size=18446744073709551616",
         "batch_size: must be >= 1 and fit in 64 bits, got 18446744073709551616"),
        ("lora_dropout=1", "lora_dropout: must be in [0, 1), got 1.0"),
        ("max_grad_norm=-inf", "max_grad_norm: must be a finite number >= 0, got -inf"),
    ],
)
def test_out_of_range_message(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [*REQUIRED, override])
    assert str(err.value) == f"overrides: {message}"


def test_other_configs_share_the_checks():
    with pytest.raises(ConfigError) as err:
        build_config(EvalConfig, {"model": "m", "data": "d", "judge": "none",
                                  "top_p": 1.5, "judge_timeout": math.inf, "seed": -3})
    assert str(err.value) == (
        "config: judge_timeout: must be a finite number in (0, 86400], got inf; top_p: must be "
        "in (0, 1], got 1.5; seed: must be in [0, 4294967295], got -3"
    )
    with pytest.raises(ConfigError, match=r"^iterate: seed: seed \+ rounds must be <= 4294967295"):
        build_config(IterateConfig, {"model": "m", "data": "d", "eval_data": "e", "judge": "none",
                                     "seed": 2**32 - 2, "rounds": 2}, where="iterate")


def test_bounds_describe_and_contain():
    assert Bounds(gt=0).describe() == "> 0"
    assert Bounds(ge=1).describe() == ">= 1"
    assert Bounds(le=5).describe() == "<= 5"
    assert Bounds(ge=0, lt=0.5).describe() == "in [0, 0.5)"
    assert Bounds(gt=0, le=1).describe() == "in (0, 1]"
    assert 0.0 in Bounds(ge=0, lt=0.5) and 0.5 not in Bounds(ge=0, lt=0.5)
    assert 1 in Bounds(gt=0, le=1) and 0 not in Bounds(gt=0, le=1)


def test_a_numeric_key_without_a_range_is_a_bug_in_tether():
    @dataclass(frozen=True)
    class Loose:
        steps: int = opt(1, "steps")

        def problems(self) -> list[str]:
            return []

    with pytest.raises(TypeError, match=r"Loose\.steps: a numeric config field declares"):
        build_config(Loose, {})
    assert dataclasses.fields(Loose)[0].metadata["help"] == "steps"


# --------------------------------------------------------------------------- YAML


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def bomb_yaml(levels: int = 9) -> str:
    """Billion laughs: 10 aliases per level, so the last anchor expands to 10**levels values."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nlora_target_modules: *a{levels}\n"


def test_yaml_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path / "c.yaml", "model: m\ndata: d.jsonl\nlr: 1e-5\nbeta: 0.1\nlr: 1e-3\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path)
    assert str(err.value) == (
        f"{path}:5: duplicate key 'lr' (first set on line 3); YAML would keep only the last "
        "one, so remove one of them"
    )
    nested = write(tmp_path / "n.yaml", "field_map:\n  chosen: a\n  chosen: b\n")
    with pytest.raises(ConfigError, match=r"n\.yaml:3: duplicate key 'chosen' \(first set on "
                                          r"line 2\)"):
        load_config(TrainConfig, nested)


def test_yaml_merge_key_override_is_not_a_duplicate(tmp_path):
    path = write(tmp_path / "m.yaml", "model: m\ndata: d.jsonl\nfield_map:\n"
                 "  <<: {chosen: a, rejected: b}\n  chosen: c\n")
    assert load_config(TrainConfig, path).field_map == {"chosen": "c", "rejected": "b"}


def test_yaml_deep_nesting_and_recursive_alias_are_refused(tmp_path):
    deep = write(tmp_path / "deep.yaml", "model: m\nfield_map: " + "[" * 100_000
                 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, deep)
    assert str(err.value) == f"{deep}:2: nested deeper than 64 levels; a config is flat key: " \
                             "value pairs"
    loop = write(tmp_path / "loop.yaml", "model: m\nlora_target_modules: &a [x, *a]\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml:2: an alias refers to itself"):
        load_config(TrainConfig, loop)


def test_yaml_aliases_within_the_limit_still_work(tmp_path):
    path = write(tmp_path / "ok.yaml", "model: m\ndata: d.jsonl\nmods: &m [q_proj, v_proj]\n"
                 "lora_target_modules: *m\n")
    with pytest.raises(ConfigError) as err:  # only the unknown key `mods` is wrong
        load_config(TrainConfig, path)
    assert str(err.value).startswith(f"{path}: unknown key 'mods'")


# --------------------------------------------------------------------------- the CLI


def cli_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (arguments after the data, regex of the error after 'tether train: error: ')."""
    dup = write(tmp_path / "dup.yaml", "beta: 0.1\nmax_steps: 1\nbeta: 0.5\n")
    deep = write(tmp_path / "deep.yaml", "field_map: " + "{a: " * 5000 + "}" * 5000 + "\n")
    return {
        "lr=inf": (["lr=inf"], r"overrides: lr: must be a finite number > 0, got inf$"),
        "beta=inf": (["beta=inf"], r"overrides: beta: must be a finite number > 0, got inf$"),
        "lr=nan": (["lr=nan"], r"overrides: lr: must be a finite number > 0, got nan$"),
        "weight_decay=-5": (["weight_decay=-5"], r"overrides: weight_decay: must be >= 0"),
        "seed=-1": (["seed=-1"], r"overrides: seed: must be in \[0, 4294967295\], got -1$"),
        "20-digit seed": (["seed=12345678901234567890"], r"overrides: seed: must be in \[0, "),
        "epochs=inf": (["epochs=inf"], r"overrides: epochs: must be a finite number >= 0"),
        "duplicate key": ([str(dup)], re.escape(f"{dup}:3: duplicate key 'beta' (first set on "
                                                "line 1)")),
        "deep yaml": ([str(deep)], re.escape(f"{deep}:1: nested deeper than 64 levels")),
    }


CLI_CASES = ["lr=inf", "beta=inf", "lr=nan", "weight_decay=-5", "seed=-1", "20-digit seed",
             "epochs=inf", "duplicate key", "deep yaml"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_train_refuses_with_one_line_and_exit_2(case, tmp_path, llama_dir, pairs_file, capsys):
    extra, pattern = cli_cases(tmp_path)[case]
    items = [*extra[:1], f"model={llama_dir}", f"data={pairs_file}", *extra[1:]]
    code = main(["train", *items, "max_steps=1", "batch_size=4", "progress=false",
                 f"output_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.match(r"tether train: error: " + pattern, err), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def limited(seconds: int = 60, gib: int = 2):
    """preexec_fn: cap the child's address space and CPU time, so a bomb cannot take the
    machine down even on code that does not guard against it."""
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (gib * 2**30, gib * 2**30))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    return apply


def test_override_alias_bomb_is_refused(tmp_path, llama_dir, pairs_file, capsys):
    # Nine levels of ten aliases: 10**9 values once expanded, from a 300-character argument.
    # (In-process is safe on unguarded code too: its first item fails the type check.)
    override = "lora_target_modules=[" + ", ".join(
        f"&b{i} [{', '.join([f'*b{i - 1}' if i else 'x'] * 10)}]" for i in range(9)) + "]"
    code = main(["train", f"model={llama_dir}", f"data={pairs_file}", override,
                 f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err[-2000:]
    assert err == ("tether train: error: override 'lora_target_modules': aliases expand to more "
                   "than 100000 values (an alias bomb?); write the values out instead\n")


@pytest.mark.slow
def test_alias_bomb_file_ends_in_seconds_in_a_real_process(tmp_path, llama_dir, pairs_file):
    """`python -m tether train bomb.yaml`: 10**9 values once expanded; unguarded, it ran until
    killed (the limits make even that end, in a MemoryError, within a minute)."""
    bomb = write(tmp_path / "bomb.yaml", bomb_yaml(9))  # a4 on line 5 is the first past 10**5
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "--quiet", "train", str(bomb), f"model={llama_dir}",
         f"data={pairs_file}", f"output_dir={tmp_path / 'run'}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
        preexec_fn=limited(),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr == (f"tether train: error: {bomb}:5: aliases expand to more than 100000 "
                           "values (an alias bomb?); write the values out instead\n")
    assert proc.stdout == "" and not (tmp_path / "run").exists()
