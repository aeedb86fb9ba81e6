"""The demo end to end (reduced size), and its command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.cli import main


@pytest.mark.slow
def test_small_demo_shows_dpo_beating_sft_and_leaves_an_ordinary_run_dir(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.demo.run import demo

    out = tmp_path / "demo"
    summary = demo(str(out), seed=0, size="small", progress=False)

    results = json.loads((out / "eval" / "results.json").read_text())
    assert {"win_rate", "ci95", "wins", "ties", "losses", "n"} <= set(results)
    assert results["n"] == results["wins"] + results["ties"] + results["losses"] >= 100
    low, high = results["ci95"]
    # DPO raised the win-rate above a coin flip by more than the interval's half-width
    assert results["win_rate"] - 0.5 > (high - low) / 2, results
    assert summary["results"]["win_rate"] == results["win_rate"]
    assert set(summary["families"]) == {"arithmetic", "fact", "format", "refuse"}
    assert set(summary["seconds"]) == {"build", "sft", "pairs", "dpo", "eval"}

    for name in ("report.md", "demo.json", "plots/training.png", "plots/winrate.png",
                 "eval/report.md", "config.yaml", "metrics.jsonl", "sft/model/config.json"):
        assert (out / name).is_file(), name
    assert "## Before (SFT) and after (DPO)" in (out / "report.md").read_text()

    # the trained model reloads with plain transformers and answers a prompt
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    new = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert tok.decode(new, skip_special_tokens=True).strip()

    # and `tether eval` works on the output directory like on any run directory
    rc = main(["--quiet", "eval", f"model={out}", f"data={out / 'data' / 'heldout.jsonl'}",
               "judge_rule=tether.demo.judge:score", "max_new_tokens=64", "progress=false",
               f"cache_dir={out / 'cache'}", f"output_dir={tmp_path / 'again'}"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "eval" / "results.json").read_text())
    assert (again["wins"], again["ties"], again["losses"]) == (
        results["wins"], results["ties"], results["losses"])


def test_demo_help_documents_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for key in ("seed", "output_dir", "size", "'small'"):
        assert key in text


def test_demo_rejects_an_unknown_size_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "size=huge", f"output_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "size" in err and "huge" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
