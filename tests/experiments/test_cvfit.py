"""Cross-fitted CV scores: each fold read at the epochs the other folds chose, not at its own best."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.data import make_split, open_dataset
from transferlab.engine import init_distributed
from transferlab.experiments.cv import CVScore, stratified_folds
from transferlab.experiments.cvfit import (FoldRun, HeldOutTrace, cross_fit, cross_validate, median_epochs,
                                           pool_inputs, warm_prefix)
from transferlab.experiments.pipeline import RunSetup
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions
from transferlab.tasks import get_task

FAST = dict(backbone="mobilenet_v2", runtime="torch")


def _onehot(cls: int, n: int, classes: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.full((n,), cls), classes).float() * 5.0


def _fold(index: int, epochs: list[int], per_phase: list[list[int]], *, flip: bool = False) -> FoldRun:
    """A fold whose held-out logits at phase p, epoch e (from 1) predict class ``per_phase[p][e - 1]``."""
    trace = HeldOutTrace(len(per_phase), flip=(lambda start: torch.zeros(0)) if flip else None)
    trace.logits = [[_onehot(c, 2) for c in phase] for phase in per_phase]
    trace.flip_logits = [[_onehot(1 - c, 2) for c in phase] for phase in per_phase]
    return FoldRun(index=index, n_train=4, n_val=2, best_epoch=sum(epochs), epochs=epochs, accuracy=1.0, loss=0.0,
                   seconds=0.0, extract_s=0.0, train_s=0.0, trace=trace)


def test_cross_fit_reads_each_fold_at_the_epochs_the_other_folds_chose():
    labels = np.zeros(6, dtype=np.int64)  # every held-out image is class 0
    folds = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    runs = [
        _fold(0, [4, 2], [[1, 1, 1, 1], [1, 0, 1]]),  # its own best (fine-tune 2) is right; fine-tune 1 is wrong
        _fold(1, [4, 0], [[1, 1, 1, 0], [1]]),  # stopped after 1 fine-tune epoch: read there
        _fold(2, [3, 2], [[1, 1, 0, 1], [0, 0, 0]]),
    ]
    oof, flip = cross_fit(runs, folds, labels, phases=["head", "fine-tune"])
    # fold 1: the others' median [4 (3.5 rounded up), 1] -> fine-tune epoch 1; fold 2: [4, 2] -> its only
    # fine-tune epoch; fold 3: [4, 1] -> fine-tune epoch 1
    assert [(r.scored_at["phase"], r.scored_at["epoch"]) for r in runs] == [("fine-tune", 1), ("fine-tune", 1),
                                                                            ("fine-tune", 1)]
    assert [r.scored_at["others_epochs_per_phase"] for r in runs] == [[4, 1], [4, 2], [4, 1]]
    assert [r.scored_at["val_accuracy"] for r in runs] == [0.0, 0.0, 1.0]
    s = CVScore.from_oof(oof.softmax(1).double().numpy(), labels, folds)
    assert s.fold_accuracy == pytest.approx([0.0, 0.0, 1.0])  # not the 1.0 its own best epoch would claim
    assert flip is None  # no mirrored images were traced
    # a target that trains no fine-tune epoch reads the head phase, at the target's epoch
    runs[1].epochs = [3, 0]
    runs[2].epochs = [2, 0]
    cross_fit(runs, folds, labels, phases=["head", "fine-tune"])
    assert (runs[0].scored_at["phase"], runs[0].scored_at["epoch"]) == ("head", 3)  # median of 3 and 2, half up


def test_cross_fit_reads_the_mirrored_images_at_the_same_epoch():
    labels = np.array([0, 0, 1, 1])
    folds = [np.array([0, 2]), np.array([1, 3])]
    runs = [_fold(0, [2, 1], [[0, 1], [1, 0]], flip=True), _fold(1, [2, 2], [[0, 0], [1, 1]], flip=True)]
    oof, flip = cross_fit(runs, folds, labels, phases=["head", "fine-tune"])
    assert flip is not None
    # each row's mirrored logits are the opposite class of its plain ones at the same (phase, epoch)
    assert torch.equal(oof.argmax(1), 1 - flip.argmax(1))
    assert runs[0].scored_at["epoch"] == 2 and runs[1].scored_at["epoch"] == 1


def test_median_epochs_is_what_the_refit_replays():
    assert median_epochs([[30, 3], [21, 1], [22, 2], [5, 0], [26, 4]]) == [22, 2]
    assert median_epochs([[4, 1], [3, 2]]) == [4, 2]  # halves round up


@pytest.mark.usefixtures("offline_cache")
def test_train_cv_scores_each_fold_at_the_other_folds_epochs_from_the_engines_own_validation(
        tiny_folder: Path, tmp_path: Path):
    run = run_training(str(tiny_folder), data_options=DataOptions(quiet=True),
                       train_options=TrainOptions(**FAST, strategy="fine-tune", cv=3, epochs=4, finetune_epochs=3),
                       out=tmp_path / "r")
    cv = run.metrics["cv"]
    for f, acc in zip(cv["folds"], cv["fold_accuracy"]):
        at = f["scored_at"]
        assert at["val_accuracy"] == pytest.approx(acc, abs=1e-6)
        others = [g["epochs_per_phase"] for g in cv["folds"] if g["fold"] != f["fold"]]
        assert at["others_epochs_per_phase"] == median_epochs(others)
        # the kept logits are those the engine validated that epoch with (its history says the same)
        rec = [h for h in run.history if h["fold"] == f["fold"] and h["phase"] == at["phase"]
               and h["phase_epoch"] == at["epoch"]]
        assert len(rec) == 1 and rec[0]["val_accuracy"] == pytest.approx(at["val_accuracy"], abs=1e-6)
        assert rec[0]["val_loss"] == pytest.approx(at["val_loss"], abs=1e-4)
    own = cv["own_best_epoch"]
    assert own["cv_mean"] == pytest.approx(np.mean([f["val_accuracy"] for f in cv["folds"]]), abs=1e-6)


@pytest.mark.usefixtures("offline_cache")
def test_tracing_the_mirrored_images_every_epoch_changes_no_training_step(tiny_folder: Path):
    src = open_dataset(str(tiny_folder), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    pool = np.concatenate([split.train, split.val])
    folds = stratified_folds(src.labels[pool], k=2, seed=0)
    d = DataOptions(quiet=True)
    fits = []
    for flip in (False, True):
        spec = get_task("classification")
        setup = RunSetup.build(spec=spec, prepared=spec.prepare(src, options=None), split=split, data_options=d,
                               train_options=TrainOptions(**FAST, strategy="fine-tune", cv=2, epochs=3,
                                                          finetune_epochs=2),
                               task_options=None, ctx=init_distributed("cpu"), norm_idx=pool)
        pool_in = pool_inputs(setup, pool, flip=flip)
        warm_prefix(setup, pool_in)
        fits.append(cross_validate(setup, pool_in, folds, keep_states=False))
    plain, mirrored = fits
    assert mirrored.oof_flip is not None and plain.oof_flip is None
    assert [h["val_loss"] for h in plain.history] == [h["val_loss"] for h in mirrored.history]
    assert torch.equal(plain.oof, mirrored.oof) and torch.equal(plain.oof_own, mirrored.oof_own)
    # every epoch of every fold traced a mirrored prediction
    assert all(len(m) == len(p) for r in mirrored.runs for m, p in zip(r.trace.flip_logits, r.trace.logits))
