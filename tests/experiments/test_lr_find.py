"""lr-find: the range test on the first phase's groups writes a curve, a plot and a suggestion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    assert 5 <= saved["steps_run"] <= 30 and len(saved["curve"]) == saved["steps_run"]
    assert res["suggested_lr"] == pytest.approx(min(saved["steepest_lr"], saved["min_loss_lr"] / 10))
    assert lrs[0] <= res["steepest_lr"] <= res["min_loss_lr"]
    assert (out / "lr_find.png").stat().st_size > 1000


def test_closed_form_strategies_have_nothing_to_range_test(tiny_folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lr-find", str(tiny_folder), "--out", str(tmp_path / "x"), "--backbone", "mobilenet_v2",
                 "--strategy", "linear-probe", "--quiet"]) == 2
    assert "no trained phase" in capsys.readouterr().err


def _curve(steep_at: float, diverge_at: float | None, *, n: int = 100, noise: float = 0.05,
           seed: int = 0) -> tuple[list[float], list[float]]:
    """A noisy range-test curve: falls fastest at ``steep_at``, blows up past ``diverge_at`` (None: never)."""
    rng = np.random.default_rng(seed)
    lrs = np.logspace(-6, 0, n)
    x = np.log10(lrs)
    loss = 3.0 - 2.5 / (1 + np.exp(-(x - np.log10(steep_at)) * 3))
    if diverge_at is not None:
        loss = loss + np.where(lrs > diverge_at, (np.log10(lrs / diverge_at)) * 20, 0.0)
    return list(lrs), list(loss + rng.normal(0, noise, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggestion_is_the_steepest_fall_when_the_loss_never_turns_up(seed: int) -> None:
    # a separable training set: the loss falls until the last rate; the minimum / 10 would say 0.1
    lrs, losses = _curve(3e-3, None, seed=seed)
    res = suggest(lrs, losses)
    assert res["min_loss_lr"] > 0.1 and 1e-3 <= res["suggested_lr"] <= 9e-3


def test_suggestion_is_capped_at_a_tenth_of_the_minimum() -> None:
    # falls fastest at 0.05, diverges just after 0.1: a tenth of the minimum's rate is the safer choice
    lrs, losses = _curve(5e-2, 1e-1, noise=0.01)
    res = suggest(lrs, losses)
    assert 0.05 <= res["min_loss_lr"] <= 0.2
    assert res["suggested_lr"] == pytest.approx(res["min_loss_lr"] / 10) and res["suggested_lr"] < res["steepest_lr"]


def test_a_lagging_average_would_move_the_suggestion_but_the_centred_filter_does_not() -> None:
    lrs, losses = _curve(1e-3, 1e-1, noise=0.0)
    assert suggest(lrs, losses)["steepest_lr"] == pytest.approx(1e-3, rel=0.15)
