"""More data: which unlabelled images to label next, and learning from unlabelled images.

Example:
    >>> from transferlab.unlabeled import margin_scores
    >>> margin_scores(np.array([[0.5, 0.5], [0.9, 0.1]])).round(2).tolist()  # doctest: +SKIP
    [1.0, 0.2]
"""

from transferlab.unlabeled.select import STRATEGIES, entropy_scores, kcenter_greedy, margin_scores, select
from transferlab.unlabeled.source import open_unlabeled

__all__ = ["STRATEGIES", "entropy_scores", "kcenter_greedy", "margin_scores", "open_unlabeled", "select"]
