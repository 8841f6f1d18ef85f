"""Learning from unlabelled images on cached features: self-training or label spreading.

Both end in a linear classifier on the pooled features, so a run that used unlabelled images
predicts, evaluates and exports like any other:

* ``self-training``: scikit-learn's ``SelfTrainingClassifier`` around the probe's logistic
  regression (same C): it repeatedly adds the unlabelled images it predicts with probability
  >= ``threshold`` to the training set, with their predicted labels.
* ``label-spreading``: scikit-learn's ``LabelSpreading`` (kNN graph on L2-normalised features)
  spreads the labels to the unlabelled images; those whose spread label distribution puts
  >= ``threshold`` on one class join the training set of the logistic regression.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from transferlab.errors import ConfigError

METHODS = ("self-training", "label-spreading")


@dataclass
class PseudoLabels:
    """Labels given to unlabelled rows; ``used`` marks the rows that join training."""

    labels: np.ndarray
    confidence: np.ndarray
    used: np.ndarray
    method: str

    def summary(self) -> dict[str, object]:
        return {"method": self.method, "n_unlabeled": int(len(self.labels)), "n_used": int(self.used.sum())}


def pseudo_label(x: np.ndarray, y: np.ndarray, xu: np.ndarray, *, method: str, C: float = 1.0,
                 threshold: float = 0.75, seed: int = 0) -> PseudoLabels:
    """Pseudo-labels for ``xu`` from the labelled ``(x, y)`` (class indices), by ``method``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(20) % 2
        >>> x = rng.normal(size=(20, 3)) + 4 * np.eye(3)[y]
        >>> yu = np.arange(40) % 2
        >>> xu = rng.normal(size=(40, 3)) + 4 * np.eye(3)[yu]
        >>> pl = pseudo_label(x, y, xu, method="label-spreading")
        >>> bool((pl.labels[pl.used] == yu[pl.used]).mean() > 0.9), bool(pl.used.sum() > 30)
        (True, True)
    """
    if method not in METHODS:
        raise ConfigError(f"--unlabeled-method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(xu) == 0:
        raise ConfigError("pseudo_label: no unlabelled rows")
    classes = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if method == "self-training":
            from sklearn.semi_supervised import SelfTrainingClassifier

            scaler = StandardScaler().fit(np.vstack([x, xu]))
            st = SelfTrainingClassifier(LogisticRegression(C=C, max_iter=3000), threshold=threshold, max_iter=10)
            st.fit(scaler.transform(np.vstack([x, xu])), np.concatenate([y, np.full(len(xu), -1)]))
            lab = st.transduction_[len(x):]
            used = lab != -1
            probs = st.predict_proba(scaler.transform(xu))
            conf = probs.max(1)
            lab = np.where(used, lab, classes[probs.argmax(1)])
        else:
            from sklearn.semi_supervised import LabelSpreading

            def unit(a: np.ndarray) -> np.ndarray:
                return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

            ls = LabelSpreading(kernel="knn", n_neighbors=min(10, len(x) + len(xu) - 1), alpha=0.2, max_iter=100)
            ls.fit(unit(np.vstack([x, xu])), np.concatenate([y, np.full(len(xu), -1)]))
            dist = ls.label_distributions_[len(x):]
            conf = dist.max(1)
            lab = ls.classes_[dist.argmax(1)]
            used = conf >= threshold
    return PseudoLabels(labels=np.asarray(lab, dtype=np.int64), confidence=np.asarray(conf, dtype=np.float64),
                        used=np.asarray(used, dtype=bool), method=method)
