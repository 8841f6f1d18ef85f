"""``train --cv K`` for every strategy trained by backprop: K fold runs, one frozen-prefix pass.

The non-test pool (the split's train+val) is cut into K stratified folds
(:func:`~transferlab.experiments.cv.stratified_folds`); the test split is in no fold. Each fold
trains the plan from the same initial weights on the other folds, with its own held-out part as
val (early stopping and restore by ``--monitor`` as in a single run). The pool's activations
below the lowest trainable stage are computed once (or read from the on-disk feature cache) and
every fold slices its rows from them (:func:`~transferlab.engine.activations.subset_inputs`), so
K folds cost one pass through the frozen prefix, not K.

Score: mean ± std over folds of held-out accuracy and log loss, each fold read at the epochs the
*other* folds chose (cross-fitting, :func:`cross_fit`): a fold's own best epoch is chosen on the
images it scores, which flatters the score of every plan that early-stops (by one image in a
fold of 60 on oxford-pets-3's fine-tune) and would favour it over a linear probe whose only choice,
C, is shared by all folds. Final model: the plan trained again on the whole pool for, per phase,
the median over the folds of the epochs up to each fold's best epoch (rounded half up); or, with
``--ensemble``, the K fold models (each at its own best epoch) as one
:class:`~transferlab.strategies.ensemble.MultiModel` whose frozen prefix runs once. The test split
is predicted once, by the final model.

Example:
    >>> run = transferlab.train("flowers17/", strategy="fine-tune", cv=5, out="runs/ft-cv5")  # doctest: +SKIP
    >>> run.metrics["cv"]["cv_mean"], run.metrics["cv"]["refit_epochs_per_phase"]  # doctest: +SKIP
    (0.9637, [30, 8])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from transferlab.engine import SplitInputs, mirrored_inputs, subset_inputs
from transferlab.engine.hooks import FitState, HookBase
from transferlab.experiments.cv import CVScore, check_cv, fold_metrics, stratified_folds
from transferlab.strategies.ensemble import fold_ensemble

log = logging.getLogger("transferlab")

Callback = Callable[[dict[str, Any]], None]


@dataclass
class FoldRun:
    """One fold's run: its sizes, the epochs that led to its best one, its held-out scores."""

    index: int
    n_train: int
    n_val: int
    best_epoch: int | None
    epochs: list[int]  # per phase, epochs up to the best one (what a refit replays)
    accuracy: float
    loss: float
    seconds: float  # the whole fold (extraction, epochs, evaluation)
    extract_s: float  # frozen-prefix activations computed
    train_s: float  # the epochs
    restored: dict[str, Any] | None = None
    early_stops: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # its weights (--ensemble)
    trace: "HeldOutTrace | None" = field(default=None, repr=False)  # held-out logits of every epoch (and mirrored)
    scored_at: dict[str, Any] | None = None  # where cross-fitting read it: phase, epoch, accuracy, loss

    def record(self) -> dict[str, Any]:
        r = {"fold": self.index + 1, "train": self.n_train, "val": self.n_val, "best_epoch": self.best_epoch,
             "epochs_per_phase": self.epochs, "val_accuracy": round(self.accuracy, 6), "val_loss": round(self.loss, 6),
             "seconds": round(self.seconds, 3)}
        if self.scored_at is not None:
            r["scored_at"] = self.scored_at
        if self.restored is not None:
            r["restored"] = self.restored.get("message", self.restored)
        if self.early_stops:
            r["early_stops"] = self.early_stops
        return r


