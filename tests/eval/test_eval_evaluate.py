"""``evaluate`` end to end on tiny random models with a rule judge."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import yaml

from tether.commands import eval as eval_cli
from tether.config import build_config
from tether.errors import ConfigError, JudgeError
from tether.eval.config import EvalConfig
from tether.eval.evaluate import evaluate
from tether.model.tiny import tiny_llama

DOCUMENTED = {"win_rate", "ci95", "wins", "ties", "losses", "unparsed", "n", "lc_win_rate",
              "judge", "wilson95", "lc_ci95", "order_flip_rate", "lengths", "implicit_reward"}
LINE_KEYS = {"prompt", "policy_answer", "reference_answer", "order", "answer_a", "answer_b",
             "raw", "verdict", "judge", "template_hash"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """A run directory (run/model + config.yaml naming the reference) and held-out rows."""
    root = tmp_path_factory.mktemp("evalrun")
    ref = root / "reference"
    tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=0).save_pretrained(ref)
    tokenizer.save_pretrained(ref)
    run = root / "run"
    tiny_llama(tokenizer, hidden=32, layers=1, heads=2, kv_heads=1, seed=1).save_pretrained(
        run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(ref), "beta": 0.2}))
    rows = [{"prompt": f"the cat {w} ?", "chosen": " yes please", "rejected": f" no {w}"}
            for w in ("sat", "ran", "dog", "mat", "rug", "red")]
    data = root / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, ref, data


def _cfg(**kw) -> EvalConfig:
    base = {"judge": "rule", "judge_rule": "tether.eval.rules:shorter", "max_new_tokens": 6,
            "batch_size": 4, "progress": False}
    return build_config(EvalConfig, {**base, **kw})


def test_rule_judge_end_to_end_bookkeeping(setup, tmp_path, capsys):
    run, ref, data = setup
    results = evaluate(_cfg(model=str(run), data=str(data), cache_dir=str(tmp_path / "c")))
    out = run / "eval"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    assert set(results) >= DOCUMENTED
    assert results["models"]["reference"] == str(ref)  # read from the run's config.yaml
    w, t, lo, u = (results[k] for k in ("wins", "ties", "losses", "unparsed"))
    assert w + t + lo + u == results["pairs"] == 6 and results["n"] == w + t + lo
    assert results["win_rate"] == pytest.approx((w + 0.5 * t) / (w + t + lo))
    assert results["ci95"][0] <= results["win_rate"] <= results["ci95"][1]
    assert results["judge"] == "rule:tether.eval.rules:shorter"
    # judgments.jsonl: one line per pair (a rule is deterministic: one order), and the verdict
    # agrees with the recorded answers
    lines = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(set(x) >= LINE_KEYS for x in lines)
    for x in lines:
        lp, lr = len(x["policy_answer"].strip()), len(x["reference_answer"].strip())
        expected = "tie" if lp == lr else ("win" if (lp < lr and lp) or not lr else "loss")
        assert x["pair_outcome"] == expected
    assert sum(x["pair_outcome"] == "win" for x in lines) == w
    # implicit reward on the same held-out rows, with the run's beta
    imp = results["implicit_reward"]
    assert imp["n"] == 6 and imp["beta"] == 0.2 and 0 <= imp["accuracy"] <= 1
    assert imp["wilson95"][0] <= imp["accuracy"] <= imp["wilson95"][1]
    report = (out / "report.md").read_text()
    assert "win-rate" in report and "plots/outcomes.png" in report
    for name in ("outcomes", "lengths"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "win-rate" in printed and "6 pairs, 6 judgments needed" in printed


def test_eval_dataset_in_memory_and_a_dict_config(setup, tmp_path):
    run, _, data = setup
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    results = evaluate({"judge": "rule", "judge_rule": "tether.eval.rules:shorter",
                        "max_new_tokens": 6, "batch_size": 4, "progress": False,
                        "model": str(run), "output_dir": str(tmp_path / "out"),
                        "cache_dir": str(tmp_path / "c")}, eval_dataset=rows)
    assert results["prompts"] == 6 and results["pairs"] == 6
    assert results["data"].startswith("<in-memory list, 6 rows, sha256 ")
    saved = yaml.safe_load((tmp_path / "out" / "eval" / "config.yaml").read_text())
    assert saved["data"] == results["data"]


def test_model_against_itself_is_all_ties(setup, tmp_path):
    _, ref, data = setup
    results = evaluate(_cfg(model=str(ref), reference=str(ref), data=str(data),
                            output_dir=str(tmp_path / "self"), cache_dir=str(tmp_path / "c")))
    assert (results["ties"], results["wins"], results["losses"]) == (6, 0, 0)
    assert results["win_rate"] == 0.5 and results["ci95"] == [0.5, 0.5]
    assert results["wilson95"] == [None, None]  # no decisive pair
    imp = results["implicit_reward"]
    assert imp["margin_mean"] == 0.0 and imp["accuracy"] == 0.5 and imp["beta"] == 0.1
    lines = (tmp_path / "self" / "eval" / "judgments.jsonl").read_text().splitlines()
    assert all(json.loads(x)["source"] == "identical" for x in lines)


def test_second_run_reuses_cached_answers_and_judgments(setup, tmp_path, monkeypatch):
    run, _, data = setup
    cfg = _cfg(model=str(run), data=str(data), cache_dir=str(tmp_path / "c"),
               output_dir=str(tmp_path / "o"), implicit_reward="off")
    first = evaluate(cfg)
    import tether.eval.evaluate as ev

    def no_generation(*a, **k):
        raise AssertionError("answers should come from the cache")

    def no_model(*a, **k):
        raise AssertionError("no model should be loaded")

    monkeypatch.setattr(ev, "generate", no_generation)
    monkeypatch.setattr(ev, "load_model", no_model)
    second = evaluate(cfg)
    assert {k: second[k] for k in DOCUMENTED} == {k: first[k] for k in DOCUMENTED}
    lines = (tmp_path / "o" / "eval" / "judgments.jsonl").read_text().splitlines()
    assert {json.loads(x)["source"] for x in lines} <= {"cache", "identical"}


def test_judge_none_gives_implicit_reward_only(setup, tmp_path):
    run, _, data = setup
    results = evaluate(_cfg(model=str(run), data=str(data), judge="none",
                            cache_dir=str(tmp_path / "c"), output_dir=str(tmp_path / "o")))
    assert results["judge"] is None and results["n"] == 0 and results["win_rate"] is None
    assert set(results) >= DOCUMENTED
    assert results["implicit_reward"]["n"] == 6
    assert not (tmp_path / "o" / "eval" / "judgments.jsonl").read_text()


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        build_config(EvalConfig, {"judge": "rule", "num_samples": 3, "bootstrap_samples": 100,
                                  "top_p": 0})
    message = str(e.value)
    for fragment in ("model: required", "data: required", "judge_rule: required",
                     "num_samples", "bootstrap_samples", "top_p"):
        assert fragment in message
    with pytest.raises(ConfigError, match="judge: unknown 'gpt'"):
        build_config(EvalConfig, {"model": "m", "data": "d", "judge": "gpt"})


def test_setup_errors(setup, tmp_path):
    run, ref, data = setup
    with pytest.raises(ConfigError, match="output_dir: required"):
        evaluate(_cfg(model=str(ref), reference=str(ref), data=str(data)))
    with pytest.raises(ConfigError, match="judge: unknown 'nobody'"):
        _cfg(model=str(run), data=str(data), judge="nobody")


def test_human_judge_end_to_end_unvoted_then_voted(setup, tmp_path):
    """judge=human: pairs land in the labeling database; before any vote there is no verdict
    and so no win-rate; once people vote, a re-run counts their votes (nothing stale from the
    cache)."""
    from tether.ui.store import LabelStore

    run, _, data = setup
    db = tmp_path / "label.db"
    cfg = _cfg(model=str(run), data=str(data), judge="human", judge_db=str(db),
               output_dir=str(tmp_path / "h"), cache_dir=str(tmp_path / "c"),
               implicit_reward="off")
    # Nobody has voted: no verdicts, so no win-rate (an error, never a 50 % from the ties)
    with pytest.raises(JudgeError, match=r"no verdicts: none of the .* 'no human vote yet'"):
        evaluate(cfg)
    assert not (tmp_path / "h" / "eval" / "results.json").exists()
    # the same (cached) answers under a rule judge say which answer is the policy's
    evaluate(dataclasses.replace(cfg, judge="rule"))
    lines = [json.loads(x)
             for x in (tmp_path / "h" / "eval" / "judgments.jsonl").read_text().splitlines()]
    policy = {x["prompt"]: x["policy_answer"] for x in lines}
    decisive = sum(x["policy_answer"] != x["reference_answer"] for x in lines)
    store = LabelStore(db)
    _, who = store.login("ann")
    while (shown := store.current(who)) is not None:  # ann always prefers the trained model
        choice = "A" if shown.answer_a == policy[shown.item.prompt] else "B"
        store.vote(who, shown.item.id, choice)
    second = evaluate(cfg)
    assert second["unparsed"] == 0 and second["wins"] == decisive and second["losses"] == 0


def test_label_page_reads_eval_judgments(setup, tmp_path):
    """`tether label --mode winrate --items <run>/eval/judgments.jsonl` takes eval's output."""
    from tether.ui.inputs import read_items

    run, _, data = setup
    evaluate(_cfg(model=str(run), data=str(data), output_dir=str(tmp_path / "r"),
                  cache_dir=str(tmp_path / "c"), implicit_reward="off"))
    path = tmp_path / "r" / "eval" / "judgments.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    items = read_items(path, "winrate")
    assert len(items) == len(lines)
    for item, line in zip(items, lines, strict=True):
        assert item.prompt == line["prompt"]
        assert {item.answer_1, item.answer_2} == {line["policy_answer"], line["reference_answer"]}


