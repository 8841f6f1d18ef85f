"""Label issues: out-of-fold probabilities of a linear probe, then confident learning (cleanlab).

Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021.
Each image's class probabilities come from a logistic regression that never saw it (stratified
K-fold on the embeddings); cleanlab estimates the joint of given and true labels from them and
flags the images whose given label is most likely wrong. Severity is ``1 - p(given label)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from transferlab.errors import DataError


@dataclass
class LabelIssues:
    """Flagged rows (worst first) with the out-of-fold probabilities of every row."""

    indices: np.ndarray  # rows of the input, most severe first
    severity: np.ndarray  # 1 - p(given) per flagged row
    suggested: np.ndarray  # argmax of the out-of-fold probabilities per flagged row
    probs: np.ndarray  # (N, C) out-of-fold probabilities of every row
    folds: int


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, *, num_classes: int, folds: int = 5, C: float = 10.0,
                      seed: int = 0) -> tuple[np.ndarray, int]:
    """(N, C) probabilities of each row from a logistic regression on L2-normalised rows, fit without it.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(60) % 3
        >>> x = rng.normal(size=(60, 4)) + 3 * np.eye(4)[y]
        >>> p, k = out_of_fold_probs(x, y, num_classes=3)
        >>> p.shape, k, float((p.argmax(1) == y).mean()) > 0.9
        ((60, 3), 5, True)
    """
    counts = np.bincount(y, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError(f"label issues need at least 2 classes with images, got {len(present)}")
    k = int(min(folds, present.min()))
    if k < 2:
        small = [c for c in range(num_classes) if 0 < counts[c] < 2]
        raise DataError(f"label issues need >= 2 images in every class for K-fold; class index {small[0]} has 1")
    clf = make_pipeline(Normalizer(), LogisticRegression(C=C, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        p = cross_val_predict(clf, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")
    full = np.zeros((len(y), num_classes))
    full[:, np.flatnonzero(counts)] = p  # classes without images get probability 0
    return full, k


def find_label_issues(x: np.ndarray, y: np.ndarray, *, num_classes: int, folds: int = 5, C: float = 10.0,
                      seed: int = 0) -> LabelIssues:
    """Confident learning on out-of-fold probabilities (``cleanlab.filter.find_label_issues``).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(90) % 3
        >>> x = rng.normal(size=(90, 6)) + 4 * np.eye(6)[y]
        >>> noisy = y.copy(); noisy[[0, 1, 2]] = [1, 2, 0]
        >>> sorted(find_label_issues(x, noisy, num_classes=3).indices.tolist())
        [0, 1, 2]
    """
    from cleanlab.filter import find_label_issues as cl_find

    probs, k = out_of_fold_probs(x, y, num_classes=num_classes, folds=folds, C=C, seed=seed)
    present = np.flatnonzero(np.bincount(y, minlength=num_classes))
    remap = np.full(num_classes, -1)
    remap[present] = np.arange(len(present))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab's notes on tiny classes
        ranked = cl_find(labels=remap[y], pred_probs=probs[:, present], filter_by="prune_by_noise_rate",
                         return_indices_ranked_by="self_confidence")
    ranked = np.asarray(ranked, dtype=np.int64)
    severity = 1.0 - probs[ranked, y[ranked]]
    return LabelIssues(indices=ranked, severity=severity, suggested=probs[ranked].argmax(1), probs=probs, folds=k)
