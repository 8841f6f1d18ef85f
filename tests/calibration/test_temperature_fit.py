"""The temperature fit where the val split gives it nothing to fit: no errors, or a minimum past the bounds."""

from __future__ import annotations

import logging

import pytest
import torch

from transferlab.calibration import calibrate_splits, fit_temperature
from transferlab.calibration.temperature import T_RANGE
from transferlab.errors import ConfigError


def _all_right(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 3
    return 2.0 * torch.eye(3)[y] + 0.1 * torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), y


def test_no_val_errors_refuses_the_fit_instead_of_running_to_the_bound() -> None:
    logits, y = _all_right()
    nll = lambda t: float(torch.nn.functional.cross_entropy(logits / t, y))  # noqa: E731
    assert nll(T_RANGE[0]) < nll(0.5) < nll(1.0)  # the old fit chased this towards T_RANGE[0]: every p ~ 1
    with pytest.raises(ConfigError, match="none of the 30 val images is misclassified"):
        fit_temperature(logits, y)


def test_no_val_errors_keeps_t_1_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    logits, y = _all_right()
    test_logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        t, s = calibrate_splits("temperature", val=(logits, y), test=(test_logits, torch.tensor([0, 1])))
    assert t == 1.0 and s["test"]["ece"] == s["test"]["ece_uncalibrated"]
    assert any("all 30 val images right" in r.getMessage() and "T = 1 kept" in r.getMessage() for r in caplog.records)


def test_one_val_error_is_enough_to_fit(caplog: pytest.LogCaptureFixture) -> None:
    logits, y = _all_right()
    logits[0] = torch.tensor([0.0, 2.0, 0.0]) if y[0] != 1 else torch.tensor([2.0, 0.0, 0.0])
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        t = fit_temperature(logits, y)
    assert T_RANGE[0] * 1.1 < t < 1.0 and not caplog.records  # 29/30 right at p ~ 0.77: sharpen, inside the range


def test_a_minimum_past_the_range_is_said(caplog: pytest.LogCaptureFixture) -> None:
    logits, y = _all_right(300)
    logits = 1e-3 * torch.eye(3)[y]  # right margins of 0.001 logits: the best T is far below 0.05
    logits[0] = 1e-3 * torch.tensor([0.0, 1.0, 0.0]) if y[0] != 1 else 1e-3 * torch.tensor([1.0, 0.0, 0.0])
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        t = fit_temperature(logits, y)
    assert t == pytest.approx(T_RANGE[0], rel=0.02)
    assert any("edge of the searched range" in r.getMessage() for r in caplog.records)
