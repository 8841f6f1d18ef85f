"""``--strategy auto``'s fine-tune candidates, run on the feature candidates' folds within what is left of the budget.

The best one or two backbones by feature CV are fine-tuned (the plan of ``--strategy fine-tune``:
a head warm-up on cached features, then the top stages with discriminative rates), first on the
plain images, then with one fixed ``basic``-augmented view per image (``--views 1``: deterministic,
so the frozen prefix still runs once per view). Each at the deepest ``--unfreeze`` (the run's,
else fewer top stages, down to one) whose estimate fits what is left of the budget. Each is scored by the K-fold CV of
:mod:`transferlab.experiments.cvfit` on the same folds as the feature candidates, so the scores
compare directly. When the search scores flip test-time augmentation (as for the linear probes), each
fold also predicts its held-out images mirrored (the pool's mirrored images pass the frozen prefix
once more), which scores a twin candidate ``...:flip`` from the same fold runs at no training cost.

Cost model (prefix caching): the pool passes the frozen prefix once, then each fold costs its
epochs above it. Before a candidate starts, its cost is estimated from the measured per-image
seconds of the backbone's feature pass, split by the multiply-adds below and above the lowest
trained stage; it runs only if that fits what is left of ``--time-budget``. While it runs, its
measured pace (seconds of the prefix pass, of each epoch, of each finished fold) replaces the
estimate; when the projection (the rest of the folds, the refit and the test pass) would overrun,
it stops and is recorded as ``stopped``.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from transferlab.errors import TransferlabError
from transferlab.experiments.cvfit import FoldRun, PoolInputs, cross_validate, final_model, pool_inputs, warm_prefix

log = logging.getLogger("transferlab")

FINETUNE_SPEEDUP = 3.0  # forward+backward of a trained image vs one forward pass
TORCH_VS_ORT = 2.5  # PyTorch training-mode passes vs the ONNX Runtime feature pass the per-image cost was measured on
HEAD_S_PER_ITEM = 2e-4  # one epoch of a head on cached features, per item


@dataclass
class FinetuneCost:
    """Seconds of one fine-tune candidate: the prefix pass, each phase's epoch, the per-fold overhead.

    Example:
        >>> c = FinetuneCost(prefix_s=20.0, epoch_s=[0.1, 5.0], epochs=[30, 8], k=5, fold_overhead_s=2.0, test_s=7.0)
        >>> round(c.fold_s(), 1), round(c.total_s(), 1)
        (45.0, 308.2)
    """

    prefix_s: float  # the pool through the frozen prefix, once
    epoch_s: list[float]  # per phase: one epoch over a fold's training part, its val evaluated
    epochs: list[int]  # per phase: planned epochs (an upper bound: early stopping may end a phase sooner)
    k: int
    fold_overhead_s: float  # per fold: its activations above the prefix, its predictions
    test_s: float  # the test split through the prefix and the final model

    def fold_s(self) -> float:
        return sum(e * s for e, s in zip(self.epochs, self.epoch_s)) + self.fold_overhead_s

    def total_s(self) -> float:
        """Prefix + K folds + the refit on the pool (K/(K-1) of a fold) + the test pass."""
        return self.prefix_s + self.fold_s() * (self.k + self.k / (self.k - 1)) + self.test_s


@functools.lru_cache(maxsize=8)
def mac_fractions(name: str, boundary: int) -> float:
    """The share of a backbone's multiply-adds in its stages below ``boundary`` (the frozen prefix).

    Example:
        >>> 0.5 < mac_fractions("mobilenet_v2", 6) < 1.0
        True
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from transferlab.zoo import create_backbone

    bb = create_backbone(name, pretrained=False)
    size = bb.preprocessing.input_size
    x = torch.zeros(1, 3, size, size)
    macs = []
    with torch.no_grad():
        for stage in bb.featurizer.children():
            counter = FlopCounterMode(display=False)
            with counter:
                y = stage(x)
            macs.append(counter.get_total_flops())
            x = y
    return float(sum(macs[:boundary]) / max(sum(macs), 1))


