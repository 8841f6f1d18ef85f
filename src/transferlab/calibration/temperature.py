"""ECE (torchmetrics), reliability bins, and one temperature fitted by minimising the val NLL."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")
#: ``--calibrate`` choices.
CALIBRATIONS: tuple[str, ...] = ("none", "temperature")
#: Equal-width confidence bins of the ECE and the reliability diagram.
N_BINS = 15
#: Temperatures searched (log-uniformly) by :func:`fit_temperature`.
T_RANGE = (0.05, 20.0)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = N_BINS) -> float:
    """Top-1 ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
        >>> round(expected_calibration_error(p, torch.tensor([0, 1])), 3)  # (|1-.9| + |0-.6|) / 2
        0.35
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.as_tensor(probs, dtype=torch.float32)
    if len(probs) == 0:
        return 0.0
    return float(multiclass_calibration_error(probs, torch.as_tensor(labels, dtype=torch.long),
                                              num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = N_BINS) -> dict[str, Any]:
    """Per confidence bin: edges, count, mean confidence and accuracy (None where empty).

    Example:
        >>> b = reliability_bins(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]), n_bins=5)
        >>> b["count"], b["accuracy"][3:]
        ([0, 0, 0, 1, 1], [0.0, 1.0])
    """
    probs = torch.as_tensor(probs, dtype=torch.float32)
    conf, pred = probs.max(1)
    correct = (pred == torch.as_tensor(labels)).float()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (lo, hi] bins as in torchmetrics; a confidence of exactly 0 cannot occur for a top-1 softmax.
    which = np.clip(np.searchsorted(edges, conf.numpy(), side="left") - 1, 0, n_bins - 1)
    count, mean_conf, acc = [], [], []
    for b in range(n_bins):
        sel = which == b
        count.append(int(sel.sum()))
        mean_conf.append(round(float(conf.numpy()[sel].mean()), 6) if sel.any() else None)
        acc.append(round(float(correct.numpy()[sel].mean()), 6) if sel.any() else None)
    return {"edges": [round(float(e), 6) for e in edges], "count": count, "confidence": mean_conf, "accuracy": acc}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The ``T`` in :data:`T_RANGE` minimising the cross-entropy of ``logits / T`` (use val logits).

    Logits that classify every image right have no such ``T``: the cross-entropy keeps falling as
    ``T -> 0`` (each softmax sharpens towards its correct arg-max), so a fit would end on the lower
    bound and turn every probability into ~1.0. That is refused (:class:`ConfigError`);
    :func:`calibrate_splits` keeps ``T = 1`` instead and says so.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.randint(0, 3, (400,), generator=g)
        >>> guess = torch.where(torch.rand(400, generator=g) < 0.7, y, torch.randint(0, 3, (400,), generator=g))
        >>> logits = 8.0 * nn.functional.one_hot(guess, 3)  # ~80 % right, ~100 % sure: overconfident
        >>> round(fit_temperature(logits, y), 2)
        3.82
    """
    from scipy.optimize import minimize_scalar

    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(logits) == 0:
        raise ConfigError("--calibrate temperature: the validation split is empty; expected a val split "
                          "(e.g. --split 0.5,0.25,0.25) to fit the temperature on")
    if misclassified(logits, labels) == 0:
        raise ConfigError(f"--calibrate temperature: none of the {len(labels)} val images is misclassified, so "
                          f"the val cross-entropy keeps falling as T -> 0 and has no minimum to fit T at")

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    if min(res.x - lo, hi - res.x) < 0.01:  # within 1 % of a bound: the minimum may lie beyond it
        log.warning("temperature scaling: T = %.4g is at the edge of the searched range %g..%g; the val "
                    "cross-entropy may be lowest outside it", math.exp(res.x), *T_RANGE)
    return float(math.exp(res.x))


def misclassified(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """How many rows of ``logits`` have their arg-max away from ``labels``.

    Example:
        >>> misclassified(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        1
    """
    return int((torch.as_tensor(logits).argmax(1) != torch.as_tensor(labels)).sum())


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float | None = None,
                        n_bins: int = N_BINS) -> dict[str, Any]:
    """``ece`` and ``reliability`` of ``logits`` (divided by ``temperature`` when given); with a
    temperature also ``ece_uncalibrated``, ``reliability_uncalibrated`` and ``temperature``.

    Example:
        >>> s = calibration_summary(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]), temperature=2.0)
        >>> sorted(s)
        ['ece', 'ece_uncalibrated', 'reliability', 'reliability_uncalibrated', 'temperature']
    """
    logits = torch.as_tensor(logits, dtype=torch.float32)
    raw = logits.softmax(1)
    if temperature is None:
        return {"ece": expected_calibration_error(raw, labels, n_bins=n_bins),
                "reliability": reliability_bins(raw, labels, n_bins=n_bins)}
    scaled = (logits / temperature).softmax(1)
    return {"ece": expected_calibration_error(scaled, labels, n_bins=n_bins),
            "ece_uncalibrated": expected_calibration_error(raw, labels, n_bins=n_bins),
            "temperature": float(temperature),
            "reliability": reliability_bins(scaled, labels, n_bins=n_bins),
            "reliability_uncalibrated": reliability_bins(raw, labels, n_bins=n_bins)}


class TemperatureScaled(nn.Module):
    """``model(x) / T``: what predict, evaluate, serve and the ONNX graph run for a calibrated run.

    Example:
        >>> m = TemperatureScaled(nn.Identity(), temperature=2.0)
        >>> m(torch.tensor([[4.0, 2.0]])).tolist()
        [[2.0, 1.0]]
    """

    def __init__(self, model: nn.Module, *, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature: expected a positive number, got {temperature!r}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def check_calibration(method: str, *, n_val: int, refit: bool) -> None:
    """Refuse ``--calibrate`` that cannot be fitted honestly (before any training starts).

    Example:
        >>> check_calibration("temperature", n_val=0, refit=False)
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --calibrate temperature needs a validation split to fit the temperature on; the split has 0 val images (use --split TRAIN,VAL,TEST with VAL > 0 and enough images per class)
    """
    if method not in CALIBRATIONS:
        raise ConfigError(f"--calibrate must be one of {', '.join(CALIBRATIONS)}, got {method!r}")
    if method == "none":
        return
    if n_val == 0:
        raise ConfigError(f"--calibrate {method} needs a validation split to fit the temperature on; the split "
                          "has 0 val images (use --split TRAIN,VAL,TEST with VAL > 0 and enough images per class)")
    if refit:
        raise ConfigError(f"--calibrate {method} with --refit: the refit model trains on val, so val cannot "
                          "fit its temperature; drop one of the two")


def calibrate_splits(method: str, *, val: tuple[torch.Tensor, torch.Tensor],
                     test: tuple[torch.Tensor, torch.Tensor]) -> tuple[float | None, dict[str, dict[str, Any]]]:
    """Fit the temperature on ``val`` (logits, labels) when ``method`` asks; calibration metrics of both.

    Returns ``(temperature or None, {"val": summary, "test": summary})``. When the model gets every
    val image right, no temperature can be fitted (see :func:`fit_temperature`): ``T = 1`` is kept
    (the probabilities stay uncalibrated) and the log says so in one line.

    Example:
        >>> y = torch.tensor([0, 1, 0, 1])
        >>> t, s = calibrate_splits("none", val=(torch.eye(2)[y] * 5, y), test=(torch.eye(2)[y] * 5, y))
        >>> t, sorted(s["test"])
        (None, ['ece', 'reliability'])
        >>> calibrate_splits("temperature", val=(torch.eye(2)[y] * 5, y), test=(torch.eye(2)[y] * 5, y))[0]
        1.0
    """
    temperature = None
    if method == "temperature":
        if misclassified(*val) == 0:
            log.warning("temperature scaling: the model gets all %d val images right, so the val cross-entropy "
                        "has no minimum in T (it falls as T -> 0); T = 1 kept, probabilities uncalibrated",
                        len(val[1]))
            temperature = 1.0
        else:
            temperature = fit_temperature(*val)
    return temperature, {name: calibration_summary(logits, labels, temperature=temperature)
                         for name, (logits, labels) in (("val", val), ("test", test))}
