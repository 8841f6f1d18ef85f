"""``--strategy auto``: candidates scored by cross-validation on cached features, within a time budget.

What it does, in order (every step logged in one line, every candidate in ``RUN_DIR/auto.json``):

1. The non-test pool (split train+val) is cut into K stratified folds (``--cv``, default 5 or the
   smallest class count); the test split is never looked at until the chosen model is final.
2. Backbones with weights here are taken best ImageNet top-1 first (transfer accuracy tracks it,
   Kornblith et al. 2019). For each, pooled features at its last two cuts (the penultimate stage
   and the head conv) are computed once for pool+test, from one preprocessing shared by all
   backbones (the largest input; a smaller backbone gets the image resized inside the model).
   Then, budget allowing, the features of the horizontally flipped images (fixed flip view: trains
   as augmentation, averages at test time). A cost model (seconds per image of each backbone,
   from the runs measured so far; before any, parameters x input pixels relative to the first)
   says what still fits in ``--time-budget``; what does not is skipped, and the log says so.
3. Candidates, each a linear probe (logistic regression, C by CV) scored by K-fold CV: every
   backbone at each cut, with and without the flip view; the concatenated features of all
   backbones; the averaged ensemble of the best candidate per backbone.
4. Fine-tune candidates (:mod:`transferlab.experiments.auto_finetune`): the best one or two
   backbones by feature CV, fine-tuned above their cached frozen prefix, plain and with one fixed
   augmented view, scored on the same folds (:mod:`transferlab.experiments.cvfit`); with the flip
   view, each also scores a ``...:flip`` twin (the same fold models, each held-out image averaged
   with its mirror: flip test-time augmentation, as the linear probes' flip view). The cost model
   prices the prefix pass once and each fold's epochs above it; a candidate runs only when that
   fits what is left of the budget, and stops (``stopped``) when its measured pace would overrun.
   Then, per view policy, the best fine-tune candidate averaged half and half with the best feature
   candidate (``fine-tune+features``, scored from both held-out probabilities; not with ``--ensemble``).
5. Per view policy, ensemble selection (:mod:`transferlab.experiments.selection`, Caruana et al. 2004)
   over the single frozen-feature candidates and the best fine-tune: a weighted average grown greedily
   on out-of-fold log loss, scored cross-fitted (fold i's weights selected on the other folds).
6. The selection with the lower CV log loss is chosen (the argmax of 30 CV accuracies a few images
   apart is mostly noise; measured on the pool only, ``benchmarks/selection.py``); where no selection
   holds two candidates, the best mean CV accuracy (ties: lower CV log loss, then cheaper). The chosen
   model is refit on the whole pool (or, with ``--ensemble``, its K fold heads or fold models are
   averaged) and saved as a :class:`~transferlab.strategies.ensemble.MultiModel` (a refit fine-tune:
   a plain network) that predict, evaluate, serve and export use. Every candidate's out-of-fold
   probabilities are kept in ``RUN_DIR/candidates_oof.npz``.

Example:
    >>> run = transferlab.train("flowers17/", out="runs/auto")  # doctest: +SKIP
    >>> json.loads(Path("runs/auto/auto.json").read_text())["chosen"]["reason"]  # doctest: +SKIP
    'ensemble selection over 10 candidates (0.04 linear-probe:..., 0.76 concat:..., 0.20 fine-tune:...): ...'
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from transferlab.data import (ImageDataset, ImageSource, NormStats, Split, atomic_write_bytes, atomic_write_text,
                             build_transform, save_split)
from transferlab.engine import classification_metrics
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError
from transferlab.experiments.cv import CVScore, check_cv, cv_linear_probe, fit_head, head_probs, stratified_folds
from transferlab.experiments.selection import ROUNDS, cross_fitted, greedy_ensemble
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies.ensemble import MultiModel, featurizer, linear_head, with_network
from transferlab.zoo import create_backbone, get_entry, list_backbones, weights_available

log = logging.getLogger("transferlab")
AUTO_JSON = "auto.json"
CV_JSON = "cv.json"
OOF_NPZ = "candidates_oof.npz"
RESERVE_S_PER_CANDIDATE = 8.0  # prior for one CV candidate before any was measured
#: C values tried by CV (standardised features; a third of the probe's grid, to keep K folds cheap)
AUTO_GRID = (0.01, 0.1, 1.0)


def backbones_here() -> tuple[list[str], str]:
    """Zoo backbones with pretrained weights on this machine, best ImageNet top-1 first, and how ordered."""
    names = [n for n in list_backbones() if weights_available(n) is not None]
    names.sort(key=lambda n: -(get_entry(n).top1 or 0.0))
    return names, ("ImageNet top-1, best first: the extraction order when the budget cannot hold every "
                   "backbone; CV on their features then ranks them (measured, not LogME's estimate)")


@dataclass
class CostModel:
    """Seconds per image of each backbone's forward pass: measured, else scaled from a measured one.

    Example:
        >>> c = CostModel(relative={"a": 1.0, "b": 2.0})
        >>> c.record("a", seconds=10.0, images=100)
        >>> c.extract_s("b", images=50)
        10.0
    """

    relative: dict[str, float]  # prior compute per image (parameters x input pixels), any unit
    measured: dict[str, float] = field(default_factory=dict)  # backbone -> seconds per image
    candidate_s: list[float] = field(default_factory=list)  # measured seconds of CV candidates

    def per_image(self, backbone: str) -> float | None:
        if backbone in self.measured:
            return self.measured[backbone]
        ref = [(b, s) for b, s in self.measured.items() if b in self.relative]
        if not ref:
            return None
        return float(np.mean([s / self.relative[b] for b, s in ref])) * self.relative[backbone]

    def extract_s(self, backbone: str, *, images: int) -> float:
        """Estimated seconds of one pass over ``images`` (0 before anything was measured)."""
        return (self.per_image(backbone) or 0.0) * images

    def candidate_cost(self) -> float:
        return float(np.mean(self.candidate_s)) if self.candidate_s else RESERVE_S_PER_CANDIDATE

    def record(self, backbone: str, *, seconds: float, images: int) -> None:
        self.measured[backbone] = seconds / max(images, 1)

    def finetune_estimate(self, backbone: str, *, frozen: float, plan: Any, pool_rows: int, n_test: int, k: int,
                          runtime: str, mirrored: int = 0) -> Any:
        """Seconds of a fine-tune candidate (:class:`~transferlab.experiments.auto_finetune.FinetuneCost`): the
        backbone's per-image seconds split by the share ``frozen`` of its multiply-adds in the frozen prefix
        (run once for the pool, and for its ``mirrored`` images) and the rest (every epoch of every fold,
        forward and backward)."""
        from transferlab.experiments.auto_finetune import prior_cost

        return prior_cost(self.per_image(backbone), frozen=frozen, plan=plan, pool_rows=pool_rows, n_test=n_test,
                          k=k, runtime=runtime, mirrored=mirrored)

    @classmethod
    def for_backbones(cls, names: list[str]) -> "CostModel":
        return cls(relative={n: get_entry(n).params * get_entry(n).input_size ** 2 / 1e12 for n in names})


@dataclass
class Budget:
    """``limit_s`` seconds from ``start`` (``clock`` is injectable for tests)."""

    limit_s: float
    clock: Callable[[], float] = time.perf_counter
    start: float = 0.0

    def __post_init__(self) -> None:
        if not self.limit_s > 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {self.limit_s:g}")
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.limit_s - self.elapsed()

    def fits(self, seconds: float, *, reserve: float = 0.0) -> bool:
        return seconds + reserve <= self.left()


@dataclass(frozen=True)
class Search:
    """What a search may try: ``auto``'s full space, or one backbone's linear probe at one cut (``--cv K``)."""

    backbones: tuple[str, ...] | None = None  # None: every backbone with weights here
    cut: int | None = None  # None: the last two cuts are candidates; else only this one
    flip: bool = True
    finetune: bool = True
    label: str = "auto"

    @classmethod
    def probe(cls, t: TrainOptions) -> "Search":
        """``--strategy linear-probe --cv K``: one candidate (``t.backbone`` at ``t.cut``), scored by CV."""
        return cls(backbones=(t.backbone,), cut=t.cut, flip=False, finetune=False, label="linear-probe")


@dataclass
class Features:
    """Pooled features of pool+test rows for one backbone: ``views[name][cut]``."""

    backbone: str
    cuts: tuple[int, int]
    dims: tuple[int, int]
    views: dict[str, np.ndarray] = field(default_factory=dict)  # "plain"/"flip" -> (n, dims[0] + dims[1])

    def at(self, cut: int, view: str) -> np.ndarray:
        x = self.views[view]
        return x[:, : self.dims[0]] if cut == self.cuts[0] else x[:, self.dims[0]:]


@dataclass
class Candidate:
    name: str
    backbone: str
    strategy: str
    options: dict[str, Any]
    members: list[tuple[str, int]]  # (backbone, cut)
    groups: list[list[int]]  # heads over members (concat: one group; averaged ensemble: one per member)
    flip: bool
    score: CVScore | None = None
    parts: list["Candidate"] = field(default_factory=list)  # averaged ensemble: its members' candidates
    seconds: float = 0.0
    status: str = "scored"
    reason: str = ""
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. a fine-tune candidate's estimate and measured pace
    fitted: Any = field(default=None, repr=False)  # a fine-tune candidate's fold runs (for its final model)

    def row(self) -> dict[str, Any]:
        r: dict[str, Any] = {"name": self.name, "backbone": self.backbone, "strategy": self.strategy,
                             "options": self.options, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.score is not None:
            r.update(self.score.summary())
            if self.strategy in ("fine-tune", "fine-tune+features"):  # no C: the folds trained by backprop
                for key in ("C", "cv_accuracy_by_C"):
                    r.pop(key)
        else:
            r.update({"cv_mean": None, "cv_std": None})
        r.update(self.notes)
        if self.reason:
            r["reason"] = self.reason
        return r


# ----------------------------------------------------------------------------- features

class _Pooled(torch.nn.Module):
    """Master-preprocessed images -> [pooled features at cut n-1, pooled features at cut n] of one backbone."""

    def __init__(self, member: Any, adapter: Any, *, cuts: tuple[int, int]) -> None:
        super().__init__()
        self.member, self.adapter = member, adapter
        self.cuts = cuts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.member.prefix(self.adapter(x), start=0, stop=self.cuts[0])
        hi = self.member.prefix(h, start=self.cuts[0], stop=self.cuts[1])
        return torch.cat([self.member.pool(h), self.member.pool(hi)], dim=1)


def ort_available() -> bool:
    """Whether ONNX Runtime (the export extra) is installed: auto's feature passes then run in it."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _runner(net: _Pooled, size: int, runtime: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if runtime == "torch":
        def run_torch(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return net(x.contiguous(memory_format=torch.channels_last)).float()
        return run_torch
    import io
    import warnings

    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    from transferlab.engine.runtimes import session_options  # the engine's: no spinning beside the decode worker

    options = session_options(threads=torch.get_num_threads())
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])


