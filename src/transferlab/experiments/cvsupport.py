"""Which runs ``run_training`` scores by stratified K-fold cross-validation (``--cv K``).

The one place commands ask before any run starts (``compare --cv``), so an entry that cannot be
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


def supports_cv(t: TrainOptions) -> bool:
    """Whether ``run_training`` cross-validates a run with these options (scores K folds of the non-test
    pool into ``metrics["cv"]``): every strategy and ``--plan`` (``experiments.cvfit``; auto, the
    ``--cv`` linear probe and hog-svm their own), not ``--unlabeled`` (pseudo-labels are fitted on one
    train split)."""
    return not t.unlabeled


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
