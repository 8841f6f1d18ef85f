"""Calibration: expected calibration error, reliability diagrams, temperature scaling.

A model is calibrated when, among the images it gives 80 % confidence, 80 % are right. Fine-tuned
networks are usually overconfident; temperature scaling (Guo et al., ICML 2017) divides the logits
by one scalar ``T`` fitted on the validation split (after model selection). Accuracy cannot change
(the arg-max is the same); the probabilities that leave the tool do.

Example:
    >>> import torch
    >>> logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> labels = torch.tensor([0, 1, 1, 0])
    >>> round(expected_calibration_error(logits.softmax(1), labels), 3)
    0.232
"""

from transferlab.calibration.temperature import (
    CALIBRATIONS,
    TemperatureScaled,
    calibrate_splits,
    calibration_summary,
    check_calibration,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

__all__ = [
    "CALIBRATIONS",
    "TemperatureScaled",
    "calibrate_splits",
    "calibration_summary",
    "check_calibration",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
]
