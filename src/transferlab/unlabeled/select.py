"""What to label next: uncertainty (margin, entropy) and diversity (k-center greedy).

k-center greedy (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018) picks, one at a time, the pool image farthest from everything labelled or
picked so far, so the labelled set covers the embedding space.
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("margin", "entropy", "kcenter")


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``: 1 when the two likeliest classes tie.

    Example:
        >>> margin_scores(np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]])).round(2).tolist()
        [1.0, 0.2]
    """
    top = np.sort(probs, axis=1)[:, ::-1]
    return 1.0 - (top[:, 0] - top[:, 1])


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row, in nats.

    Example:
        >>> entropy_scores(np.array([[0.5, 0.5], [1.0, 0.0]])).round(3).tolist()
        [0.693, 0.0]
    """
    p = np.clip(probs, 1e-12, 1.0)
    return (-probs * np.log(p)).sum(1) + 0.0  # + 0.0: no negative zero


def kcenter_greedy(pool: np.ndarray, labelled: np.ndarray, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(picked pool rows in order, each one's distance to the nearest labelled-or-picked row when picked).

    Euclidean on L2-normalised rows. With nothing labelled, the first pick is a seeded random row.

    Example:
        >>> pool = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0]])
        >>> kcenter_greedy(pool, np.array([[1.0, 0.0]]), 2)[0].tolist()
        [3, 2]
    """
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    p = unit(np.asarray(pool, dtype=np.float64))
    n = int(min(n, len(p)))
    dist = np.full(len(p), np.inf)
    if len(labelled):
        lab = unit(np.asarray(labelled, dtype=np.float64))
        for a in range(0, len(lab), 1024):
            d = np.sqrt(np.maximum(2 - 2 * p @ lab[a : a + 1024].T, 0))
            dist = np.minimum(dist, d.min(1))
    picked, at = [], []
    for k in range(n):
        j = int(np.random.default_rng(seed).integers(len(p))) if k == 0 and not len(labelled) else int(dist.argmax())
        picked.append(j)
        at.append(float(dist[j]))
        dist = np.minimum(dist, np.sqrt(np.maximum(2 - 2 * p @ p[j], 0)))
        dist[j] = -np.inf
    return np.asarray(picked, dtype=np.int64), np.asarray(at)


def select(strategy: str, *, n: int, probs: np.ndarray | None = None, pool: np.ndarray | None = None,
           labelled: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows to label next, their scores) by ``strategy``; ties keep the pool order.

    Example:
        >>> select("margin", n=1, probs=np.array([[0.9, 0.1], [0.55, 0.45]]))[0].tolist()
        [1]
    """
    from transferlab.errors import ConfigError

    if strategy in ("margin", "entropy"):
        if probs is None:
            raise ConfigError(f"{strategy} selection needs class probabilities")
        s = margin_scores(probs) if strategy == "margin" else entropy_scores(probs)
        order = np.argsort(-s, kind="stable")[:n]
        return order, s[order]
    if strategy == "kcenter":
        if pool is None:
            raise ConfigError("kcenter selection needs embeddings of the pool")
        lab = labelled if labelled is not None else np.zeros((0, pool.shape[1]))
        return kcenter_greedy(pool, lab, n, seed=seed)
    raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
