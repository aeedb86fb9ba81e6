"""Typed configs: YAML + key=value overrides, coercion, every problem reported at once."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tether.config import TrainConfig, build_config, config_help, load_config, save_config
from tether.errors import ConfigError

REQUIRED = ["model=m", "data=d.jsonl"]


def test_yaml_then_overrides_later_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: m\ndata: d.jsonl\nbeta: 0.2\nlr: 1e-3\nbatch_size: 4\n"
        "field_map:\n  chosen: output\n  rejected: bad\n",
        encoding="utf-8",
    )
    cfg = load_config(TrainConfig, path, ["beta=0.3", "field_map.rejected=worse", "beta=0.4"])
    assert cfg.beta == 0.4  # the last override wins over the earlier one and the file
    assert cfg.lr == 1e-3  # PyYAML reads "1e-3" as a string: coerced to a float
    assert cfg.batch_size == 4  # from the file, untouched
    # a dotted override sets one entry and keeps the file's other entries
    assert cfg.field_map == {"chosen": "output", "rejected": "worse"}
    assert cfg.max_steps == TrainConfig.max_steps  # defaults fill the rest


def test_dotted_override_without_file(tmp_path):
    cfg = load_config(TrainConfig, None, [*REQUIRED, "field_map.chosen=output",
                                          "field_map.prompt=question"])
    assert cfg.field_map == {"chosen": "output", "prompt": "question"}


def test_value_coercion():
    cfg = load_config(TrainConfig, None, [
        *REQUIRED, "chat_template=off", "max_prompt_length=null", "adam_betas=0.8,0.95",
        "group_by_length=false", "epochs=2", "resume=auto", "--max-steps=3",
    ])
    assert cfg.chat_template == "off"  # YAML turns 'off' into False; the Literal takes it back
    assert cfg.max_prompt_length is None
    assert cfg.adam_betas == [0.8, 0.95]
    assert cfg.group_by_length is False
    assert cfg.epochs == 2.0 and isinstance(cfg.epochs, float)
    assert cfg.resume == "auto"
    assert cfg.max_steps == 3


def test_all_problems_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d.jsonl\nbetta: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path, [
            "batch_size=many", "beta=0", "max_length=16", "max_prompt_length=16",
            "scheduler=exp", "zzzz_qqq=1",
        ])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    expected = [
        "unknown key 'betta' (did you mean 'beta'?)",
        "batch_size: expected an integer, got 'many'",
        "beta: must be > 0, got 0",
        "max_prompt_length: must be in [1, max_length=16), got 16",
        "scheduler: expected one of linear, cosine, constant, got 'exp'",
        "unknown key 'zzzz_qqq'",
    ]
    for part in expected:
        assert part in msg
    assert "unknown key 'zzzz_qqq'; valid: adam_betas, attn_implementation, autocast" in msg  # no close name
    # a key that failed to parse is reported once (not again by the value checks)
    assert len(re.findall(r"(?<!\w)batch_size: ", msg)) == 1


def test_a_key_with_a_bad_type_is_not_reported_twice():
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [*REQUIRED, "beta=abc"])
    assert str(err.value) == "overrides: beta: expected a number, got 'abc'"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("label_smoothing=0.5", "label_smoothing: must be in [0, 0.5)"),
        ("lr=-1", "lr: must be > 0"),
        ("grad_accum=0", "grad_accum: must be >= 1"),
        ("max_steps=0", "max_steps: must be >= 1 or -1"),
        ("loss=dpoo", "loss: unknown 'dpoo' (did you mean 'dpo'?)"),
        ("adam_betas=0.9,1.0", "adam_betas: must be two numbers in [0, 1)"),
        ("adam_betas=0.9", "adam_betas: expected a list"),
        ("progress=maybe", "progress: expected true or false, got 'maybe'"),
        ("field_map=output", "field_map: expected a mapping"),
        ("broken", "override 'broken': expected key=value"),
    ],
)
def test_invalid_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [*REQUIRED, override])
    assert message in str(err.value)


def test_required_keys():
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig)
    assert "model: required" in str(err.value) and "data: required" in str(err.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndata: [unclosed\nbeta: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(TrainConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- model\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping of key: value"):
        load_config(TrainConfig, listy)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(TrainConfig, None, [*REQUIRED, "beta=0.25", "field_map.chosen=output",
                                          "lr=3e-6", "max_prompt_length=64"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg


def test_build_config_from_mapping_and_frozen():
    cfg = build_config(TrainConfig, {"model": "m", "data": "d", "beta": 1})
    assert cfg.beta == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 2.0  # type: ignore[misc]


def test_help_lists_every_key():
    text = config_help(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert f"  {f.name} " in text
        assert f.metadata.get("help"), f"{f.name} has no help"


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        # YAML would read these as a mapping, a mapping, true and null: text keys keep the text
        ("prompt_template={question}", "prompt_template", "{question}"),
        ("prompt_template=Q: {question} A:", "prompt_template", "Q: {question} A:"),
        ("field_map.prompt=yes", "field_map", {"prompt": "yes"}),
        ("data=#1.jsonl", "data", "#1.jsonl"),
        ("output_dir=2024", "output_dir", "2024"),
        ("eval_data=null", "eval_data", None),  # null still clears an optional key
        ("tokenizer=~", "tokenizer", None),
    ],
)
def test_text_overrides_are_taken_verbatim(override, key, value):
    cfg = load_config(TrainConfig, None, [*REQUIRED, override])
    assert getattr(cfg, key) == value
