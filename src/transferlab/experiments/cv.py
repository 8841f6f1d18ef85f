"""Cross-validation over the non-test pool: stratified folds, linear probes scored on cached features.

The pool is the split's train+val (a layout's given train+val); the test split is never in a fold.
A candidate's score is the mean ± std over the K folds of its held-out accuracy and log loss.
Features are computed once for the whole pool; each fold only refits the classifier, so K folds of
a linear probe cost K small scikit-learn fits, not K forward passes.

Example:
    >>> y = np.repeat(np.arange(3), 10)
    >>> folds = stratified_folds(y, k=5, seed=0)
    >>> [int(np.bincount(y[f], minlength=3).min()) for f in folds]
    [2, 2, 2, 2, 2]
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from transferlab.errors import ConfigError
from transferlab.strategies.linear_probe import C_GRID, _as_head, one_blas_thread

log = logging.getLogger("transferlab")


def check_cv(k: int, labels: np.ndarray, classes: list[str] | None = None) -> int:
    """``k`` if it can make stratified folds of ``labels``, else a one-line :class:`ConfigError`.

    Example:
        >>> check_cv(3, np.array([0, 0, 0, 1, 1, 1]))
        3
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"--cv must be an integer >= 2 (folds), got {k!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    present = counts[counts > 0]
    smallest = int(present.min())
    if k > smallest:
        c = int(np.flatnonzero(counts == smallest)[0])
        name = classes[c] if classes else str(c)
        raise ConfigError(f"--cv {k} needs at least {k} non-test images per class; class {name!r} has {smallest} "
                          f"(use --cv {max(2, smallest)} or fewer)" if smallest >= 2 else
                          f"--cv {k}: class {name!r} has {smallest} non-test image, cross-validation needs >= 2")
    return int(k)


def stratified_folds(labels: np.ndarray, *, k: int, seed: int) -> list[np.ndarray]:
    """Positions (into ``labels``) of each fold's held-out part: disjoint, covering, stratified."""
    check_cv(k, labels)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.sort(val) for _, val in skf.split(np.zeros(len(labels)), labels)]


@dataclass
class CVScore:
    """Fold scores of one candidate at its chosen C; ``oof`` holds every pool item's held-out probabilities."""

    C: float
    fold_accuracy: list[float]
    fold_loss: list[float]
    oof: np.ndarray = field(repr=False)
    grid: dict[float, float] = field(default_factory=dict)  # C -> mean CV accuracy
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_accuracy))

    @property
    def loss_mean(self) -> float:
        return float(np.mean(self.fold_loss))

    @property
    def loss_std(self) -> float:
        return float(np.std(self.fold_loss))

    @classmethod
    def from_oof(cls, oof: np.ndarray, labels: np.ndarray, folds: list[np.ndarray]) -> "CVScore":
        """The score of held-out probabilities ``oof`` that no C was chosen for (backprop folds, averages).

        Example:
            >>> oof = np.array([[0.9, 0.1], [0.2, 0.8]])
            >>> CVScore.from_oof(oof, np.array([0, 0]), [np.array([0]), np.array([1])]).fold_accuracy
            [1.0, 0.0]
        """
        accs, losses = fold_metrics(oof, labels, folds)
        return cls(C=float("nan"), fold_accuracy=accs, fold_loss=losses, oof=oof)

    def summary(self) -> dict[str, Any]:
        return {"cv_mean": round(self.mean, 6), "cv_std": round(self.std, 6), "cv_loss_mean": round(self.loss_mean, 6),
                "cv_loss_std": round(self.loss_std, 6), "C": self.C,
                "fold_accuracy": [round(a, 6) for a in self.fold_accuracy],
                "cv_accuracy_by_C": {str(c): round(a, 6) for c, a in self.grid.items()}}


