"""Off-the-shelf features + a scikit-learn linear classifier, C chosen on the validation split.

The fitted classifier (standardisation folded in) becomes the model's linear head, so a probe run
predicts, evaluates and exports like every other run.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from transferlab.errors import ConfigError

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class ProbeResult:
    classifier: str
    C: float
    val_accuracy: float
    grid: dict[float, float]  # C -> val accuracy
    weight: torch.Tensor  # final head (refit on train+val at the chosen C): x @ weight.T + bias
    bias: torch.Tensor
    selection_weight: torch.Tensor  # the train-only fit at the chosen C (what val measured)
    selection_bias: torch.Tensor


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run scikit-learn fits with one BLAS thread (L-BFGS on a few hundred feature rows).

    Measured on this 2-core machine (``benchmarks``-style side by side, another job running): 5-fold CV of a
    17-class logistic regression on 1020 x 1632 features took 7.3 s with OpenBLAS's 2 threads, 1.3 s with one;
    each L-BFGS step is a small matrix product whose threads spin and wait more than they compute.

    Example:
        >>> with one_blas_thread():
        ...     _ = _fit("logreg", 1.0, 0, np.eye(4), np.array([0, 1, 0, 1]))
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _make(classifier: str, C: float, seed: int) -> LogisticRegression | LinearSVC:
    if classifier == "logreg":
        return LogisticRegression(C=C, max_iter=3000)
    if classifier == "svm":
        return LinearSVC(C=C, max_iter=20000, random_state=seed)
    raise ConfigError(f"--classifier must be logreg or svm, got {classifier!r}")


def _fit(classifier: str, C: float, seed: int, x: np.ndarray, y: np.ndarray) -> LogisticRegression | LinearSVC:
    clf = _make(classifier, C, seed)
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _as_head(clf: LogisticRegression | LinearSVC, scaler: StandardScaler, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier with the standardisation folded in, as a (num_classes, d) linear layer."""
    coef = np.zeros((num_classes, clf.coef_.shape[1]))
    intercept = np.zeros(num_classes)
    present = clf.classes_.astype(int)
    if clf.coef_.shape[0] == 1:
        # binary: sklearn scores class 1 with z; softmax([0, z]) equals sigmoid(z)
        coef[present[1]] = clf.coef_[0]
        intercept[present[1]] = clf.intercept_[0]
    else:
        coef[present] = clf.coef_
        intercept[present] = clf.intercept_
        missing = np.setdiff1d(np.arange(num_classes), present)
        intercept[missing] = -1e4  # a class absent from training is never predicted
    w = coef / scaler.scale_
    b = intercept - (coef * scaler.mean_ / scaler.scale_).sum(axis=1)
    return torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def _val_loss(clf: LogisticRegression | LinearSVC, x: np.ndarray, y: np.ndarray) -> float:
    scores = torch.tensor(clf.decision_function(x), dtype=torch.float32)
    if scores.dim() == 1:
        scores = torch.stack([torch.zeros_like(scores), scores], dim=1)
    idx = torch.as_tensor(np.searchsorted(clf.classes_, y))
    return float(torch.nn.functional.cross_entropy(scores, idx))


def fit_linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *,
    num_classes: int, classifier: str = "logreg", grid: tuple[float, ...] = C_GRID, seed: int = 0,
    refit: bool = True,
) -> ProbeResult:
    """Fit on train for every C and keep the best on val (accuracy, then val loss); with ``refit``
    the final classifier is fit again on train+val at that C (as scikit-learn's grid search does).

    Example:
        >>> x, y = np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 3
        >>> r = fit_linear_probe(x[:45], y[:45], x[45:], y[45:], num_classes=3)
        >>> r.weight.shape, r.bias.shape
        (torch.Size([3, 8]), torch.Size([3]))
    """
    scaler = StandardScaler().fit(train_x)
    tr, va = scaler.transform(train_x), scaler.transform(val_x)
    scores: dict[float, float] = {}
    best: tuple[float, float, float, LogisticRegression | LinearSVC] | None = None
    for C in grid:
        clf = _fit(classifier, C, seed, tr, train_y)
        acc = float((clf.predict(va) == val_y).mean())
        loss = _val_loss(clf, va, val_y)
        scores[C] = acc
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, C, clf)
    assert best is not None
    acc, _, C, clf = best
    sel_w, sel_b = _as_head(clf, scaler, num_classes)
    if refit:
        all_x, all_y = np.vstack([train_x, val_x]), np.concatenate([train_y, val_y])
        scaler = StandardScaler().fit(all_x)
        clf = _fit(classifier, C, seed, scaler.transform(all_x), all_y)
    w, b = _as_head(clf, scaler, num_classes)
    return ProbeResult(classifier=classifier, C=C, val_accuracy=acc, grid=scores, weight=w, bias=b,
                       selection_weight=sel_w, selection_bias=sel_b)