class OverBudget(Exception):
    """A feature pass stopped after its first batches: its measured pace would overrun the budget."""

    def __init__(self, per_image: float, estimate: float) -> None:
        super().__init__(f"estimated {estimate:.0f}s")
        self.per_image, self.estimate = per_image, estimate


def pooled_features(name: str, *, dataset: ImageDataset, items: list[str], master: Any, norm: NormStats,
                    flip: bool, cache: FeatureCache | None, workers: int, runtime: str = "torch",
                    cut: int | None = None, allowed_s: float | None = None) -> tuple[np.ndarray, float | None, tuple[int, int], tuple[int, int]]:
    """Pooled features at cuts ``cut - 1`` and ``cut`` (default: the last two) for every row of ``dataset``;
    returns (features, seconds of the forward passes or None when they came from the feature cache, dims of
    the two cuts, the two cuts). With ``allowed_s``, the pass stops (:class:`OverBudget`) as soon as its
    measured pace says it would take longer."""
    from transferlab.strategies.ensemble import _Adapter

    backbone = create_backbone(name, pretrained=True)
    member = featurizer(backbone).eval()
    hi = cut or len(member.stage_names)
    cuts = (max(1, hi - 1), hi)
    net = _Pooled(member, _Adapter(master, member.preprocessing), cuts=cuts).eval()
    shapes = backbone.stage_shapes()
    dims = (shapes[member.stage_names[cuts[0] - 1]][0], shapes[member.stage_names[cuts[1] - 1]][0])
    key = None
    if cache is not None and backbone.weights.sha256:
        fp = {"auto_pooled": list(cuts), "backbone": name, "weights_sha256": backbone.weights.sha256,
              "preprocessing": master.to_dict(), "normalization": norm.to_dict(), "flip": flip, "runtime": runtime}
        key = cache.key(fingerprint=fp, boundary=hi, items=items)
        hit = cache.load(key)
        if hit is not None:
            return hit.numpy(), None, dims, cuts
    run = _runner(net, master.input_size, runtime)
    rows: list[torch.Tensor] = []
    writer = cache.writer(key, n=len(dataset), shape=(sum(dims),)) if key is not None and cache else None
    w = workers if workers or len(dataset) <= 32 else 1  # one decoding worker overlaps the model (as the engine's)
    loader = DataLoader(dataset, batch_size=32, shuffle=False, num_workers=w, prefetch_factor=2 if w else None,
                        generator=torch.Generator())
    t0 = time.perf_counter()
    try:
        done = 0
        for x, _ in loader:
            out = run(x.flip(3) if flip else x)
            (writer.write if writer else rows.append)(out)
            done += len(x)
            pace = (time.perf_counter() - t0) / done
            if allowed_s is not None and pace * len(dataset) > allowed_s:
                raise OverBudget(pace, pace * len(dataset))
        result = writer.commit().numpy() if writer else torch.cat(rows).numpy()
    except BaseException:
        if writer:
            writer.abort()
        raise
    return result, time.perf_counter() - t0, dims, cuts


