"""Which strategies ``run_training`` scores by stratified K-fold cross-validation (``--cv K``).

The one place commands ask before any run starts (``compare --cv``), so a strategy that cannot be
cross-validated is a one-line error naming it instead of a failed run later. Widen
:data:`CV_STRATEGIES` when ``run_training`` learns to cross-validate another strategy.

Example:
    >>> supports_cv(TrainOptions(strategy="linear-probe", cv=5)), supports_cv(TrainOptions(strategy="fine-tune"))
    (True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.errors import ConfigError
from transferlab.options import TrainOptions

#: strategies whose ``run_training(..., cv=K)`` scores K folds of the non-test pool and returns
#: ``metrics["cv"]`` (k, cv_mean, cv_std, cv_loss_mean, cv_loss_std) and the out-of-fold ``metrics["val"]``
CV_STRATEGIES: frozenset[str] = frozenset({"auto", "linear-probe", "hog-svm"})


def supports_cv(t: TrainOptions) -> bool:
    """Whether ``run_training`` cross-validates a run with these options (a custom ``--plan`` is not)."""
    return t.plan is None and t.strategy in CV_STRATEGIES


def check_cv_entries(entries: Sequence[tuple[str, TrainOptions]], *, k: int) -> None:
    """A one-line :class:`ConfigError` naming every entry (label, its options) that ``--cv k`` cannot score.

    Example:
        >>> check_cv_entries([("fine-tune", TrainOptions(strategy="fine-tune"))], k=5)
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --cv 5: fine-tune cannot be cross-validated yet (--cv scores auto, hog-svm, linear-probe); drop it or leave out --cv
    """
    bad = [label for label, t in entries if not supports_cv(t)]
    if bad:
        it = "it" if len(bad) == 1 else "them"
        raise ConfigError(f"--cv {k}: {', '.join(bad)} cannot be cross-validated yet (--cv scores "
                          f"{', '.join(sorted(CV_STRATEGIES))}); drop {it} or leave out --cv")
