"""LogME: the fixed point maximises the exact evidence, and it ranks separable features higher."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from transferlab.engine.logme import _svd, column_evidence, evidence_at, logme
from transferlab.errors import DataError


@pytest.mark.parametrize("shape", [(40, 6), (12, 30)])  # tall (Gram path) and wide (N < D, zero eigenvalues)
def test_evidence_is_the_exact_gaussian_marginal_likelihood(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=shape)
    y = (rng.random(shape[0]) > 0.5).astype(float)
    u, s, _ = _svd(f)
    fit = column_evidence(u, s, y, dim=shape[1])
    cov = f @ f.T / fit.alpha + np.eye(shape[0]) / fit.beta
    exact = multivariate_normal(mean=np.zeros(shape[0]), cov=cov).logpdf(y) / shape[0]
    assert fit.evidence == pytest.approx(exact, abs=1e-8)


def test_fixed_point_is_a_maximum_of_the_evidence() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(80, 10))
    y = (f[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(float)
    u, s, _ = _svd(f)
    fit = column_evidence(u, s, y, dim=10)
    assert fit.steps < 11
    for a, b in ((1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)):
        assert evidence_at(u, s, y, alpha=fit.alpha * a, beta=fit.beta * b, dim=10) < fit.evidence


def test_higher_for_linearly_separable_labels_and_invariant_to_label_names() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 25)
    centres = rng.normal(size=(4, 16)) * 3
    separable = centres[y] + rng.normal(size=(100, 16))
    shuffled = rng.permutation(y)
    assert logme(separable, y) > logme(separable, shuffled) + 0.1
    assert logme(separable, y) == pytest.approx(logme(separable, y + 7))


def test_small_reference_case() -> None:
    # hand-checkable: one feature equal to the target, so w = 1 exactly: the evidence wants almost no noise
    # (large beta) and a prior of unit scale (alpha = gamma / m^2 = 1 / 1)
    f = np.array([[0.0], [1.0], [0.0], [1.0]])
    y = np.array([0, 1, 0, 1])
    u, s, _ = _svd(f)
    fit = column_evidence(u, s, (y == 1).astype(float), dim=1)
    assert fit.beta > 1e3 and fit.alpha == pytest.approx(1.0, rel=0.01)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(DataError, match="2 classes"):
        logme(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(DataError, match="expected features"):
        logme(np.zeros((5, 2)), np.zeros(4))