# ----------------------------------------------------------------------------- candidates

def feature_candidates(feats: dict[str, Features], *, only_cut: int | None = None) -> list[Candidate]:
    """Every backbone at both cuts (or ``only_cut``), plain and (if extracted) with the flip view; the
    concatenation of all backbones at their last cut."""
    out = []
    for b, f in feats.items():
        for view in [v for v in ("plain", "flip") if v in f.views]:
            for cut in [c for c in dict.fromkeys(f.cuts) if only_cut is None or c == only_cut]:
                flip = view == "flip"
                out.append(Candidate(name=f"linear-probe:{b}:cut={cut}" + (":flip" if flip else ""), backbone=b,
                                     strategy="linear-probe", options={"cut": cut, "views": "flip" if flip else "none"},
                                     members=[(b, cut)], groups=[[0]], flip=flip))
    if len(feats) > 1:
        names = list(feats)
        for flip in [False] + ([True] if all("flip" in f.views for f in feats.values()) else []):
            out.append(Candidate(name="concat:" + "+".join(names) + (":flip" if flip else ""),
                                 backbone="+".join(names), strategy="linear-probe-concat",
                                 options={"cut": "last", "views": "flip" if flip else "none"},
                                 members=[(b, feats[b].cuts[1]) for b in names], groups=[list(range(len(names)))],
                                 flip=flip))
    return out


def _views(c: Candidate, feats: dict[str, Features], rows: np.ndarray) -> list[np.ndarray]:
    views = ["plain", "flip"] if c.flip else ["plain"]
    return [np.hstack([feats[b].at(cut, v)[rows] for b, cut in c.members]) for v in views]


def score(c: Candidate, feats: dict[str, Features], labels: np.ndarray, folds: list[np.ndarray], *,
          pool_rows: np.ndarray, num_classes: int, classifier: str, seed: int) -> None:
    t0 = time.perf_counter()
    c.score, _ = cv_linear_probe(_views(c, feats, pool_rows), labels, folds, num_classes=num_classes,
                                 classifier=classifier, grid=AUTO_GRID, seed=seed)
    c.seconds = time.perf_counter() - t0


def ensemble_candidate(best: list[Candidate], labels: np.ndarray, folds: list[np.ndarray]) -> Candidate:
    """The averaged ensemble of ``best`` (one per backbone): its CV score from their held-out probabilities."""
    oof = np.mean([c.score.oof for c in best if c.score is not None], axis=0)
    members = [m for c in best for m in c.members]
    c = Candidate(name="ensemble:" + "+".join(p.name for p in best), backbone="+".join(p.backbone for p in best),
                  strategy="linear-probe-ensemble", options={"members": [p.name for p in best]},
                  members=members, groups=[[i] for i in range(len(members))], flip=any(p.flip for p in best),
                  parts=best)
    c.score = CVScore.from_oof(oof, labels, folds)
    return c


