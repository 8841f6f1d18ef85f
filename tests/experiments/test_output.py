"""What a run prints when stderr is a file: per-epoch lines, each fact once, timings that add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.engine.metrics import classification_metrics
from transferlab.report.html import report_summary

REPO = Path(__file__).resolve().parents[2]


def test_train_log_into_a_file_reads_well(tiny_folder: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TRANSFERLAB_PROGRESS": ""}
    with log.open("w") as err:
        subprocess.run([sys.executable, "-m", "transferlab", "train", str(tiny_folder), "--out", str(out),
                        "--backbone", "mobilenet_v2", "--cut", "3", "--strategy", "fine-tune", "--unfreeze", "1",
                        "--epochs", "2", "--finetune-epochs", "1", "--batch-size", "8", "--device", "cpu"],
                       check=True, stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=300)
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text and "batch/s" not in text  # no bars, no escape codes
    lines = text.splitlines()
    assert sum("3 classes" in line for line in lines) == 1  # the dataset line once
    assert "split: train 12, val 6, test 6 images" in lines
    assert [line.split(":")[0] for line in lines if " epoch " in line] == [
        "head epoch 1/2", "head epoch 2/2", "fine-tune epoch 1/1"]
    assert any(line.startswith("train: activations entering stage2 (the 2 stages below it frozen)")
               for line in lines)
    timing = json.loads((out / "metrics.json").read_text())["timing"]
    parts = timing["extract_s"] + timing["train_s"] + timing["other_s"]
    assert abs(parts - timing["total_s"]) < 2e-3 and timing["extract_s"] > 0 and timing["other_s"] >= 0
    # the run's own lines, plus the cross-split leakage check's two: the pristine featurizer it loads (the
    # run's own was fine-tuned) and its verdict
    assert sum(line.startswith("cross-split near-duplicates") for line in lines) == 1
    assert len(lines) <= 17, text


def test_bad_backbone_fails_before_any_work(tiny_folder: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["train", str(tiny_folder), "--out", str(out), "--backbone", "mobilenet_v3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backbone 'mobilenet_v3'" in err[0] and "did you mean" in err[0]
    assert not out.exists()
    assert not (tmp_path / "cache").exists()  # the dataset was not even scanned


def test_top5_only_with_more_than_five_classes() -> None:
    import numpy as np

    assert classification_metrics(np.eye(3), np.arange(3), classes=list("abc"))["top5"] is None
    six = classification_metrics(np.eye(6), np.arange(6), classes=list("abcdef"))
    assert six["top5"] == 1.0


def test_compare_summary_prints_val_test_and_wall(tmp_path: Path) -> None:
    entry = {"test_accuracy_mean": 0.9, "test_accuracy_std": 0.01, "val_accuracy_mean": 0.95,
             "val_accuracy_std": 0.02, "wall_s": 42.4, "n_ok": 3}
    (tmp_path / "results.json").write_text(json.dumps({"strategies": {"fine-tune": entry}}))
    header, row = report_summary(tmp_path)
    assert header.split() == ["strategy", "val", "accuracy", "test", "accuracy", "wall"]
    assert row.split() == ["fine-tune", "0.9500", "±", "0.0200", "0.9000", "±", "0.0100", "42s", "(3", "runs)"]
    entry.update(n_ok=1, test_accuracy_std=0.0, val_accuracy_std=0.0)  # one run: no spread to show
    (tmp_path / "results.json").write_text(json.dumps({"strategies": {"fine-tune": entry}}))
    assert report_summary(tmp_path)[1].split() == ["fine-tune", "0.9500", "0.9000", "42s", "(1", "run)"]