def prior_cost(per_image: float | None, *, frozen: float, plan: Any, pool_rows: int, n_test: int, k: int,
               runtime: str, mirrored: int = 0) -> FinetuneCost:
    """The estimate before anything of the candidate ran (0 when its backbone's pace was never measured).
    ``mirrored``: pool images also predicted mirrored (flip TTA: prefix once, then a fold's held-out rows
    after every epoch, like its val; the test split mirrored too); they never train."""
    per = per_image or 0.0
    torch_x = TORCH_VS_ORT if runtime == "onnx" else 1.0
    upper = per * (1.0 - frozen) * torch_x  # one image through the trained stages
    fold_train, fold_val = pool_rows * (k - 1) / k, pool_rows / k + mirrored / k
    epoch_s = [(upper * FINETUNE_SPEEDUP * fold_train + upper * fold_val) if set(p.trainable) - {"head"}
               else HEAD_S_PER_ITEM * pool_rows for p in plan.phases]
    tests = n_test * (2 if mirrored else 1)
    return FinetuneCost(prefix_s=per * frozen * (pool_rows + mirrored), epoch_s=epoch_s,
                        epochs=[p.epochs for p in plan.phases], k=k,
                        fold_overhead_s=2 * upper * pool_rows + upper * mirrored / k,
                        test_s=(per * frozen + upper) * tests)


class Stopped(TransferlabError):
    """A fine-tune candidate stopped: its measured pace would overrun what is left of the budget."""


@dataclass
class BudgetPace:
    """:class:`~transferlab.experiments.cvfit.Pace` of one candidate: projects its total from what was measured
    (epoch seconds from the engine, fold and elapsed seconds from ``clock``) and stops it when over ``allowed_s``."""

    prior: FinetuneCost
    clock: Any
    allowed_s: float
    start: float
    epoch_s: dict[int, list[float]] = field(default_factory=dict)
    fold_s: list[float] = field(default_factory=list)
    in_fold: dict[int, int] = field(default_factory=dict)  # epochs done per phase in the running fold
    fold_start: float = 0.0

    def begin_folds(self) -> None:
        """After the prefix pass: the folds start now."""
        self.fold_start = self.clock()
        self.check()

    def epoch(self, fold: int, record: dict[str, Any]) -> None:
        p = int(record["phase_index"])
        self.epoch_s.setdefault(p, []).append(float(record["seconds"]))
        self.in_fold[p] = self.in_fold.get(p, 0) + 1
        self.check()

    def fold_done(self, run: FoldRun) -> None:
        now = self.clock()
        self.fold_s.append(now - self.fold_start)
        self.fold_start, self.in_fold = now, {}
        self.check()

    def projected(self) -> float:
        """Seconds from the candidate's start to its final model's test predictions, as measured so far: the
        rest of the running fold, the folds still to run, the refit on the pool (K/(K-1) of a fold), the test."""
        pr = self.prior
        pace = [float(np.mean(self.epoch_s[p])) if p in self.epoch_s else s for p, s in enumerate(pr.epoch_s)]
        planned = sum(e * s for e, s in zip(pr.epochs, pace)) + pr.fold_overhead_s
        fold = float(np.mean(self.fold_s)) if self.fold_s else planned
        running = 0.0
        if self.in_fold:
            left = [max(e - self.in_fold.get(p, 0), 0) for p, e in enumerate(pr.epochs)]
            running = sum(n * s for n, s in zip(left, pace)) + pr.fold_overhead_s
        whole = pr.k - len(self.fold_s) - (1 if self.in_fold else 0)
        rest = running + whole * fold + fold * pr.k / (pr.k - 1) + pr.test_s
        return self.clock() - self.start + rest

    def check(self) -> None:
        est = self.projected()
        if est > self.allowed_s:
            raise Stopped(f"measured pace: {est:.0f}s in all (folds {len(self.fold_s)}/{self.prior.k} done) > "
                          f"{self.allowed_s:.0f}s left of --time-budget")


@dataclass
class Fitted:
    """A scored fine-tune candidate's setup, pool and fold runs: what its final model needs."""

    setup: Any
    pool_in: PoolInputs
    fit: Any


def variants(ranked: list[str], t: Any) -> list[tuple[str, int]]:
    """(backbone, views) to try, in order: the best backbones plain, then with one fixed augmented view."""
    top = ranked[:2]
    return [(b, 0) for b in top] + ([(b, 1) for b in top] if t.cache else [])