def cross_family_candidates(feature_cands: list[Candidate], tuned: list[Candidate], labels: np.ndarray,
                            folds: list[np.ndarray]) -> list[Candidate]:
    """Per view policy (plain, flip): the best fine-tune candidate and the best frozen-feature candidate (a probe,
    the concatenation or the averaged ensemble of backbones), their probabilities averaged half and half.
    Scored from their held-out probabilities on the same folds: one more fit (a probe's) if chosen."""
    out = []
    for flip in (False, True):
        nets, lins = (_ranked([c for c in pool if c.flip == flip]) for pool in (tuned, feature_cands))
        if not nets or not lins:
            continue
        net, lin = nets[0], lins[0]
        oof = 0.5 * (net.score.oof + lin.score.oof)  # type: ignore[union-attr]
        c = Candidate(name=f"ensemble:{net.name}+{lin.name}", backbone=f"{net.backbone}+{lin.backbone}",
                      strategy="fine-tune+features", options={"members": [net.name, lin.name], "weights": [0.5, 0.5]},
                      members=[], groups=[], flip=flip, parts=[net, lin])
        c.score = CVScore.from_oof(oof, labels, folds)
        out.append(c)
    return out


def selection_candidates(feature_cands: list[Candidate], tuned: list[Candidate], labels: np.ndarray,
                         folds: list[np.ndarray]) -> list[Candidate]:
    """Per view policy (plain, flip): ensemble selection (:mod:`transferlab.experiments.selection`) over that
    policy's single frozen-feature candidates and its best fine-tune, on their out-of-fold probabilities. Scored
    cross-fitted: fold i's weights are selected on the other folds' held-out probabilities only. A selection of
    one candidate adds nothing (it is listed already)."""
    out = []
    for flip in (False, True):
        singles = [c for c in feature_cands if c.flip == flip and c.score is not None
                   and c.strategy in ("linear-probe", "linear-probe-concat")]
        parts = singles + _ranked([c for c in tuned if c.flip == flip and c.strategy == "fine-tune"])[:1]
        if len(parts) < 2:
            continue
        probs = np.stack([c.score.oof for c in parts])  # type: ignore[union-attr]
        weights = greedy_ensemble(probs, labels)
        keep = np.flatnonzero(weights > 0)
        if len(keep) < 2:
            continue
        chosen = [parts[i] for i in keep]
        c = Candidate(name=f"ensemble-selection:{len(keep)}-of-{len(parts)}" + (":flip" if flip else ""),
                      backbone="+".join(dict.fromkeys(b for p in chosen for b in p.backbone.split("+"))),
                      strategy="ensemble-selection",
                      options={"members": [p.name for p in chosen],
                               "weights": [round(float(weights[i]), 6) for i in keep], "rounds": ROUNDS,
                               "selected_from": len(parts)},
                      members=[], groups=[], flip=flip, parts=chosen)
        c.score = CVScore.from_oof(cross_fitted(probs, labels, folds), labels, folds)
        out.append(c)
    return out


def _ranked(cands: list[Candidate]) -> list[Candidate]:
    scored = [c for c in cands if c.score is not None]
    return sorted(scored, key=lambda c: (-round(c.score.mean, 9), c.score.loss_mean, c.seconds))  # type: ignore[union-attr]


def choose(cands: list[Candidate], *, prefer: str = "selection") -> tuple[Candidate, str]:
    """``prefer="selection"``: the ensemble selection (plain or flip view policy) with the lower cross-fitted CV log
    loss, the score it optimises, where there is one; else (or with ``prefer="accuracy"``) the highest mean CV
    accuracy; ties: lower CV log loss, then fewer seconds. Measured on the pool only: benchmarks/selection.py."""
    ranked = _ranked(cands)
    others = [c for c in ranked if c.strategy != "ensemble-selection"]
    selections = sorted([c for c in ranked if c.strategy == "ensemble-selection"],
                        key=lambda c: c.score.loss_mean) if prefer == "selection" else []  # type: ignore[union-attr]
    best = (selections or ranked)[0]
    s = best.score
    assert s is not None
    k = len(s.fold_accuracy)
    if selections:
        top = others[0].score
        assert top is not None
        weights = ", ".join(f"{w:.2f} {n}" for n, w in zip(best.options["members"], best.options["weights"]))
        return best, (f"ensemble selection over {best.options['selected_from']} candidates ({weights}): "
                      f"{k}-fold CV accuracy {s.mean:.4f} ± {s.std:.4f} (log loss {s.loss_mean:.4f}), each fold's "
                      f"weights selected on the other folds; the best other candidate {others[0].name} reads "
                      f"{top.mean:.4f} (log loss {top.loss_mean:.4f}) on folds that also chose it")
    reason = f"highest {k}-fold CV accuracy {s.mean:.4f} ± {s.std:.4f} (log loss {s.loss_mean:.4f})"
    if len(ranked) > 1:
        r = ranked[1]
        reason += f"; runner-up {r.name} {r.score.mean:.4f} ± {r.score.std:.4f}"  # type: ignore[union-attr]
    return best, reason


# ----------------------------------------------------------------------------- the run