def fold_metrics(probs: np.ndarray, labels: np.ndarray, folds: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Accuracy and log loss of held-out probabilities per fold."""
    accs, losses = [], []
    for f in folds:
        p = np.clip(probs[f], 1e-12, None)
        accs.append(float((p.argmax(1) == labels[f]).mean()))
        losses.append(float(-np.log(p[np.arange(len(f)), labels[f]]).mean()))
    return accs, losses


class _PathFitter:
    """One fold's classifier along an ascending C path (logistic regression warm-starts from the last C)."""

    def __init__(self, classifier: str, seed: int) -> None:
        if classifier == "logreg":
            self.clf: Any = LogisticRegression(max_iter=3000, warm_start=True)
        elif classifier == "svm":
            self.clf = LinearSVC(max_iter=20000, random_state=seed)
        else:
            raise ConfigError(f"--classifier must be logreg or svm, got {classifier!r}")

    def fit(self, C: float, x: np.ndarray, y: np.ndarray) -> Any:
        self.clf.set_params(C=C)
        with warnings.catch_warnings(), one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(x, y)
        return self.clf


def fit_head(views: list[np.ndarray], labels: np.ndarray, rows: np.ndarray, *, C: float, num_classes: int,
             classifier: str = "logreg", seed: int = 0, fitter: _PathFitter | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head (standardisation folded in) fit on ``rows`` of every view (views are augmented copies)."""
    x = np.vstack([v[rows] for v in views])
    y = np.tile(labels[rows], len(views))
    scaler = StandardScaler().fit(x)
    clf = (fitter or _PathFitter(classifier, seed)).fit(C, scaler.transform(x), y)
    return _as_head(clf, scaler, num_classes)


def head_probs(views: list[np.ndarray], rows: np.ndarray, head: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    """Class probabilities of ``rows``, averaged over the views (test-time augmentation)."""
    w, b = head[0].numpy(), head[1].numpy()
    out = np.zeros((len(rows), w.shape[0]))
    for v in views:
        z = v[rows] @ w.T + b
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        out += e / e.sum(1, keepdims=True)
    return out / len(views)


def cv_linear_probe(views: list[np.ndarray], labels: np.ndarray, folds: list[np.ndarray], *, num_classes: int,
                    classifier: str = "logreg", grid: tuple[float, ...] = C_GRID, seed: int = 0,
                    keep_heads: bool = False) -> tuple[CVScore, list[tuple[torch.Tensor, torch.Tensor]]]:
    """K-fold score of a linear probe on pooled features; C chosen by mean CV accuracy (ties: log loss).

    ``views``: feature matrices of the pool (row i = item i), view 0 the plain images; every view
    trains, predictions average the views. Returns the score and, with ``keep_heads``, the K fold
    heads at the chosen C (for ``--ensemble``).

    Example:
        >>> x, y = np.random.default_rng(0).normal(size=(30, 4)), np.repeat(np.arange(3), 10)
        >>> x[:, 0] += 3 * y
        >>> score, _ = cv_linear_probe([x], y, stratified_folds(y, k=5, seed=0), num_classes=3, grid=(0.1, 1.0))
        >>> score.mean > 0.8
        True
    """
    t0 = time.perf_counter()
    pool = np.arange(len(labels))
    probs = {C: np.zeros((len(labels), num_classes)) for C in grid}
    heads: dict[float, list[tuple[torch.Tensor, torch.Tensor]]] = {C: [] for C in grid}
    for f in folds:
        train = np.setdiff1d(pool, f)
        fitter = _PathFitter(classifier, seed)
        for C in sorted(grid):
            head = fit_head(views, labels, train, C=C, num_classes=num_classes, classifier=classifier, seed=seed,
                            fitter=fitter)
            probs[C][f] = head_probs(views, f, head)
            if keep_heads:
                heads[C].append(head)
    scored = {C: fold_metrics(probs[C], labels, folds) for C in grid}
    best = max(grid, key=lambda C: (np.mean(scored[C][0]), -np.mean(scored[C][1])))
    score = CVScore(C=best, fold_accuracy=scored[best][0], fold_loss=scored[best][1], oof=probs[best],
                    grid={C: float(np.mean(scored[C][0])) for C in grid}, seconds=time.perf_counter() - t0)
    return score, heads[best]


def cv_path(fit_path: Any, x: np.ndarray, labels: np.ndarray, folds: list[np.ndarray], *,
            grid: tuple[float, ...], num_classes: int) -> CVScore:
    """K-fold score of any linear classifier given as ``fit_path(train_rows) -> {C: head}`` (one call per
    fold fits the whole C path, so per-fold work such as a factorisation is done once); C chosen as in
    :func:`cv_linear_probe` (mean CV accuracy, ties: log loss). ``num_classes``: the heads' rows.

    Example:
        >>> x, y = np.random.default_rng(0).normal(size=(30, 4)), np.repeat(np.arange(3), 10)
        >>> x[:, 0] += 3 * y
        >>> path = lambda rows: {C: fit_head([x], y, rows, C=C, num_classes=3) for C in (0.1, 1.0)}
        >>> cv_path(path, x, y, stratified_folds(y, k=5, seed=0), grid=(0.1, 1.0), num_classes=3).mean > 0.8
        True
    """
    t0 = time.perf_counter()
    pool = np.arange(len(labels))
    probs = {C: np.zeros((len(labels), num_classes)) for C in grid}
    for f in folds:
        heads = fit_path(np.setdiff1d(pool, f))
        for C in grid:
            probs[C][f] = head_probs([x], f, heads[C])
    scored = {C: fold_metrics(probs[C], labels, folds) for C in grid}
    best = max(grid, key=lambda C: (np.mean(scored[C][0]), -np.mean(scored[C][1])))
    return CVScore(C=best, fold_accuracy=scored[best][0], fold_loss=scored[best][1], oof=probs[best],
                   grid={C: float(np.mean(scored[C][0])) for C in grid}, seconds=time.perf_counter() - t0)
