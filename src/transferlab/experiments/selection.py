"""Ensemble selection over candidates' out-of-fold probabilities (Caruana et al., ICML 2004).

A search scores many candidates on a few hundred held-out images; their CV accuracies lie within
an image or two of each other, and the argmax among them is mostly noise (its CV score overstates
its test accuracy: the winner's curse). Ensemble selection instead grows a weighted average of
candidates greedily, with replacement, each round adding the candidate that lowers the average's
out-of-fold log loss most (a proper score: it moves with every image's probability, not only with
the few images near the decision boundary). This is the final stage of auto-sklearn and AutoGluon.

Example:
    >>> import numpy as np
    >>> labels = np.array([0, 1, 0, 1])
    >>> good = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    >>> bad = np.full((4, 2), 0.5)
    >>> greedy_ensemble(np.stack([bad, good]), labels, rounds=5).tolist()
    [0.0, 1.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["cross_fitted", "greedy_ensemble"]

#: rounds of greedy selection (each adds one unit of weight); 25 as auto-sklearn's default ensemble size (50) halved:
#: with a few hundred images, more rounds fit the out-of-fold noise
ROUNDS = 25


def greedy_ensemble(probs: np.ndarray, labels: np.ndarray, *, rounds: int = ROUNDS) -> np.ndarray:
    """Weights (summing to 1) over ``probs`` (candidates, items, classes) chosen by greedy forward selection with
    replacement on log loss; the first round takes the single best candidate. Ties go to the earlier candidate.

    Example:
        >>> p = np.array([[[0.9, 0.1]], [[0.6, 0.4]]])
        >>> greedy_ensemble(p, np.array([0]), rounds=3).tolist()
        [1.0, 0.0]
    """
    if probs.ndim != 3 or probs.shape[1] != len(labels):
        raise ValueError(f"greedy_ensemble: expected probs of shape (candidates, {len(labels)}, classes), "
                         f"got {probs.shape}")
    if rounds < 1:
        raise ValueError(f"greedy_ensemble: expected rounds >= 1, got {rounds}")
    true = probs[:, np.arange(len(labels)), labels]  # (candidates, items): only the true class enters log loss
    counts = np.zeros(len(probs), dtype=np.int64)
    total = np.zeros(true.shape[1])
    for r in range(rounds):
        trial = (total[None, :] + true) / (r + 1)
        losses = -np.log(np.clip(trial, 1e-12, None)).mean(axis=1)
        best = int(np.argmin(losses))
        counts[best] += 1
        total += true[best]
    return counts / counts.sum()


def cross_fitted(probs: np.ndarray, labels: np.ndarray, folds: list[np.ndarray], *, rounds: int = ROUNDS) -> np.ndarray:
    """Out-of-fold probabilities of ensemble selection itself: each fold averaged with the weights selected on the
    other folds only (``folds`` index the items of ``probs``).

    Example:
        >>> p = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.4, 0.6]]])
        >>> cross_fitted(p, np.array([0, 1]), [np.array([0]), np.array([1])]).round(2).tolist()
        [[0.9, 0.1], [0.2, 0.8]]
    """
    out = np.zeros(probs.shape[1:])
    for f in folds:
        others = np.setdiff1d(np.arange(len(labels)), f)
        out[f] = np.tensordot(greedy_ensemble(probs[:, others], labels[others], rounds=rounds), probs[:, f], axes=1)
    return out