@dataclass
class AutoContext:
    """One search's inputs: the data and its folds, the options, the budget and the cost model."""

    source: ImageSource
    split: Split
    d: DataOptions
    t: TrainOptions
    search: Search
    budget: Budget
    cost: CostModel
    pool: np.ndarray  # split train then val
    labels: np.ndarray  # pool labels
    k: int
    folds: list[np.ndarray]
    names: list[str]  # backbones to try, in order
    order: str  # how they were ordered
    master: Any  # the one preprocessing of the feature passes
    norm: NormStats
    runtime: str  # of the feature passes


def auto_context(source: ImageSource, split: Split, d: DataOptions, t: TrainOptions, *, search: Search,
                 cost: CostModel | None, clock: Callable[[], float]) -> AutoContext:
    """Options checked, the pool cut into folds, the backbones listed and ordered, the budget started."""
    budget = Budget(t.time_budget, clock=clock)
    if d.normalize != "pretrained":
        raise ConfigError(f"--strategy {search.label} with cross-validation uses the backbone's pretrained "
                          f"normalisation; got --normalize {d.normalize}")
    if d.augment != "none" or d.batch_augment != "none" or t.views:
        raise ConfigError(f"--strategy {search.label} with cross-validation scores fixed views it chooses itself "
                          f"(plain and flipped); got --augment {d.augment} --batch-augment {d.batch_augment} "
                          f"--views {t.views}")
    pool = np.concatenate([split.train, split.val])
    labels = source.labels[pool].astype(np.int64)
    counts = np.bincount(labels, minlength=len(source.classes))
    k = check_cv(t.cv if t.cv is not None else max(2, min(5, int(counts.min()))), labels, list(source.classes))
    get_entry(t.backbone)  # an unknown --backbone is an error even where auto picks the backbones itself
    names, order = backbones_here()
    if search.backbones is not None:
        names, order = list(search.backbones), "as given"
    if not names:
        raise ConfigError("--strategy auto needs a backbone with pretrained weights here; `transferlab models` "
                          "lists none (pass an explicit --strategy with --weights)")
    entries = {n: get_entry(n) for n in names}
    master = create_backbone(max(names, key=lambda n: entries[n].input_size), pretrained=False).preprocessing
    a = AutoContext(source=source, split=split, d=d, t=t, search=search, budget=budget,
                    cost=cost or CostModel.for_backbones(names), pool=pool, labels=labels, k=k,
                    folds=stratified_folds(labels, k=k, seed=d.split_seed), names=names, order=order, master=master,
                    norm=NormStats("pretrained", master.mean, master.std),
                    runtime="onnx" if t.runtime == "onnx" or ort_available() else "torch")
    log.info("%s: pool %d non-test images (train %d + val %d) in %d stratified folds of %d-%d; test %d untouched; "
             "backbones: %s (%s); budget %.0fs", search.label, len(pool), len(split.train), len(split.val), k,
             min(map(len, a.folds)), max(map(len, a.folds)), len(split.test), ", ".join(names), order, t.time_budget)
    return a


def _skip_row(b: str, view: str, status: str, estimate: float, reason: str) -> dict[str, Any]:
    return {"name": f"features:{b}:{view}", "backbone": b, "strategy": "features", "options": {"views": view},
            "status": status, "cv_mean": None, "cv_std": None, "seconds": 0.0, "estimated_s": round(estimate, 1),
            "reason": reason}


def extract_features(a: AutoContext) -> tuple[dict[str, Features], list[dict[str, Any]]]:
    """Pooled features of every backbone that fits the budget (plain, then flipped); rows of those skipped."""
    from transferlab.experiments.train import feature_cache, item_keys

    rows_all = np.concatenate([a.pool, a.split.test])
    dataset = ImageDataset(a.source, rows_all, build_transform(a.master, norm=a.norm), draft_size=a.master.resize_size)
    items = item_keys(a.source, rows_all)
    if a.runtime == "onnx":
        log.info("auto: the frozen featurizers run in ONNX Runtime for the feature passes (2-4x faster on this CPU, "
                 "features within ~1e-5 of PyTorch); the saved model runs in either")
    cache = feature_cache(a.t)
    feats: dict[str, Features] = {}
    skipped: list[dict[str, Any]] = []
    n_cands_left = lambda: 2 * (len(feats) + 1) + 2  # noqa: E731  (candidates still to score, for the reserve)
    for view in ("plain", "flip") if a.search.flip else ("plain",):
        for b in a.names:
            if view == "flip" and b not in feats:
                continue
            est = a.cost.extract_s(b, images=len(rows_all))
            reserve = a.cost.candidate_cost() * n_cands_left()
            last_resort = not feats and b == a.names[-1]  # at least one backbone's features, whatever they cost
            if not last_resort and not a.budget.fits(est, reserve=reserve):
                skipped.append(_skip_row(b, view, "skipped", est, f"estimated {est:.0f}s + {reserve:.0f}s for "
                                                                  f"scoring > {a.budget.left():.0f}s left"))
                log.info("auto: skipped %s features of %s: estimated %.0fs (+%.0fs scoring) > %.0fs left of the budget",
                         view, b, est, reserve, a.budget.left())
                continue
            try:
                x, seconds, dims, cuts = pooled_features(
                    b, dataset=dataset, items=items, master=a.master, norm=a.norm, flip=view == "flip", cache=cache,
                    workers=a.d.num_workers, runtime=a.runtime, cut=a.search.cut,
                    allowed_s=None if last_resort else a.budget.left() - reserve)
            except OverBudget as over:
                a.cost.measured[b] = over.per_image
                why = (f"measured pace {over.per_image:.3f}s/image: {over.estimate:.0f}s + {reserve:.0f}s for scoring "
                       f"> {a.budget.left():.0f}s left")
                skipped.append(_skip_row(b, view, "stopped", over.estimate, why))
                log.info("auto: stopped %s features of %s after its first batches: at %.3fs/image they would take "
                         "%.0fs (+%.0fs scoring) > %.0fs left of the budget", view, b, over.per_image, over.estimate,
                         reserve, a.budget.left())
                continue
            if seconds is not None:
                a.cost.record(b, seconds=seconds, images=len(rows_all))
            feats.setdefault(b, Features(backbone=b, cuts=cuts, dims=dims)).views[view] = x
            log.info("auto: %s features of %s for %d images: %s", view, b, len(rows_all),
                     "from the feature cache (no forward pass)" if seconds is None else
                     f"{seconds:.1f}s ({seconds / len(rows_all):.3f}s/image, {a.runtime})")
    return feats, skipped