class HeldOutTrace(HookBase):
    """Keeps one fold's held-out logits of every epoch, per phase (and, with ``flip(boundary)``, those of its
    mirrored images, predicted after each epoch from the activations entering the running phase, as the engine
    validates), so that :func:`cross_fit` can read the fold at any epoch."""

    name = "held-out trace"

    def __init__(self, phases: int, *, flip: Callable[[int], torch.Tensor] | None = None) -> None:
        self.flip = flip
        self.logits: list[list[torch.Tensor]] = [[] for _ in range(phases)]
        self.flip_logits: list[list[torch.Tensor]] = [[] for _ in range(phases)]

    def after_epoch(self, fit: FitState, record: dict[str, Any]) -> None:
        self.logits[fit.phase_index].append(fit.val_logits.detach().float().cpu().clone())
        if self.flip is not None:
            self.flip_logits[fit.phase_index].append(self.flip(fit.phase_start))

    def at(self, target: Sequence[int]) -> tuple[int, int]:
        """(phase index, epoch within it from 1) of the model a refit for ``target`` epochs per phase would be:
        the last phase the target trains, at its epoch, or this fold's last epoch there if it stopped sooner.

        Example:
            >>> t = HeldOutTrace(2); t.logits = [[torch.zeros(1)] * 12, [torch.zeros(1)] * 3]
            >>> t.at([20, 5]), t.at([8, 0])
            ((1, 3), (0, 8))
        """
        for p in range(len(target) - 1, -1, -1):
            if target[p] > 0 and self.logits[p]:
                return p, min(target[p], len(self.logits[p]))
        raise ValueError(f"no epoch of this fold matches {list(target)} epochs per phase")


def median_epochs(epochs: Sequence[Sequence[int]]) -> list[int]:
    """Per phase, the median of the folds' epochs up to their best (rounded half up): what a refit replays.

    Example:
        >>> median_epochs([[30, 8], [30, 0], [25, 6], [30, 8]])
        [30, 7]
    """
    per_phase = np.array(epochs, dtype=float)
    return [int(np.floor(np.median(per_phase[:, p]) + 0.5)) for p in range(per_phase.shape[1])]