def candidate_options(a: Any, backbone: str, views: int, depth: int) -> tuple[Any, Any]:
    """Train and data options of one candidate: ``--strategy fine-tune --unfreeze depth`` on auto's split."""
    t = replace(a.t, backbone=backbone, strategy="fine-tune", plan=None, cut=None, weights=None, input_size=None,
                cv=a.k, views=views, unfreeze=depth, refit=False, calibrate="none", unlabeled=None)
    return t, replace(a.d, augment="basic" if views else "none", batch_augment="none", normalize="pretrained")


def candidate_setup(a: Any, backbone: str, views: int, depth: int) -> Any:
    """The ``--strategy fine-tune`` setup of one candidate on auto's split (pretrained normalisation)."""
    from transferlab.engine import init_distributed
    from transferlab.experiments.pipeline import RunSetup
    from transferlab.tasks import get_task

    t, d = candidate_options(a, backbone, views, depth)
    spec = get_task("classification")
    return RunSetup.build(spec=spec, prepared=spec.prepare(a.source, options=None), split=a.split, data_options=d,
                          train_options=t, task_options=None, ctx=init_distributed(d.device),
                          norm_idx=np.concatenate([a.split.train, a.split.val]))


def fitting_depth(a: Any, backbone: str, views: int, *, reserve: float) -> tuple[int, FinetuneCost, dict[str, float]]:
    """The deepest ``--unfreeze`` (from the run's, down to 1) whose estimate fits what is left of the budget after
    ``reserve`` (else 1), its estimate, and the estimates of the deeper ones that did not fit."""
    from transferlab.experiments.pipeline import make_plan
    from transferlab.zoo import create_backbone

    stages = create_backbone(backbone, pretrained=False).stage_names
    deeper: dict[str, float] = {}
    flips = int(a.search.flip)  # the mirrored pool (scored) and test split (if a flip twin is chosen)
    for depth in range(min(max(a.t.unfreeze, 1), len(stages)), 0, -1):
        plan = make_plan(candidate_options(a, backbone, views, depth)[0], stages)
        prior = a.cost.finetune_estimate(backbone, frozen=mac_fractions(backbone, plan.lowest_trainable_stage(stages)),
                                         plan=plan, pool_rows=len(a.pool) * (views + 1), n_test=len(a.split.test),
                                         k=a.k, runtime=a.runtime, mirrored=len(a.pool) * flips)
        if a.budget.fits(prior.total_s(), reserve=reserve) or depth == 1:
            return depth, prior, deeper
        deeper[f"unfreeze={depth}"] = round(prior.total_s(), 1)
    raise AssertionError("unreachable: depth 1 always returns")


def run_candidate(a: Any, c: Any, setup: Any, prior: FinetuneCost, *, reserve: float) -> float:
    """Score candidate ``c`` on auto's folds, or stop it (:class:`Stopped`) when its pace would overrun what is
    left after ``reserve``; returns the seconds its final model would take (refit and test), as measured."""
    start = a.budget.clock()
    pace = BudgetPace(prior=prior, clock=a.budget.clock, allowed_s=a.budget.left() - reserve, start=start)
    t0 = time.perf_counter()
    pool_in = pool_inputs(setup, a.pool, flip=a.search.flip)
    prefix_s = warm_prefix(setup, pool_in)
    c.notes["prefix_s"] = round(prefix_s, 3)
    pace.begin_folds()
    fit = cross_validate(setup, pool_in, a.folds, keep_states=a.t.ensemble, pace=pace)
    c.score, c.fitted = fit.score(), Fitted(setup=setup, pool_in=pool_in, fit=fit)
    c.seconds = time.perf_counter() - t0
    c.notes.update({"epoch_s": {setup.plan.phases[p].name: round(float(np.mean(v)), 3)
                                for p, v in pace.epoch_s.items()},
                    "epochs_per_fold": [r.epochs for r in fit.runs]})
    return float(np.mean(pace.fold_s)) * a.k / (a.k - 1) + prior.test_s


