"""Each tracker backend with its real library, offline, read back with that library's reader.

The libraries are extras, pinned in requirements.lock (which CI installs): no test skips.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tether.errors import ConfigError
from tether.tracking.trackers import TRACKERS, TrackerSpec, build_loggers

SECRET = "sk-tether-test-secret-0123456789"
CONFIG = {"loss": "dpo", "beta": 0.1, "lr": 5e-7, "field_map": {"chosen": "output"}}
ROWS = [(1, {"loss": 0.69, "rewards/margins": 0.0}), (2, {"loss": 0.5, "rewards/margins": 0.3}),
        (3, {"loss": 0.4, "rewards/margins": 0.5, "eval/rewards/accuracies": 0.75})]
SUMMARY = {"eval/win_rate": 0.7}


def _log_all(logger) -> None:
    logger.log_config(CONFIG)
    for step, metrics in ROWS:
        logger.log(metrics, step)
    logger.finish(SUMMARY)


def _no_secret(*roots: Path) -> None:
    """The API-key-like variable set for the test reaches no file a tracker wrote."""
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def test_tensorboard_event_files_read_back(tmp_path, secret_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logger,) = build_loggers(["tensorboard"], tmp_path, "run-a", "proj")
    _log_all(logger)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("loss")] == [(1, 0.69), (2, 0.5),
                                                                          (3, 0.4)]
    assert [e.step for e in acc.Scalars("eval/rewards/accuracies")] == [3]
    assert acc.Scalars("summary/eval/win_rate")[0].value == pytest.approx(0.7)
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| beta | 0.1 |" in config_text and "| field_map.chosen | output |" in config_text
    _no_secret(tmp_path)


def _wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` transaction log: W&B's LevelDB-style framing (32 KiB blocks,
    7-byte headers) around its own protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):
            pos += left  # block padding
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST piece of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_run_files(tmp_path, monkeypatch, secret_env):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (logger,) = build_loggers(["wandb"], tmp_path, "run-a", "proj")
    _log_all(logger)
    import wandb

    wandb.teardown()  # wandb-core writes the log after finish() returns; this waits for it
    (log_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("proj", "run-a")
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["loss"]) for h in history] == [(1, 0.69), (2, 0.5), (3, 0.4)]
    assert history[-1]["eval/rewards/accuracies"] == 0.75
    config = {i.key: json.loads(i.value_json) for r in records
              if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert config["beta"] == 0.1 and config["field_map"] == {"chosen": "output"}
    summary = {i.key: json.loads(i.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["summary/eval/win_rate"] == 0.7
    assert "exit" in kinds  # finished, not crashed
    _no_secret(tmp_path)


def test_mlflow_sqlite_store_read_back(tmp_path, monkeypatch, secret_env):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (logger,) = build_loggers(["mlflow"], tmp_path, "run-a", "proj")
    _log_all(logger)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("proj")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.69), (2, 0.5), (3, 0.4)]
    assert run.data.params["beta"] == "0.1" and run.data.params["field_map.chosen"] == "output"
    assert run.data.metrics["summary/eval/win_rate"] == 0.7
    _no_secret(tmp_path)


def test_trackio_local_store(tmp_path):
    # trackio reads TRACKIO_DIR when imported, so log and read back in a fresh process
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from tether.tracking.trackers import build_loggers
        from trackio.sqlite_storage import SQLiteStorage
        (logger,) = build_loggers(["trackio"], Path({str(tmp_path)!r}), "run-a", "proj")
        logger.log_config({CONFIG!r})
        for step, metrics in {ROWS!r}:
            logger.log(metrics, step)
        logger.finish({SUMMARY!r})
        logs = SQLiteStorage.get_logs("proj", "run-a")
        config = SQLiteStorage.get_run_config("proj", "run-a")
        print("RESULT", json.dumps({{"logs": logs, "config": config}}, default=str))
    """)
    env = {"TRACKIO_DIR": str(tmp_path / "trackio"), "HF_TOKEN": SECRET,
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    got = json.loads(line.removeprefix("RESULT "))
    train = [(r["step"], r["loss"]) for r in got["logs"] if "loss" in r]
    assert train == [(1, 0.69), (2, 0.5), (3, 0.4)]
    assert any(r.get("summary/eval/win_rate") == 0.7 for r in got["logs"])
    assert got["config"]["beta"] == 0.1
    assert (tmp_path / "trackio" / "proj.db").is_file()
    _no_secret(tmp_path / "trackio")


def test_missing_library_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(TRACKERS, "nolib", TrackerSpec(lambda *a: None,  # type: ignore[arg-type]
                                                       "tether_no_such_tracker", "nolib"))
    with pytest.raises(ConfigError, match=r"report_to=nolib: .*pip install 'tether\[nolib\]'"):
        build_loggers(["nolib"], tmp_path, "r", "p")


def test_none_builds_nothing_and_unknown_names_are_config_errors(tmp_path):
    from conftest import train_config

    assert build_loggers(["none"], tmp_path, "r", "p") == []
    with pytest.raises(ConfigError, match="report_to: unknown tracker tensorbord; choose from "
                                          "tensorboard, wandb, mlflow, trackio, none"):
        train_config(tmp_path, model="m", data="d", report_to=["tensorbord"])