def cross_fit(runs: list[FoldRun], folds: list[np.ndarray], labels: np.ndarray, *,
              phases: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Out-of-fold logits with each fold read at the epochs the other folds chose (:func:`median_epochs` of
    theirs, :meth:`HeldOutTrace.at`): no fold's score depends on an epoch chosen on its own images. Sets each
    run's ``scored_at``; returns the logits and those of the mirrored images (None without them)."""
    assert all(r.trace is not None for r in runs), "cross_fit needs every fold's HeldOutTrace"
    oof = torch.zeros(len(labels), runs[0].trace.logits[0][0].shape[1])  # type: ignore[union-attr]
    flip = torch.zeros_like(oof) if all(r.trace.flip is not None for r in runs) else None  # type: ignore[union-attr]
    for i, (run, held) in enumerate(zip(runs, folds)):
        trace: HeldOutTrace = run.trace  # type: ignore[assignment]
        target = median_epochs([r.epochs for j, r in enumerate(runs) if j != i])
        p, e = trace.at(target)
        logits = trace.logits[p][e - 1]
        oof[torch.as_tensor(held)] = logits
        if flip is not None:
            flip[torch.as_tensor(held)] = trace.flip_logits[p][e - 1]
        acc, loss = (x[0] for x in fold_metrics(logits.softmax(1).double().numpy(), labels[held],
                                                [np.arange(len(held))]))
        run.scored_at = {"phase": phases[p], "epoch": e, "others_epochs_per_phase": target,
                         "val_accuracy": round(acc, 6), "val_loss": round(loss, 6)}
    return oof, flip


@dataclass
class CVFit:
    """The K fold runs of one plan: held-out (out-of-fold) logits of every pool item and the fold records.

    ``oof`` reads each fold at the epochs the other folds chose (:func:`cross_fit`), ``oof_own`` at its own
    best epoch (chosen on the images it scores: optimistic, kept for the record)."""

    folds: list[np.ndarray]  # positions into the pool of each fold's held-out part
    runs: list[FoldRun]
    oof: torch.Tensor  # (pool, classes) logits, each row from the fold that held it out
    labels: np.ndarray  # pool labels
    phases: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    oof_flip: torch.Tensor | None = None  # the same for the mirrored images (when the pool had them)
    oof_own: torch.Tensor | None = None  # each fold at its own best epoch

    @property
    def k(self) -> int:
        return len(self.folds)

    @property
    def train_s(self) -> float:
        return float(sum(r.train_s for r in self.runs))

    @property
    def extract_s(self) -> float:
        return float(sum(r.extract_s for r in self.runs))

    def score(self, *, flip: bool = False) -> CVScore:
        """Fold accuracies and log losses from the out-of-fold probabilities (the probe's definition); with
        ``flip``, of the probabilities averaged over each image and its mirror (flip test-time augmentation)."""
        probs = self.oof.softmax(1).double().numpy()
        if flip:
            if self.oof_flip is None:
                raise ValueError("CVFit.score(flip=True): the folds predicted no mirrored images")
            probs = 0.5 * (probs + self.oof_flip.softmax(1).double().numpy())
        return CVScore.from_oof(probs, self.labels, self.folds)

    def refit_epochs(self) -> list[int]:
        """Per phase, the median over folds of the epochs up to each fold's best one (:func:`median_epochs`)."""
        return median_epochs([r.epochs for r in self.runs])

    def summary(self) -> dict[str, Any]:
        """The ``cv`` record of ``metrics.json`` and ``cv.json``."""
        s = self.score()
        out = {"k": self.k, "cv_mean": round(s.mean, 6), "cv_std": round(s.std, 6),
               "cv_loss_mean": round(s.loss_mean, 6), "cv_loss_std": round(s.loss_std, 6),
               "fold_accuracy": [round(a, 6) for a in s.fold_accuracy],
               "fold_loss": [round(x, 6) for x in s.fold_loss], "fold_sizes": [int(len(f)) for f in self.folds],
               "phases": self.phases, "epochs_per_fold": [r.epochs for r in self.runs],
               "best_epoch_per_fold": [r.best_epoch for r in self.runs],
               "scored_at": "each fold at the epochs the other folds chose (per phase, the median of their epochs up "
                            "to their best)", "folds": [r.record() for r in self.runs]}
        if self.oof_own is not None:
            own = CVScore.from_oof(self.oof_own.softmax(1).double().numpy(), self.labels, self.folds)
            out["own_best_epoch"] = {"cv_mean": round(own.mean, 6), "cv_loss_mean": round(own.loss_mean, 6),
                                     "note": "each fold at its own best epoch, chosen on the images it scores"}
        return out


class Pace(Protocol):
    """Watches the folds as they run (``--strategy auto``'s budget); either method may raise to stop them."""

    def epoch(self, fold: int, record: dict[str, Any]) -> None:
        """After every epoch of fold ``fold`` (from 0), with the epoch's history record."""

    def fold_done(self, run: FoldRun) -> None:
        """After each fold."""


@dataclass
class PoolInputs:
    """The pool as training inputs (with ``--views``, every view), as plain evaluation inputs and, for flip
    test-time augmentation, mirrored."""

    train: SplitInputs
    eval: SplitInputs
    views: int
    flip: SplitInputs | None = None

    def fold(self, held: np.ndarray, index: int) -> tuple[SplitInputs, SplitInputs]:
        """Fold ``index``'s training part (the other folds, every view) and its held-out part (plain)."""
        rest = np.setdiff1d(np.arange(len(self.eval)), held)
        v = self.views + 1
        rows = (rest[:, None] * v + np.arange(v)[None, :]).ravel()
        return (subset_inputs(self.train, rows, name=f"fold{index + 1}-train"),
                subset_inputs(self.eval, held, name=f"fold{index + 1}-val"))

    def fold_flip(self, held: np.ndarray, index: int) -> SplitInputs | None:
        """Fold ``index``'s held-out part mirrored (None without :attr:`flip`)."""
        return None if self.flip is None else subset_inputs(self.flip, held, name=f"fold{index + 1}-val-hflip")


def pool_inputs(setup: Any, pool: np.ndarray, *, flip: bool = False) -> PoolInputs:
    """The pool's inputs; with ``--views K`` the plain rows are view 0 of the viewed ones (one prefix pass).
    ``flip``: also the pool's images mirrored, to score flip test-time augmentation (one more prefix pass)."""
    train = setup.inputs("pool", pool, training=True)
    views = setup.t.views
    mirror = mirrored_inputs(setup.inputs("pool", pool), name="pool-hflip") if flip else None
    if not views:
        return PoolInputs(train=train, eval=train, views=0, flip=mirror)
    return PoolInputs(train=train, eval=subset_inputs(train, np.arange(len(pool)) * (views + 1), name="pool"),
                      views=views, flip=mirror)


def run_fold(setup: Any, pool_in: PoolInputs, held: np.ndarray, *, index: int, k: int, keep_state: bool,
             callbacks: Sequence[Callback] = ()) -> tuple[FoldRun, torch.Tensor, list[dict[str, Any]]]:
    """Train fold ``index`` from the initial weights; its run, held-out logits and history."""
    t0 = time.perf_counter()
    train_in, val_in = pool_in.fold(held, index)
    setup.reset()
    engine = setup.engine(train_labels=train_in.labels.numpy(), callbacks=callbacks, quiet=True)
    flip_in = pool_in.fold_flip(held, index)
    trace = HeldOutTrace(len(setup.plan.phases), flip=None if flip_in is None else
                         lambda start: engine.predict(flip_in, boundary=start, use_cache=engine.opt.cache))
    fit = engine.fit(setup.plan, train=train_in, val=val_in, run_dir=None, hooks=[trace])
    logits = engine.predict(val_in, boundary=setup.boundary)
    for part in (train_in, val_in, flip_in):
        if part is not None:
            setup.store.forget(part)
    epochs = [sum(1 for h in fit.history if h["phase_index"] == p and h["epoch"] <= (fit.best_epoch or 0))
              for p in range(len(setup.plan.phases))]
    labels = val_in.labels.numpy()
    probs = logits.softmax(1).double().numpy()
    acc, loss = (x[0] for x in fold_metrics(probs, labels, [np.arange(len(labels))]))
    run = FoldRun(index=index, n_train=len(train_in), n_val=len(val_in), best_epoch=fit.best_epoch, epochs=epochs,
                  accuracy=acc, loss=loss, seconds=time.perf_counter() - t0, extract_s=engine.extract_s,
                  train_s=fit.train_s,
                  restored=fit.restored, early_stops=fit.early_stops,
                  state={n: v.detach().clone() for n, v in setup.model.state_dict().items()} if keep_state else None,
                  trace=trace)
    per_phase = ", ".join(f"{p.name} {e}" for p, e in zip(setup.plan.phases, epochs))
    log.info("fold %d/%d: train %d, val %d | best epoch %s (epochs up to it: %s) | val accuracy %.4f, log loss %.4f "
             "| %.1fs", index + 1, k, len(train_in), len(val_in), fit.best_epoch, per_phase, acc, loss, run.seconds)
    return run, logits, [{**h, "fold": index + 1} for h in fit.history]


def warm_prefix(setup: Any, pool_in: PoolInputs) -> float:
    """The frozen prefix over the pool, once (or read from the on-disk cache); its seconds. Every fold then
    slices its rows from these activations."""
    t0 = time.perf_counter()
    if setup.plan.pretrained and setup.t.cache and setup.boundary > 0:
        setup.store.model = setup.model
        setup.store.pristine_upto = setup.boundary
        setup.store.get(pool_in.train, setup.boundary)
        if pool_in.flip is not None:
            setup.store.get(pool_in.flip, setup.boundary)
    return time.perf_counter() - t0


def cross_validate(setup: Any, pool_in: PoolInputs, folds: list[np.ndarray], *, keep_states: bool,
                   callbacks: Sequence[Callback] = (), pace: Pace | None = None) -> CVFit:
    """The K fold runs of ``setup``'s plan over ``pool_in`` (the setup's current weights are the initial ones).

    ``callbacks`` get every epoch's record with its ``fold`` (epochs numbered on across the folds);
    ``pace`` may raise to stop the whole cross-validation (auto's budget).
    """
    setup.snapshot()
    labels = pool_in.eval.labels.numpy()
    oof = torch.zeros(len(labels), len(setup.classes))
    runs: list[FoldRun] = []
    history: list[dict[str, Any]] = []
    for i, held in enumerate(folds):
        def relay(rec: dict[str, Any], i: int = i, done: int = len(history)) -> None:
            if pace is not None:
                pace.epoch(i, rec)
            for cb in callbacks:
                cb({**rec, "fold": i + 1, "epoch": done + rec["epoch"]})

        run, logits, hist = run_fold(setup, pool_in, held, index=i, k=len(folds), keep_state=keep_states,
                                     callbacks=(relay,))
        if pace is not None:
            pace.fold_done(run)
        oof[torch.as_tensor(held)] = logits
        runs.append(run)
        history += hist
    phases = [p.name for p in setup.plan.phases]
    fitted, fitted_flip = cross_fit(runs, folds, labels, phases=phases)
    fit = CVFit(folds=folds, runs=runs, oof=fitted, labels=labels, phases=phases, history=history,
                oof_flip=fitted_flip, oof_own=oof)
    log_cross_fit(fit)
    return fit


def log_cross_fit(fit: CVFit) -> None:
    """One line: where each fold was read and what reading it at its own best epoch would have claimed."""
    s = fit.score()
    own = CVScore.from_oof(fit.oof_own.softmax(1).double().numpy(), fit.labels, fit.folds)  # type: ignore[union-attr]
    where = ", ".join(f"{r.scored_at['phase']} {r.scored_at['epoch']}" for r in fit.runs if r.scored_at)
    log.info("CV scores each fold at the epochs the other folds chose (%s): accuracy %.4f, log loss %.4f; at each "
             "fold's own best epoch (chosen on the images it scores) they would read %.4f, %.4f", where, s.mean,
             s.loss_mean, own.mean, own.loss_mean)


def final_model(setup: Any, fit: CVFit, pool_in: PoolInputs, test_in: SplitInputs, *,
                ensemble: bool, flip: bool = False) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """The final model (refit on the pool, or the fold models averaged), its test logits, what it is.

    ``flip``: the model averages each image's probabilities with its mirror's (a
    :class:`~transferlab.strategies.ensemble.MultiModel` with ``flip``). The test split is predicted
    here, once, by the final model.
    """
    engine = setup.engine(train_labels=pool_in.train.labels.numpy(), quiet=True)  # its "val" trains too: not logged
    test_flip = mirrored_inputs(test_in, name=f"{test_in.name}-hflip") if flip else None

    def test_probs() -> torch.Tensor:
        probs = engine.predict(test_in, boundary=setup.boundary).softmax(1)
        if test_flip is not None:
            probs = 0.5 * (probs + engine.predict(test_flip, boundary=setup.boundary).softmax(1))
        return probs

    tta = " and their mirrors" if flip else ""
    if ensemble:
        probs = []
        for run in fit.runs:
            assert run.state is not None
            setup.model.load_state_dict(run.state)
            probs.append(test_probs())
        model = fold_ensemble(setup.model, [r.state for r in fit.runs if r.state is not None],
                              shared_upto=setup.boundary, flip=flip)
        info = {"what": f"the {fit.k} fold models, probabilities averaged over them{tta} (--ensemble)",
                "shared_upto": setup.boundary, "extract_s": engine.extract_s}
        log.info("final model: the %d fold models averaged%s; stages 1-%d (frozen in every fold) run once per image",
                 fit.k, tta, setup.boundary)
        return model, torch.stack(probs).mean(0).clamp_min(1e-12).log(), info
    info = refit(setup, fit, pool_in, engine=engine)
    if flip:
        test_out = test_probs().clamp_min(1e-12).log()
        model = fold_ensemble(setup.model, [setup.model.state_dict()], shared_upto=setup.boundary, flip=True)
    else:
        test_out, model = engine.predict(test_in, boundary=setup.boundary), setup.model
    info = {"what": f"refit on all {len(pool_in.eval)} non-test images" + (
            ", probabilities averaged over each image and its mirror" if flip else ""),
            "epochs_rule": "per phase, the median over the folds of the epochs up to each fold's best epoch "
            "(rounded half up)", **info, "extract_s": engine.extract_s}
    return model, test_out, info


def refit(setup: Any, fit: CVFit, pool_in: PoolInputs, *, engine: Any = None) -> dict[str, Any]:
    """``setup.model`` trained again on the whole pool for the epochs the folds chose (per phase); predicts
    nothing. Returns what :meth:`RunSetup.refit` reports (``epochs_per_phase``, ``train_s``, ...)."""
    engine = engine or setup.engine(train_labels=pool_in.train.labels.numpy(), quiet=True)
    _, val_in = pool_in.fold(fit.folds[0], 0)  # only logged: every pool item trains in the refit
    info = setup.refit(engine, train=pool_in.train, val=val_in, epochs=fit.refit_epochs())
    setup.store.forget(val_in)
    return info


def check_pool(setup: Any, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The non-test pool (train then val) and its K stratified folds; bad K is a one-line error."""
    split = setup.split
    pool = np.concatenate([split.train, split.val])
    labels = setup.source.labels[pool].astype(np.int64)
    check_cv(k, labels, setup.classes)
    return pool, stratified_folds(labels, k=k, seed=setup.d.split_seed)


def run_cv(setup: Any, *, callbacks: Sequence[Callback] = ()) -> Any:
    """``train --cv K`` of ``setup``'s plan: folds, scores, final model, test predicted once (an ``Outcome``)."""
    from transferlab.experiments.pipeline import Outcome

    t, split = setup.t, setup.split
    pool, folds = check_pool(setup, int(t.cv))
    log.info("cross-validation: %d stratified folds of the %d non-test images (train %d + val %d), %d-%d held out "
             "per fold; test %d untouched until the final model", len(folds), len(pool), len(split.train),
             len(split.val), min(map(len, folds)), max(map(len, folds)), len(split.test))
    pool_in = pool_inputs(setup, pool)
    prefix_s = warm_prefix(setup, pool_in)
    fit = cross_validate(setup, pool_in, folds, keep_states=t.ensemble, callbacks=callbacks)
    summary = fit.summary()
    log.info("%d-fold CV of %s: accuracy %.4f ± %.4f, log loss %.4f ± %.4f; epochs up to the best per fold: %s",
             fit.k, setup.plan.strategy, summary["cv_mean"], summary["cv_std"], summary["cv_loss_mean"],
             summary["cv_loss_std"], summary["epochs_per_fold"])
    test_in = setup.inputs("test", split.test)
    model, test_out, final = final_model(setup, fit, pool_in, test_in, ensemble=t.ensemble)
    if "epochs_per_phase" in final:
        summary["refit_epochs_per_phase"] = final["epochs_per_phase"]
    return Outcome(model=model, val_out=fit.oof, val_labels=pool_in.eval.labels, test_out=test_out,
                   test_labels=test_in.labels, history=fit.history, best_epoch=-1,
                   train_s=fit.train_s + float(final.get("train_s", 0.0)),
                   extract_s=prefix_s + fit.extract_s + final.pop("extract_s"), extra={"cv": summary, "final": final},
                   val_what=f"out-of-fold predictions of {fit.k}-fold CV over the {len(pool)} non-test images")