def test_cli_module_parses_config_file_and_overrides(setup, tmp_path, capsys):
    run, _, data = setup
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model": str(run), "data": str(data), "judge": "rule",
                                      "judge_rule": "tether.eval.rules:shorter"}))
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    assert "judge_rule" in parser.epilog
    args = parser.parse_args([str(config), "max_new_tokens=4", "progress=false",
                              f"output_dir={tmp_path / 'cli'}", f"cache_dir={tmp_path / 'c'}",
                              "implicit_reward=off"])
    assert eval_cli.run(args) == 0
    saved = yaml.safe_load((tmp_path / "cli" / "eval" / "config.yaml").read_text())
    assert saved["max_new_tokens"] == 4 and saved["judge_rule"] == "tether.eval.rules:shorter"
    assert "win-rate" in capsys.readouterr().out


def test_llm_judge_through_evaluate_sees_both_orders(setup, tmp_path, monkeypatch, capsys):
    from eval_chat_server import ChatServer, Reply, completion

    run, _, data = setup
    secret = "sk-never-in-outputs-42"
    monkeypatch.setenv("TETHER_EVAL_TEST_KEY", secret)
    with ChatServer(lambda body, n: Reply(body=completion("A"))) as server:  # position-biased
        results = evaluate(_cfg(
            model=str(run), data=str(data), judge="openai", judge_url=server.url,
            judge_model="judge", judge_api_key_env="TETHER_EVAL_TEST_KEY", judge_backoff=0.001,
            judge_usd_per_million_tokens=1.0, implicit_reward="off",
            output_dir=str(tmp_path / "o"), cache_dir=str(tmp_path / "c"),
        ))
    printed = capsys.readouterr().out
    distinct = results["pairs"] - sum(
        1 for x in (tmp_path / "o" / "eval" / "judgments.jsonl").read_text().splitlines()
        if json.loads(x)["source"] == "identical")
    assert server.calls == 2 * distinct > 0  # every distinct pair in both orders
    assert results["ties"] == 6 and results["win_rate"] == 0.5  # "A" twice = disagreement
    assert results["order_flip_rate"] == 1.0 and results["first_position_rate"] == 1.0
    assert results["template_hash"] and results["judge"].startswith("openai:judge@")
    assert f"{2 * distinct} to ask; about" in printed and "$" in printed  # the estimate
    for path in (tmp_path / "o" / "eval").rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert secret not in path.read_text()
    assert secret not in printed