def score_features(a: AutoContext, feats: dict[str, Features]) -> list[Candidate]:
    """The linear-probe candidates scored by CV (as the budget allows), and the averaged ensembles."""
    nc = len(a.source.classes)
    only = a.search.cut or (None if a.search.label == "auto" else next(iter(feats.values())).cuts[1])
    cands = feature_candidates(feats, only_cut=only)
    for c in cands:
        if c is not cands[0] and not a.budget.fits(a.cost.candidate_cost()):
            c.status, c.reason = "skipped", f"estimated {a.cost.candidate_cost():.0f}s > {a.budget.left():.0f}s left"
            continue
        score(c, feats, a.labels, a.folds, pool_rows=np.arange(len(a.pool)), num_classes=nc, classifier=a.t.classifier,
              seed=a.d.seed)
        a.cost.candidate_s.append(c.seconds)
    for flip in (False, True):  # the averaged ensemble of each backbone's best, one view policy
        per_bb = [choose(mine)[0] for b in feats
                  if (mine := [c for c in cands if c.score is not None and c.backbone == b and c.flip == flip])]
        if len(per_bb) > 1:
            cands.append(ensemble_candidate(per_bb, a.labels, a.folds))
    return cands


def ranked_backbones(cands: list[Candidate]) -> list[str]:
    """Backbones by their best single-backbone candidate's CV accuracy, best first."""
    best: dict[str, float] = {}
    for c in cands:
        if c.score is not None and c.strategy == "linear-probe":
            best[c.backbone] = max(best.get(c.backbone, 0.0), c.score.mean)
    return sorted(best, key=lambda b: -best[b])


def finetune_search(a: AutoContext, cands: list[Candidate]) -> list[Candidate]:
    """auto's fine-tune candidates (:mod:`transferlab.experiments.auto_finetune`): run, stopped or skipped."""
    from transferlab.experiments.auto_finetune import finetune_candidates

    t = a.t

    def make(b: str, views: int, depth: int, *, flip: bool = False) -> Candidate:
        return Candidate(name=f"fine-tune:{b}:unfreeze={depth}" + (":views=basic1" if views else "")
                         + (":flip" if flip else ""),
                         backbone=b, strategy="fine-tune", members=[], groups=[], flip=flip, status="scored",
                         options={"unfreeze": depth, "augment": "basic" if views else "none", "views": views,
                                  "tta": "flip" if flip else "none", "epochs": t.epochs,
                                  "finetune_epochs": t.finetune_epochs})

    return finetune_candidates(a, ranked_backbones(cands), make=make)


