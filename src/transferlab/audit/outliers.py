"""Outliers in embedding space: far from the image's own class and from the rest of the data.

Two measurements per image, on L2-normalised embeddings: the k-nearest-neighbour outlier score of
``cleanlab.outlier.OutOfDistribution`` (mean distance to the k most similar images of any class, as exp(-t d)) and the
cosine distance to the centroid of the image's own class. An image is an outlier when both lie above
the upper Tukey fence (Q3 + 3 IQR) of their distributions over the data set (the kNN one as the
distance ``-log(score)``). Score: ``1 - score`` of the kNN one, in [0, 1].
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np


def _fence(v: np.ndarray, k: float = 3.0) -> float:
    q1, q3 = np.quantile(v, [0.25, 0.75])
    return float(q3 + k * (q3 - q1))


def find_outliers(xn: np.ndarray, y: np.ndarray, *, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged rows worst first, their kNN scores in [0, 1], their distance to the class centroid).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(100) % 2
        >>> x = rng.normal(size=(100, 8)) * 0.1 + np.eye(8)[y]
        >>> x[7] = -np.ones(8)  # far from everything
        >>> find_outliers(x / np.linalg.norm(x, axis=1, keepdims=True), y)[0].tolist()
        [7]
    """
    from cleanlab.outlier import OutOfDistribution

    k = int(min(k, len(xn) - 1))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # cleanlab prints a progress note
        warnings.simplefilter("ignore")
        ood = OutOfDistribution(params={"k": k})
        score = np.asarray(ood.fit_score(features=xn), dtype=np.float64)  # exp(-t * mean kNN distance)
    knn = 1.0 - score  # reported: higher is more isolated, in [0, 1]
    knn_dist = -np.log(np.maximum(score, 1e-300))  # the fence works on the distance, not the bounded score
    centroids = np.zeros((int(y.max()) + 1, xn.shape[1]))
    for c in np.unique(y):
        m = xn[y == c].mean(0)
        centroids[c] = m / max(np.linalg.norm(m), 1e-12)
    own = 1.0 - (xn * centroids[y]).sum(1)
    flagged = np.flatnonzero((knn_dist > _fence(knn_dist)) & (own > _fence(own)))
    order = flagged[np.argsort(-knn[flagged], kind="stable")]
    return order, knn[order], own[order]
