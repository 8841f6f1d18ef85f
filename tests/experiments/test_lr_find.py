"""lr-find: the range test on the first phase's groups writes a curve, a plot and a suggestion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.experiments.lr_find import suggest


def test_lr_find_cli_writes_curve_plot_and_suggestion(tiny_folder: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lrf"
    assert main(["lr-find", str(tiny_folder), "--out", str(out), "--backbone", "mobilenet_v2", "--cut", "3",
                 "--strategy", "fine-tune", "--unfreeze", "1", "--batch-size", "4", "--steps", "30",
                 "--start-lr", "1e-5", "--end-lr", "10", "--device", "cpu", "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["phase"], res["trainable"], res["flag"]) == ("head", ["head"], "--lr")  # fine-tune's warm-up
    saved = json.loads((out / "lr_find.json").read_text())
    lrs = [p["lr"] for p in saved["curve"]]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert 5 <= saved["steps_run"] <= 30 and res["suggested_lr"] == pytest.approx(saved["min_loss_lr"] / 10)
    assert (out / "lr_find.png").stat().st_size > 1000


def test_closed_form_strategies_have_nothing_to_range_test(tiny_folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lr-find", str(tiny_folder), "--out", str(tmp_path / "x"), "--backbone", "mobilenet_v2",
                 "--strategy", "linear-probe", "--quiet"]) == 2
    assert "no trained phase" in capsys.readouterr().err


def test_suggestion_is_a_tenth_of_the_minimum() -> None:
    assert suggest([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0]) == pytest.approx(1e-3)