def run_auto(data: str, *, source: ImageSource, split: Split, data_options: DataOptions, train_options: TrainOptions,
             run_dir: Path | None, config: dict[str, Any], cost: CostModel | None = None,
             clock: Callable[[], float] = time.perf_counter, search: Search = Search()
             ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Search, choose by CV, refit on the pool; returns (model, metrics, auto record). See the module docstring."""
    a = auto_context(source, split, data_options, train_options, search=search, cost=cost, clock=clock)
    feats, skipped = extract_features(a)
    cands = score_features(a, feats)
    tuned = finetune_search(a, cands) if search.finetune else []
    if tuned and a.t.ensemble:
        log.info("auto: no fine-tune + features ensembles with --ensemble (its fold models share a frozen prefix "
                 "that the feature heads' backbones do not)")
    elif tuned:
        tuned += cross_family_candidates(cands, tuned, a.labels, a.folds)
    tuned += selection_candidates(cands, [] if a.t.ensemble else tuned, a.labels, a.folds)
    chosen, reason = choose(cands + tuned)
    log.info("%s: %d candidate(s) scored by %d-fold CV in %.0fs; chosen %s: %s", search.label,
             sum(c.score is not None for c in cands + tuned), a.k, a.budget.elapsed(), chosen.name, reason)
    if chosen.strategy == "fine-tune":
        from transferlab.experiments.auto_finetune import finetuned_final

        model, test_probs, norm, final = finetuned_final(chosen, ensemble=a.t.ensemble)
    else:
        model, test_probs, final = averaged_final(a, chosen, feats)
        norm = a.norm
    record = {"k": a.k, "fold_sizes": [int(len(f)) for f in a.folds], "pool": int(len(a.pool)),
              "test": int(len(split.test)), "backbones": a.names, "backbone_order": a.order,
              "time_budget_s": a.t.time_budget,
              "cost_model_s_per_image": {b: round(s, 5) for b, s in a.cost.measured.items()},
              "candidates": [c.row() for c in cands] + skipped + [c.row() for c in tuned],
              "chosen": {**chosen.row(), "reason": reason, "final": final}, "seconds": round(a.budget.elapsed(), 3)}
    metrics = _auto_metrics(a, chosen, test_probs)
    log.info("%s: final model %s; test touched once", search.label, final)
    if run_dir is not None:
        save_split(split, source, run_dir)
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
        atomic_write_text(run_dir / (AUTO_JSON if search.label == "auto" else CV_JSON), json.dumps(record, indent=2))
        save_oof(run_dir / OOF_NPZ, a, cands + tuned)
    return model, {**metrics, "backbone": model.backbone_name}, record | {"norm": norm}


def save_oof(path: Path, a: AutoContext, cands: list[Candidate]) -> None:
    """Every scored candidate's out-of-fold probabilities, for analysis after the run (no pickles):
    ``names``, ``strategies``, ``flip`` (c,); ``oof`` (c, pool, classes); ``labels``, ``fold`` (pool,); ``pool_index``
    (the pool's rows in the source).

    Example:
        >>> z = np.load("runs/auto/candidates_oof.npz")  # doctest: +SKIP
        >>> (z["oof"][0].argmax(1) == z["labels"]).mean()  # the first candidate's CV accuracy  # doctest: +SKIP
    """
    scored = [c for c in cands if c.score is not None]
    fold = np.zeros(len(a.pool), dtype=np.int64)
    for i, f in enumerate(a.folds):
        fold[f] = i
    buf = io.BytesIO()
    np.savez_compressed(buf, names=np.array([c.name for c in scored]),
                        strategies=np.array([c.strategy for c in scored]),
                        flip=np.array([c.flip for c in scored]), labels=a.labels, fold=fold,
                        pool_index=a.pool.astype(np.int64),
                        oof=np.stack([c.score.oof for c in scored]).astype(np.float64))  # type: ignore[union-attr]
    atomic_write_bytes(path, buf.getvalue())


def _auto_metrics(a: AutoContext, chosen: Candidate, test_probs: np.ndarray) -> dict[str, Any]:
    """``metrics.json`` of a search: out-of-fold predictions of the chosen candidate as val, its CV, the test."""
    assert chosen.score is not None
    classes = list(a.source.classes)
    test_labels = a.source.labels[a.split.test].astype(np.int64)

    def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        logits = torch.tensor(np.log(np.clip(probs, 1e-12, None)), dtype=torch.float32)
        loss = float(torch.nn.functional.nll_loss(logits, torch.as_tensor(labels)))
        return classification_metrics(logits, labels, classes=classes, loss=loss)

    return {"strategy": a.search.label, "backbone": chosen.backbone, "chosen": chosen.name,
            "val": {**scores(chosen.score.oof, a.labels),
                    "what": f"out-of-fold predictions of {a.k}-fold CV over the {len(a.pool)} non-test images"},
            "cv": {"k": a.k, **{key: v for key, v in chosen.row().items() if key.startswith("cv_")},
                   "fold_accuracy": [round(x, 6) for x in chosen.score.fold_accuracy]},
            "test": scores(test_probs, test_labels), "best_epoch": -1}


def leaves(c: Candidate, weight: float = 1.0) -> list[tuple[Candidate, float]]:
    """The single candidates inside ``c`` (probes, concatenations, fine-tunes: one head each) with their weights in
    its average of probabilities (``options["weights"]``, else equal).

    Example:
        >>> a, b = (Candidate(name=n, backbone="x", strategy="linear-probe", options={}, members=[], groups=[],
        ...                   flip=False) for n in "ab")
        >>> ens = Candidate(name="e", backbone="x", strategy="ensemble-selection", options={"weights": [0.75, 0.25]},
        ...                 members=[], groups=[], flip=False, parts=[a, b])
        >>> [(p.name, w) for p, w in leaves(ens)]
        [('a', 0.75), ('b', 0.25)]
    """
    if not c.parts:
        return [(c, weight)]
    ws = c.options.get("weights") or [1.0 / len(c.parts)] * len(c.parts)
    return [leaf for p, w in zip(c.parts, ws) for leaf in leaves(p, weight * w)]


def final_model(parts: list[tuple[Candidate, float]], feats: dict[str, Features], labels: np.ndarray,
                folds: list[np.ndarray], *, n_pool: int, nc: int, master: Any, classifier: str, seed: int,
                ensemble: bool) -> tuple[MultiModel, np.ndarray]:
    """Frozen-feature candidates refit on the whole pool (or their fold heads), averaged with their weights in one
    model (a backbone at a cut that several parts read is computed once); and its test probabilities."""
    pool_rows = np.arange(n_pool)
    test_rows = np.arange(n_pool, len(next(iter(feats.values())).views["plain"]))
    total = sum(w for _, w in parts)
    heads, groups, probs, weights = [], [], [], []
    members: list[tuple[str, int]] = []
    for p, w in parts:
        assert p.score is not None
        for m in p.members:
            if m not in members:
                members.append(m)
        index = [members.index(m) for m in p.members]
        if ensemble:
            _, fold_heads = cv_linear_probe(_views(p, feats, pool_rows), labels, folds, num_classes=nc,
                                            classifier=classifier, grid=(p.score.C,), seed=seed, keep_heads=True)
        else:
            fold_heads = [fit_head(_views(p, feats, pool_rows), labels, pool_rows, C=p.score.C, num_classes=nc,
                                   classifier=classifier, seed=seed)]
        test_views = _views(p, feats, test_rows)
        for h in fold_heads:
            heads.append(linear_head(*h))
            groups.append([index[g] for g in p.groups[0]])
            weights.append(w / total / len(fold_heads))
            probs.append(weights[-1] * head_probs(test_views, np.arange(len(test_rows)), h))
    flips = {p.flip for p, _ in parts}
    if len(flips) > 1:  # an ensemble mixing flip and plain parts: flip applies to all at inference
        raise ConfigError("auto: an averaged ensemble must use one view policy for all its parts")
    model = MultiModel(members=[featurizer(create_backbone(b, pretrained=True), cut=cut) for b, cut in members],
                       heads=heads, groups=groups, preprocessing=master, flip=flips.pop(), weights=weights).eval()
    return model, np.sum(probs, axis=0)


def averaged_final(a: AutoContext, c: Candidate, feats: dict[str, Features]) -> tuple[MultiModel, np.ndarray, str]:
    """The final model of a frozen-feature candidate or of an average holding (at most) one fine-tune: the fine-tune
    refit on the pool, each frozen-feature part's head refit at its C, probabilities averaged with the candidate's
    weights in one model; its test probabilities; what it is."""
    from transferlab.experiments.auto_finetune import refit_network

    parts = leaves(c)
    nets = [(p, w) for p, w in parts if p.strategy == "fine-tune"]
    lins = [(p, w) for p, w in parts if p.strategy != "fine-tune"]
    if len(nets) > 1:
        raise ConfigError(f"auto: an averaged candidate holds at most one fine-tuned network, got {len(nets)}")
    linear, lin_test = final_model(lins, feats, a.labels, a.folds, n_pool=len(a.pool), nc=len(a.source.classes),
                                   master=a.master, classifier=a.t.classifier, seed=a.d.seed, ensemble=a.t.ensemble)
    heads = ("K fold heads averaged (--ensemble)" if a.t.ensemble else
             f"refit on all {len(a.pool)} non-test images at the chosen C")
    if not nets:
        return linear, lin_test, heads + (f" (weights {[round(w, 3) for _, w in parts]})" if len(parts) > 1 else "")
    (net_part, w_net), = nets
    network, epochs = refit_network(net_part)
    model = with_network(network, linear, weight=w_net)
    net_test = network_test_probs(a, model)
    log.info("auto: final model: %s refit on the pool (%s epochs per phase, weight %.3f) and %d frozen-feature "
             "head(s) refit at their C; the fine-tuned network reads the shared preprocessing (%dpx, resized to its "
             "%dpx inside the model)", net_part.name, epochs, w_net, len(lins), a.master.input_size,
             network.preprocessing.input_size)
    final = (f"{net_part.name} refit on all {len(a.pool)} non-test images ({epochs} epochs per phase, weight "
             f"{w_net:.3f}) and {', '.join(p.name for p, _ in lins)} refit at their C, probabilities averaged"
             + (" half and half" if abs(w_net - 0.5) < 1e-9 else " with weights"))
    return model, w_net * net_test + (1.0 - w_net) * lin_test, final


def network_test_probs(a: AutoContext, model: MultiModel) -> np.ndarray:
    """The test probabilities of ``model``'s first head (the fine-tuned network) on the shared preprocessing, as
    predict and evaluate feed the saved model (with its flip averaging)."""
    from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed

    alone = MultiModel(members=[model.members[0]], heads=[model.heads[0]], groups=[[0]],
                       preprocessing=model.preprocessing, flip=model.flip, head_configs=model.head_configs[:1])
    test = SplitInputs(name="test", labels=torch.as_tensor(a.source.labels[a.split.test], dtype=torch.long),
                       eval_dataset=ImageDataset(a.source, a.split.test, build_transform(a.master, norm=a.norm),
                                                 draft_size=a.master.resize_size))
    engine = Engine(alone, ctx=init_distributed(a.d.device),
                    options=EngineOptions(num_workers=a.d.num_workers, quiet=True))
    return engine.predict(test, boundary=0, use_cache=False).exp().double().numpy()


def auto_run(data: str, *, source: ImageSource, split: Split, data_options: DataOptions, train_options: TrainOptions,
             run_dir: Path | None, t_start: float, cost: CostModel | None = None,
             clock: Callable[[], float] = time.perf_counter, search: Search = Search()) -> Any:
    """``run_training`` for ``--strategy auto`` (or a ``--cv`` linear probe, ``search=Search.probe(t)``): search,
    save the model and metrics, return the :class:`Run`."""
    from transferlab.experiments.artifacts import save_model
    from transferlab.experiments.train import METRICS, Run, _config_dict

    config = _config_dict(data, data_options, train_options, plan=None)
    model, metrics, record = run_auto(data, source=source, split=split, data_options=data_options,
                                      train_options=train_options, run_dir=run_dir, config=config, cost=cost, clock=clock,
                                      search=search)
    total = time.perf_counter() - t_start
    metrics["timing"] = {"total_s": round(total, 3), "search_s": record["seconds"]}
    metrics["skipped_files"] = [list(x) for x in source.skipped]
    classes = list(source.classes)
    if run_dir is not None:
        save_model(run_dir, model, classes=classes, norm=record["norm"],
                   extra={"strategy": search.label, "chosen": metrics["chosen"], "test_accuracy": metrics["test"]["accuracy"]})
        atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
    log.info("%s (%s) on %s: test accuracy %.4f, macro F1 %.4f (%.1fs, budget %.0fs)", search.label, metrics["chosen"],
             metrics["backbone"], metrics["test"]["accuracy"], metrics["test"]["macro_f1"], total,
             train_options.time_budget)
    return Run(run_dir=run_dir, metrics=metrics, history=[], config=config, classes=classes, model=model)