def test_tether_cli_maps_eval_errors_to_exit_2(setup, monkeypatch, capsys, tmp_path):
    from tether import cli

    # The lead registers the subcommand in tether.cli.COMMANDS; the test does it here.
    monkeypatch.setitem(cli.COMMANDS, "eval", ("tether.commands.eval", "win-rate vs the reference"))
    run, _, data = setup
    assert cli.main(["eval", f"model={run}", f"data={data}", "judge=rule"]) == 2
    err = capsys.readouterr().err
    assert "judge_rule: required" in err and err.count("\n") == 1
    code = cli.main(["eval", f"model={run}", f"data={data}", "judge=rule",
                     "judge_rule=tether.eval.rules:nope", f"cache_dir={tmp_path}"])
    assert code == 2 and "no attribute 'nope'" in capsys.readouterr().err


def test_prompts_beyond_the_context_window_lose_their_oldest_tokens(tokenizer, tmp_path):
    """GPT-2's learned positions end at n_positions: a prompt that, with max_new_tokens, does not
    fit would index past them. It is cut from the left and counted instead."""
    from tether.model.tiny import tiny_gpt2

    model_dir = tmp_path / "gpt2"
    tiny_gpt2(tokenizer, hidden=32, layers=1, heads=2, max_positions=24).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    long = "the cat sat on the mat " * 6  # about 36 tokens: over the 24-token window
    rows = [{"prompt": long + "?"}, {"prompt": "the dog ?"}, {"prompt": long + "red ?"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = evaluate(_cfg(model=str(model_dir), reference=str(model_dir), data=str(data),
                            max_new_tokens=8, output_dir=str(tmp_path / "out"),
                            cache_dir=str(tmp_path / "c"), implicit_reward="off"))
    assert results["prompts_truncated"] == 2 and results["n"] == 3
    assert any("2 of 3 prompts did not fit" in w for w in results["warnings"])
    # a tighter explicit cap cuts the short prompt too
    capped = evaluate(_cfg(model=str(model_dir), reference=str(model_dir), data=str(data),
                           max_new_tokens=8, max_prompt_length=3, implicit_reward="off",
                           output_dir=str(tmp_path / "capped"), cache_dir=str(tmp_path / "c")))
    assert capped["prompts_truncated"] == 3
    with pytest.raises(ConfigError, match="max_new_tokens: 30 leaves no room"):
        evaluate(_cfg(model=str(model_dir), reference=str(model_dir), data=str(data),
                      max_new_tokens=30, output_dir=str(tmp_path / "x"),
                      cache_dir=str(tmp_path / "c"), implicit_reward="off"))
