"""Ensemble selection over out-of-fold probabilities, and auto's selection candidates built from it."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.experiments.auto import Candidate, choose, leaves, selection_candidates
from transferlab.experiments.cv import CVScore, fold_metrics, stratified_folds
from transferlab.experiments.selection import greedy_ensemble


def _probs(labels: np.ndarray, *, right: np.ndarray, sure: float = 0.8) -> np.ndarray:
    """Probabilities that put ``sure`` on the true class where ``right``, else on the next class (3 classes)."""
    p = np.full((len(labels), 3), (1 - sure) / 2)
    target = np.where(right, labels, (labels + 1) % 3)
    p[np.arange(len(labels)), target] = sure
    return p


def _cand(name: str, oof: np.ndarray, labels: np.ndarray, folds: list[np.ndarray], *, strategy: str = "linear-probe",
          flip: bool = False) -> Candidate:
    c = Candidate(name=name, backbone=name.split(":")[1], strategy=strategy, options={}, members=[], groups=[],
                  flip=flip)
    c.score = CVScore.from_oof(oof, labels, folds)
    return c


def test_greedy_ensemble_averages_complementary_candidates_and_keeps_a_lone_best():
    labels = np.repeat(np.arange(3), 20)
    half = np.arange(60) % 2 == 0
    a = _probs(labels, right=half | (np.arange(60) % 3 == 0), sure=0.6)  # each wrong on a different part
    b = _probs(labels, right=~half | (np.arange(60) % 3 == 0), sure=0.6)
    noise = np.full((60, 3), 1 / 3)
    w = greedy_ensemble(np.stack([noise, a, b]), labels)
    assert w.sum() == pytest.approx(1.0) and w[0] == 0 and w[1] > 0.2 and w[2] > 0.2
    mix = np.tensordot(w, np.stack([noise, a, b]), axes=1)
    def log_loss(p: np.ndarray) -> float:
        return fold_metrics(p, labels, [np.arange(len(labels))])[1][0]

    assert log_loss(mix) < min(log_loss(a), log_loss(b))
    perfect = _probs(labels, right=np.ones(60, bool), sure=0.9)
    assert greedy_ensemble(np.stack([a, perfect, b]), labels).tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("shape, rounds, match", [((2, 5, 3), 25, "shape"), ((2, 4, 3), 0, "rounds >= 1")])
def test_greedy_ensemble_bad_input_names_what_was_expected(shape: tuple[int, ...], rounds: int, match: str):
    with pytest.raises(ValueError, match=match):
        greedy_ensemble(np.ones(shape) / 3, np.zeros(4, dtype=np.int64), rounds=rounds)


def _pool() -> tuple[np.ndarray, list[np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 30)
    folds = stratified_folds(labels, k=3, seed=0)
    right = {n: rng.random(90) < q for n, q in (("a", 0.8), ("b", 0.8), ("c", 0.75), ("n", 0.85))}
    return labels, folds, {n: _probs(labels, right=r, sure=0.7) for n, r in right.items()}


def test_selection_candidates_are_cross_fitted_per_view_policy_with_one_fine_tune():
    labels, folds, p = _pool()
    feats = [_cand("linear-probe:a", p["a"], labels, folds), _cand("concat:b", p["b"], labels, folds,
                                                                    strategy="linear-probe-concat"),
             _cand("linear-probe:c:flip", p["c"], labels, folds, flip=True)]
    tuned = [_cand("fine-tune:n", p["n"], labels, folds, strategy="fine-tune"),
             _cand("fine-tune:m", p["c"], labels, folds, strategy="fine-tune"),  # worse: left out of the selection
             _cand("fine-tune:n:flip", p["n"], labels, folds, strategy="fine-tune", flip=True)]
    out = selection_candidates(feats, tuned, labels, folds)
    assert [c.flip for c in out] == [False, True]
    plain = out[0]
    assert all(not p_.flip for p_ in plain.parts) and "fine-tune:m" not in plain.options["members"]
    assert set(plain.options["members"]) <= {"linear-probe:a", "concat:b", "fine-tune:n"}
    assert sum(plain.options["weights"]) == pytest.approx(1.0) and len(plain.parts) >= 2
    order = ["linear-probe:a", "concat:b", "fine-tune:n"]
    stack = np.stack([p["a"], p["b"], p["n"]])
    for f in folds:  # fold i read with weights selected on the other folds only
        others = np.setdiff1d(np.arange(len(labels)), f)
        w = greedy_ensemble(stack[:, others], labels[others])
        np.testing.assert_allclose(plain.score.oof[f], np.tensordot(w, stack[:, f], axes=1))
    full = greedy_ensemble(stack, labels)
    assert plain.options["weights"] == pytest.approx([full[order.index(n)] for n in plain.options["members"]], abs=1e-6)
    assert [(q.name, w) for q, w in leaves(plain)] == list(zip(plain.options["members"], plain.options["weights"]))


def test_a_selection_of_one_candidate_is_not_listed_twice():
    labels, folds, p = _pool()
    sure = np.eye(3)[labels] * 0.98 + 0.01 / 1.5
    out = selection_candidates([_cand("linear-probe:a", p["a"], labels, folds),
                                _cand("linear-probe:s", sure, labels, folds)], [], labels, folds)
    assert out == []


def test_choose_prefers_the_selection_and_says_why():
    labels, folds, p = _pool()
    feats = [_cand("linear-probe:a", p["a"], labels, folds), _cand("linear-probe:b", p["b"], labels, folds),
             _cand("linear-probe:c", p["c"], labels, folds)]
    sel = selection_candidates(feats, [], labels, folds)
    assert sel, "complementary candidates: the selection keeps more than one"
    chosen, reason = choose(feats + sel)
    assert chosen is sel[0] and "ensemble selection over 3 candidates" in reason and "other folds" in reason
    single, why = choose(feats + sel, prefer="accuracy")
    assert single.strategy == "linear-probe" or single is sel[0]
    assert "highest 3-fold CV accuracy" in why
    assert choose(feats)[0].strategy == "linear-probe"  # no selection: the highest CV accuracy
