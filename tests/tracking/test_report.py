"""report.md and its plots: after a plain train, after a crash (from metrics.jsonl), overlaid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_pairs, read_metrics, train_config, write_jsonl
from tether.cli import main
from tether.config import TrainConfig, build_config
from tether.tracking import open_tracking
from tether.training.distributed import Dist
from tether.training.loop import train
from tether.training.run_dir import QuietRunDir

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> tuple[int, int]:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG
    h, w, _ = matplotlib.image.imread(path).shape
    return w, h


def test_plain_train_writes_report_and_tensorboard(llama_dir, pairs_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    eval_file = write_jsonl(tmp_path / "eval.jsonl", make_pairs(8))
    run = train(train_config(tmp_path, model=str(llama_dir), data=str(pairs_file),
                             eval_data=str(eval_file), max_steps=4, eval_every=2,
                             report_to=["tensorboard"], report=True))
    report = (run / "report.md").read_text()
    for png in ("curves", "eval_curves", "data_lengths"):
        assert f"](plots/{png}.png)" in report
        w, h = _png(run / "plots" / f"{png}.png")
        assert w > 400 and h > 200
    # make_pairs' chosen answers are always the longer ones: the load-time check says so,
    # once, at the top of the report and as an event in metrics.jsonl
    assert report.index("## Health warnings") < report.index("## Summary")
    assert "**length_exploitation**" in report
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["name"] for e in lines if e.get("event") == "health"] == ["length_exploitation"]
    assert "KL to the reference is not estimated" in report
    train_rows = [r for r in read_metrics(run) if "loss" in r]
    first = train_rows[0]
    assert first["learning_rate"] == first["lr"] and 0 < first["epoch"] < 1
    assert first["num_tokens"] > 0 and train_rows[-1]["num_tokens"] > first["num_tokens"]
    assert first["logps/chosen_per_token"] == pytest.approx(
        first["logps/chosen"] / first["lengths/chosen"], rel=0.3)  # a mean of ratios
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/rewards/accuracies")] == [2, 4]  # step 4 once
    assert acc.Scalars("summary/loss")[0].value == pytest.approx(train_rows[-1]["loss"])


def test_report_redrawn_after_a_crash_and_runs_overlaid(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for run, slope in ((a, -0.2), (b, 0.1)):
        run.mkdir()
        rows = [{"step": s, "loss": 0.7 - 0.01 * s, "logps/chosen": -20 + slope * s,
                 "rewards/margins": 0.05 * s, "rewards/accuracies": 0.8,
                 "learning_rate": 1e-3} for s in range(1, 31)]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (run / "metrics.jsonl").write_text(text + '{"step": 31, "lo')  # killed mid-line
    assert main(["report", str(a)]) == 0
    report = (a / "report.md").read_text()
    # the crashed run never wrote its warning; the report finds it from the history
    assert "**likelihood_displacement**" in report
    assert "last train log (step 30)" in report
    _png(a / "plots" / "curves.png")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    compare = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Comparison of 2 runs" in compare and "## a" in compare and "## b" in compare
    _png(tmp_path / "cmp" / "plots" / "compare.png")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_only_rank_0_builds_trackers(tmp_path):
    # rank 1 under torchrun: no tracker is even imported (this one does not exist)
    from tether.tracking.trackers import TRACKERS, TrackerSpec

    TRACKERS["nolib"] = TrackerSpec(lambda *a: None, "tether_no_such_tracker", "nolib")  # type: ignore[arg-type]
    try:
        cfg = build_config(TrainConfig, {"model": "m", "data": "d", "report_to": ["nolib"],
                                         "output_dir": str(tmp_path)})
        track = open_tracking(cfg, QuietRunDir(tmp_path), Dist(rank=1, world_size=2), [])
        assert track.loggers == [] and not track.main
        assert track.log({"step": 1, "loss": 0.5}) == 1
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        del TRACKERS["nolib"]


def test_eval_win_rate_reaches_the_runs_trackers_and_report(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tether.tracking import report_eval

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 0.4}) + "\n")
    (tmp_path / "eval").mkdir()
    results = {"win_rate": 0.8, "ci95": [0.6, 0.9], "lc_win_rate": 0.7, "n": 20,
               "judge": "rule"}
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    report_eval(tmp_path, results, {"report_to": ["tensorboard"], "project": "p"})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("eval/win_rate")] == [(7, 0.8)]
    assert acc.Scalars("eval/win_rate_ci95_low")[0].value == pytest.approx(0.6)
    assert "Win-rate (tether eval): 80.0%" in (tmp_path / "report.md").read_text()
