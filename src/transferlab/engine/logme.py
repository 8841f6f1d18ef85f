"""LogME (You et al., ICML 2021): how well a backbone's features suit a labelled target set.

For features ``F`` (N x D) and each class ``k``, the one-vs-rest targets ``y = [label == k]`` get a
Bayesian linear model ``y ~ N(F w, 1/beta)``, ``w ~ N(0, 1/alpha I)``; LogME is the maximised log
evidence ``log p(y | F, alpha, beta)`` per item, averaged over classes. The maximisation is the
published fixed-point iteration (the paper's Algorithm 1, in the SVD form of its authors' code,
thuml/LogME ``_fit_fixed_point``): with ``F = U S V^T``, ``sigma = s^2``, ``x = U^T y`` and
``t = alpha / beta``::

    gamma = sum sigma / (sigma + t)
    |m|^2 = sum sigma x^2 / (sigma + t)^2,   |y - F m|^2 = sum x^2 / (1 + sigma / t)^2 + |y|^2 - |x|^2
    alpha = gamma / |m|^2,                   beta = (N - gamma) / |y - F m|^2

until ``t`` changes by less than 0.1 % (at most 11 steps, as published). The evidence is then
evaluated at the final ``alpha, beta`` with their own posterior mean ``m``, which makes it the exact
Gaussian log marginal likelihood there (``log N(y; 0, F F^T / alpha + I / beta)``, checked by a
test); the ``D - k`` zero singular values of a wide ``F`` (N < D) count in ``log |A|``. No
standardisation: the features are used as the backbone gives them, as in the paper.

Example:
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 20)
    >>> good = np.eye(3)[y] * 3 + rng.normal(size=(60, 3)) * 0.3   # features that separate the classes
    >>> bad = rng.normal(size=(60, 3))                              # features that do not
    >>> bool(logme(good, y) > logme(bad, y))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.errors import DataError

MAX_STEPS = 11  # as published: "converges after at most 10 steps, typically two or three"
TOLERANCE = 1e-3  # relative change of alpha / beta that ends the iteration
EPS = 1e-5  # the published guard against a zero denominator


@dataclass(frozen=True)
class Evidence:
    """The fit of one target column: maximised log evidence per item, ``alpha``, ``beta``, steps used."""

    evidence: float
    alpha: float
    beta: float
    steps: int


def _svd(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``F = U diag(s) V^T``; for N > D from the D x D Gram matrix (cheaper, same result)."""
    n, d = features.shape
    if n > d:
        sigma, v = np.linalg.eigh(features.T @ features)
        sigma = np.clip(sigma[::-1], 0.0, None)
        v = v[:, ::-1]
        s = np.sqrt(sigma)
        keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
        u = (features @ v[:, keep]) / s[keep]
        return u, s[keep], v[:, keep].T
    u, s, vh = np.linalg.svd(features, full_matrices=False)
    return u, s, vh


def column_evidence(u: np.ndarray, s: np.ndarray, y: np.ndarray, *, dim: int) -> Evidence:
    """Maximise the evidence of one target column ``y`` given the SVD ``u, s`` of F (N x ``dim``).

    Example:
        >>> f = np.random.default_rng(1).normal(size=(30, 4)); y = f[:, 0] + 0.1
        >>> u, s, _ = np.linalg.svd(f, full_matrices=False)
        >>> column_evidence(u, s, y, dim=4).steps <= MAX_STEPS
        True
    """
    n = y.shape[0]
    sigma = s**2
    x = u.T @ y
    x2 = x**2
    res_x2 = max(float(y @ y - x2.sum()), 0.0)  # the part of y outside F's column space
    alpha, beta, steps = 1.0, 1.0, 0
    for steps in range(1, MAX_STEPS + 1):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
        res2 = float((x2 / (1.0 + sigma / t) ** 2).sum()) + res_x2
        alpha = gamma / (m2 + EPS)
        beta = (n - gamma) / (res2 + EPS)
        if abs(alpha / beta - t) / t <= TOLERANCE:
            break
    return Evidence(evidence=evidence_at(u, s, y, alpha=alpha, beta=beta, dim=dim), alpha=float(alpha),
                    beta=float(beta), steps=steps)


def evidence_at(u: np.ndarray, s: np.ndarray, y: np.ndarray, *, alpha: float, beta: float, dim: int) -> float:
    """``log p(y | F, alpha, beta) / N`` with the posterior mean ``m`` of these ``alpha, beta``.

    Example:
        >>> f = np.random.default_rng(2).normal(size=(20, 3)); y = f[:, 1]
        >>> u, s, _ = np.linalg.svd(f, full_matrices=False)
        >>> best = column_evidence(u, s, y, dim=3)
        >>> evidence_at(u, s, y, alpha=best.alpha * 3, beta=best.beta, dim=3) < best.evidence
        True
    """
    n = y.shape[0]
    sigma = s**2
    x2 = (u.T @ y) ** 2
    res_x2 = max(float(y @ y - x2.sum()), 0.0)
    t = alpha / beta
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    res2 = float((x2 / (1.0 + sigma / t) ** 2).sum()) + res_x2
    log_det_a = float(np.log(alpha + beta * sigma).sum()) + (dim - sigma.size) * np.log(alpha)
    evidence = (dim / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * log_det_a
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
    return float(evidence) / n


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N x D) for class ``labels`` (N,): the mean over classes of the
    maximised log evidence per item (higher: the features suit the labels better).

    Example:
        >>> f = np.random.default_rng(0).normal(size=(40, 5)); y = np.arange(40) % 2
        >>> round(logme(f, y), 3) == round(logme(f.astype(np.float32), y), 3)
        True
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.ndim != 1 or f.shape[0] != y.shape[0]:
        raise DataError(f"logme: expected features (N, D) and labels (N,), got {f.shape} and {y.shape}")
    classes = np.unique(y)
    if f.shape[0] < 2 or classes.size < 2:
        raise DataError(f"logme: needs >= 2 items of >= 2 classes, got {f.shape[0]} items of {classes.size}")
    if not np.isfinite(f).all():
        raise DataError("logme: the features hold NaN or infinite values")
    u, s, _ = _svd(f)
    return float(np.mean([column_evidence(u, s, (y == c).astype(np.float64), dim=f.shape[1]).evidence
                          for c in classes]))
