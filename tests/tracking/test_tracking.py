"""--log csv|tensorboard|mlflow: what a run wrote, read back with each tool's own reader."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from transferlab.cli import main

TRAIN = ["--backbone", "mobilenet_v2", "--cut", "3", "--strategy", "fine-tune", "--unfreeze", "1", "--epochs", "2",
         "--finetune-epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet"]


def test_csv_tensorboard_and_mlflow_read_back(tiny_folder: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_folder), "--out", str(run_dir), *TRAIN,
                 "--log", "csv", "--log", "tensorboard", "--log", "mlflow"]) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text())

    rows = list(csv.DictReader((run_dir / "epochs.csv").open()))
    assert [r["phase"] for r in rows] == ["head", "head", "fine-tune"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([h["val_loss"] for h in history])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    val = events.Scalars("accuracy/val")
    assert [e.step for e in val] == [1, 2, 3]  # epochs are numbered from 1
    assert [e.value for e in val] == pytest.approx([h["val_accuracy"] for h in history])
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(metrics["test"]["accuracy"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("transferlab").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train_options.strategy"] == "fine-tune"
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    steps = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in sorted(steps, key=lambda m: m.step)] == pytest.approx([h["val_loss"] for h in history])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.json", "history.jsonl", "model.safetensors"} <= artifacts
    assert (run_dir / "mlflow-artifacts").is_dir()  # kept in the run directory, not in ./mlruns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mlflow_server_lists_the_run(tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ``mlflow server`` on 127.0.0.1; the run is found through its REST API. Bounded: the server
    is stopped in ``finally`` and every wait has a deadline."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not come up within 120 s")
                time.sleep(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        assert main(["train", str(tiny_folder), "--out", str(tmp_path / "served"), *TRAIN, "--log", "mlflow"]) == 0
        got = urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=transferlab",
                                     timeout=30)
        exp = json.loads(got.read())["experiment"]
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search",
                                     data=json.dumps({"experiment_ids": [exp["experiment_id"]],
                                                      "max_results": 10}).encode(),
                                     headers={"Content-Type": "application/json"})
        (run,) = json.loads(urllib.request.urlopen(req, timeout=30).read())["runs"]
        assert run["info"]["run_name"] == "served" and run["info"]["status"] == "FINISHED"
        names = {m["key"] for m in run["data"]["metrics"]}
        assert {"val_loss", "final_test_accuracy", "final_timing_total_s"} <= names
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)