def finetune_candidates(a: Any, ranked: list[str], *, make: Any) -> list[Any]:
    """Fine-tune candidates of the best backbones (``ranked`` by feature CV): run, stopped or skipped.

    Each backbone and view policy is tried at the deepest ``--unfreeze`` that fits (:func:`fitting_depth`).
    ``make(backbone, views, depth, flip=...)`` builds the candidate record (``auto.Candidate``).
    """
    out = []
    final_s = 0.0  # the final model of the slowest scored candidate: reserved while the next ones run
    for backbone, views in variants(ranked, a.t):
        reserve = a.cost.candidate_cost() + final_s
        depth, prior, deeper = fitting_depth(a, backbone, views, reserve=reserve)
        c = make(backbone, views, depth)
        out.append(c)
        c.notes["estimated_s"] = round(prior.total_s(), 1)
        if deeper:
            c.notes["deeper_estimated_s"] = deeper
        if not a.budget.fits(prior.total_s(), reserve=reserve):
            kept = f" less {final_s:.0f}s kept for a scored candidate's final model" if final_s else ""
            c.status, c.reason = "skipped", (f"estimated {prior.total_s():.0f}s (prefix {prior.prefix_s:.0f}s, "
                                             f"{prior.fold_s():.0f}s per fold) > {a.budget.left():.0f}s left{kept}")
            log.info("auto: skipped %s: %s", c.name, c.reason)
            continue
        log.info("auto: %s: estimated %.0fs (prefix %.0fs once, %.0fs per fold), %.0fs left of the budget%s", c.name,
                 prior.total_s(), prior.prefix_s, prior.fold_s(), a.budget.left(),
                 f" (deeper: {', '.join(f'{k} {v:.0f}s' for k, v in deeper.items())}, too slow)" if deeper else "")
        t0 = time.perf_counter()
        try:
            final_s = max(final_s, run_candidate(a, c, candidate_setup(a, backbone, views, depth), prior,
                                                 reserve=reserve))
        except Stopped as stop:
            c.status, c.reason, c.score, c.seconds = "stopped", str(stop), None, time.perf_counter() - t0
            log.info("auto: stopped %s after %.0fs: %s", c.name, c.seconds, stop)
            continue
        log.info("auto: %s: %d-fold CV %.4f ± %.4f (log loss %.4f) in %.0fs", c.name, a.k, c.score.mean,
                 c.score.std, c.score.loss_mean, c.seconds)
        if c.fitted.fit.oof_flip is not None:
            out.append(flip_twin(c, make(backbone, views, depth, flip=True)))
            log.info("auto: %s (the same fold runs, each image averaged with its mirror): %d-fold CV %.4f ± %.4f "
                     "(log loss %.4f)", out[-1].name, a.k, out[-1].score.mean, out[-1].score.std,
                     out[-1].score.loss_mean)
    return out


def flip_twin(c: Any, twin: Any) -> Any:
    """``twin`` (a fresh candidate record for flip TTA) scored from scored candidate ``c``'s fold runs."""
    twin.fitted, twin.score, twin.seconds = c.fitted, c.fitted.fit.score(flip=True), c.seconds
    twin.notes = {**c.notes, "same_folds_as": c.name}
    return twin


def refit_network(c: Any) -> tuple[Any, list[int]]:
    """Scored fine-tune candidate ``c`` refit on the whole pool: the plain network (no flip wrapper) and its
    epochs per phase. The test split is not predicted here (the caller's model does that)."""
    from transferlab.experiments.cvfit import refit

    f: Fitted = c.fitted
    info = refit(f.setup, f.fit, f.pool_in)
    return f.setup.model, info["epochs_per_phase"]


def finetuned_final(c: Any, *, ensemble: bool) -> tuple[Any, np.ndarray, Any, str]:
    """The chosen fine-tune candidate's final model (refit on the pool, or its fold models), its test
    probabilities, its normalisation and what it is."""
    f: Fitted = c.fitted
    test_in = f.setup.inputs("test", f.setup.split.test)
    model, logits, info = final_model(f.setup, f.fit, f.pool_in, test_in, ensemble=ensemble, flip=c.flip)
    probs = logits.softmax(1).double().numpy()
    return model.eval(), probs, f.setup.norm, info["what"] + (f" ({info['epochs_per_phase']} epochs per phase)"
                                                             if "epochs_per_phase" in info else "")
