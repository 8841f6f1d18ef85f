"""Which strategies ``run_training`` scores by stratified K-fold cross-validation (``--cv K``).

The one place commands ask before any run starts (``compare --cv``), so a strategy that cannot be
cross-validated is a one-line error naming it instead of a failed run later.

Example:
    >>> ft = TrainOptions(strategy="fine-tune", cv=5)
    >>> supports_cv(ft), supports_cv(TrainOptions(strategy="fine-tune", cv=5, unlabeled="u/"))
    (True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.errors import ConfigError
from transferlab.options import TrainOptions
from transferlab.strategies.plans import STRATEGIES

#: strategies whose ``run_training(..., cv=K)`` scores K folds of the non-test pool and returns
#: ``metrics["cv"]`` (k, cv_mean, cv_std, cv_loss_mean, cv_loss_std) and the out-of-fold ``metrics["val"]``
CV_STRATEGIES: frozenset[str] = frozenset({"auto", *STRATEGIES})


def supports_cv(t: TrainOptions) -> bool:
    """Whether ``run_training`` cross-validates a run with these options: every strategy and ``--plan``
    (``experiments.cvfit``), not ``--unlabeled`` (pseudo-labels are fitted on one train split)."""
    return t.strategy in CV_STRATEGIES and not t.unlabeled


def check_cv_entries(entries: Sequence[tuple[str, TrainOptions]], *, k: int) -> None:
    """A one-line :class:`ConfigError` naming every entry (label, its options) that ``--cv k`` cannot score.

    Example:
        >>> check_cv_entries([("fine-tune", TrainOptions(strategy="fine-tune", unlabeled="u/"))], k=5)
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --cv 5: fine-tune cannot be cross-validated (--unlabeled fits pseudo-labels on one train split); drop it or --unlabeled, or leave out --cv
    """
    bad = [label for label, t in entries if not supports_cv(t)]
    if bad:
        it = "it" if len(bad) == 1 else "them"
        raise ConfigError(f"--cv {k}: {', '.join(bad)} cannot be cross-validated (--unlabeled fits pseudo-labels "
                          f"on one train split); drop {it} or --unlabeled, or leave out --cv")
