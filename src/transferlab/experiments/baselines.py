"""Runs of the strategies that use no network (``hog-svm``): same split, metrics and run directory
files as every other run (``config.json``, ``metrics.json``, split lists, ``predictions_test.csv``),
so ``compare`` and the report show them beside the transfer strategies. There is no model file:
predict, export and serve are for network runs. ``--cv K`` chooses the SVM's C by K-fold CV over
train+val with the same folds and fits as a ``--cv`` linear probe (``cv`` in metrics.json, ``cv.json``).

Example:
    >>> import transferlab
    >>> transferlab.train("flowers17/", strategy="hog-svm", out="runs/hog").test_accuracy  # doctest: +SKIP
    0.55
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageSource, Split, atomic_write_text, save_split
from transferlab.engine import classification_metrics
from transferlab.errors import ConfigError
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies import Plan, fit_linear_probe
from transferlab.strategies.hog_svm import default_size, hog_features, hog_settings

log = logging.getLogger("transferlab")


def run_hog_svm(data: str, *, source: ImageSource, split: Split, data_options: DataOptions,
                train_options: TrainOptions, run_dir: Path | None, save_predictions: bool = False) -> Any:
    """HOG descriptors + linear SVM (C on val, refit on train+val; with ``--cv K``, C by K-fold CV over
    train+val and refit on all of it, or the K fold SVMs averaged with ``--ensemble``); returns a ``train.Run``."""
    from transferlab.experiments.train import METRICS, Run, _config, feature_cache, item_keys

    t0 = time.perf_counter()
    d, t = data_options, train_options
    if t.ensemble and t.cv is None:
        raise ConfigError("--ensemble averages the K fold models of cross-validation: give --cv K")
    size = t.input_size or default_size(source, split.train)
    settings = hog_settings(size)
    if d.augment != "none" or t.views:
        log.info("hog-svm describes the clean images: --augment/--views apply to networks")
    cache = feature_cache(t)
    feats = {name: hog_features(source, idx, size=size, items=item_keys(source, idx), cache=cache, name=name)
             for name, idx in (("train", split.train), ("val", split.val), ("test", split.test))}
    extract_s = time.perf_counter() - t0
    labels = {name: source.labels[idx] for name, idx in (("train", split.train), ("val", split.val),
                                                          ("test", split.test))}
    classes = list(source.classes)

    def metrics(x: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
        return classification_metrics(x, y, classes=classes,
                                      loss=float(torch.nn.functional.cross_entropy(x, torch.as_tensor(y))))

    if t.cv is None:
        probe = fit_linear_probe(feats["train"], labels["train"], feats["val"], labels["val"],
                                 num_classes=len(classes), classifier="svm", seed=d.seed)
        val_logits = _scores(feats["val"], probe.selection_weight, probe.selection_bias)
        test_logits = _scores(feats["test"], probe.weight, probe.bias)
        C, extra = probe.C, {"probe": {"classifier": "svm", "C": probe.C, "refit_on": "train+val",
                                       "val_accuracy_by_C": {str(k): v for k, v in probe.grid.items()}}}
        val_m = metrics(val_logits, labels["val"])
    else:
        val_m, test_logits, C, extra = _hog_cv(feats, labels, k=t.cv, classes=classes, seed=d.seed,
                                               split_seed=d.split_seed, ensemble=t.ensemble, run_dir=run_dir)
    m = {"strategy": "hog-svm", "backbone": "none",
         "val": val_m, "test": metrics(test_logits, labels["test"]),
         "timing": {"total_s": round(time.perf_counter() - t0, 3), "extract_s": round(extract_s, 3),
                    "train_s": round(time.perf_counter() - t0 - extract_s, 3)},
         "best_epoch": -1, "skipped_files": [list(s) for s in source.skipped],
         "features": {**settings, "dim": int(feats["train"].shape[1])}, **extra}
    config = _config(data, d, t, Plan(strategy="hog-svm", phases=(), pretrained=False))
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_split(split, source, run_dir)
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
        atomic_write_text(run_dir / METRICS, json.dumps(m, indent=2))
        if save_predictions:
            conf, pred = test_logits.softmax(1).max(1)
            rows = ["identity,true,predicted,confidence"] + [
                f"{json.dumps(source.identity(int(i)))},{int(y)},{int(p)},{float(c):.6f}"
                for i, y, p, c in zip(split.test, labels["test"].tolist(), pred.tolist(), conf.tolist())]
            atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
    scored = (f"{m['cv']['k']}-fold CV {m['cv']['cv_mean']:.4f} ± {m['cv']['cv_std']:.4f}, " if "cv" in m else "")
    log.info("hog-svm (%d-d HOG at %d px, C=%g): %stest accuracy %.4f, macro F1 %.4f (%.1fs)", m["features"]["dim"],
             size, C, scored, m["test"]["accuracy"], m["test"]["macro_f1"], m["timing"]["total_s"])
    return Run(run_dir=run_dir, metrics=m, history=[], config=config, classes=classes, model=None)  # type: ignore[arg-type]


def _scores(x: np.ndarray, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(x) @ w.T + b


#: C values of ``hog-svm --cv`` (standardised HOG, so C scales with ~1/dimensions): the single split's grid
#: starts at 0.001 and chose it (its smallest) on Fashion-MNIST; on flowers17 (8100-d HOG at 128 px) 5-fold CV
#: accuracy rose as C fell from 0.03 (0.338) to 0.0001 (0.402), while each decade of C above 0.01 cost ~9x more
#: liblinear iterations (0.1: 1427 iterations, 85 CPU s for one fit on 816 images). As C -> 0 the SVM tends to
#: a fixed direction (the classes' summed standardised features), so the grid reaches down to that plateau.
HOG_CV_GRID = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def svm_path(x: np.ndarray, labels: np.ndarray, rows: np.ndarray, *, grid: tuple[float, ...], num_classes: int,
             seed: int = 0) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """The linear SVM of the linear probe's ``svm`` classifier (scikit-learn's LinearSVC: squared hinge, one
    vs rest, liblinear's regularised bias; standardised on ``rows``) at every C of ``grid``, as heads with the
    standardisation folded in. With fewer rows than features (HOG: 8100-d) each fit runs in the span of
    the training rows (features = the rows of ``U S`` from the Gram matrix ``X X^T = U S^2 U^T``), which
    gives the same solution (the optimum is a combination of the training rows) at a fraction of the cost.

    Example:
        >>> x, y = np.random.default_rng(0).normal(size=(12, 40)), np.repeat(np.arange(3), 4)
        >>> x[:, 0] += 3 * y
        >>> w, b = svm_path(x, y, np.arange(12), grid=(1.0,), num_classes=3)[1.0]
        >>> bool((torch.from_numpy(x).float() @ w.T + b).argmax(1).eq(torch.from_numpy(y)).all())
        True
    """
    import warnings
    from types import SimpleNamespace

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from transferlab.strategies.linear_probe import _as_head, one_blas_thread

    y = labels[rows]
    scaler = StandardScaler().fit(x[rows])
    xa = np.hstack([scaler.transform(x[rows]), np.ones((len(rows), 1))])  # liblinear's bias: a constant feature
    if xa.shape[0] < xa.shape[1]:
        evals, u = np.linalg.eigh(xa @ xa.T)
        keep = evals > evals.max() * 1e-10
        s = np.sqrt(evals[keep])
        z, back = u[:, keep] * s, (u[:, keep] / s).T @ xa  # w = a @ back for a fitted on z
    else:
        z, back = xa, np.eye(xa.shape[1])
    heads = {}
    for C in grid:
        clf = LinearSVC(C=C, fit_intercept=False, max_iter=20000, random_state=seed)
        with warnings.catch_warnings(), one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z, y)
        w = clf.coef_ @ back
        heads[C] = _as_head(SimpleNamespace(coef_=w[:, :-1], intercept_=w[:, -1], classes_=clf.classes_), scaler,
                            num_classes)
    return heads


def _hog_cv(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, k: int, classes: list[str], seed: int,
            split_seed: int, ensemble: bool, run_dir: Path | None
            ) -> tuple[dict[str, Any], torch.Tensor, float, dict[str, Any]]:
    """``--cv K`` of hog-svm: the linear SVM's C (:data:`HOG_CV_GRID`) chosen by K stratified folds of
    train+val (the test split in none; the folds of a ``--cv`` linear probe, :mod:`transferlab.experiments.cv`).
    Returns the out-of-fold val metrics, the final test scores (refit on the pool, or the fold SVMs'
    averaged probabilities), C and the run's ``cv``/``probe`` metrics."""
    from transferlab.experiments.cv import check_cv, cv_path, head_probs, stratified_folds

    x = np.vstack([feats["train"], feats["val"]])
    y = np.concatenate([labels["train"], labels["val"]]).astype(np.int64)
    nc = len(classes)
    folds = stratified_folds(y, k=check_cv(k, y, classes), seed=split_seed)
    log.info("hog-svm --cv %d: pool %d non-test images (train %d + val %d) in folds of %d-%d; test %d untouched",
             k, len(y), len(feats["train"]), len(feats["val"]), min(map(len, folds)), max(map(len, folds)),
             len(feats["test"]))
    score = cv_path(lambda rows: svm_path(x, y, rows, grid=HOG_CV_GRID, num_classes=nc, seed=seed), x, y, folds,
                    grid=HOG_CV_GRID, num_classes=nc)
    pool = np.arange(len(y))
    parts = [np.setdiff1d(pool, f) for f in folds] if ensemble else [pool]
    heads = [svm_path(x, y, rows, grid=(score.C,), num_classes=nc, seed=seed)[score.C] for rows in parts]
    test = feats["test"]
    probs = np.mean([head_probs([test], np.arange(len(test)), h) for h in heads], axis=0)
    test_logits = torch.tensor(np.log(np.clip(probs, 1e-12, None)), dtype=torch.float32)
    oof = torch.tensor(np.log(np.clip(score.oof, 1e-12, None)), dtype=torch.float32)
    val_m = {**classification_metrics(oof, y, classes=classes,
                                      loss=float(torch.nn.functional.nll_loss(oof, torch.as_tensor(y)))),
             "what": f"out-of-fold predictions of {k}-fold CV over the {len(y)} non-test images"}
    summary = score.summary()
    record = {"k": k, "fold_sizes": [int(len(f)) for f in folds], "pool": int(len(y)), "test": int(len(test)),
              **summary, "final": f"the {k} fold SVMs' probabilities averaged (--ensemble)" if ensemble else
              f"refit on all {len(y)} non-test images at the chosen C"}
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "cv.json", json.dumps(record, indent=2))
    extra = {"cv": {"k": k, **{key: v for key, v in summary.items() if key.startswith("cv_")}},
             "probe": {"classifier": "svm", "C": score.C, "refit_on": record["final"],
                       "cv_accuracy_by_C": summary["cv_accuracy_by_C"]}}
    return val_m, test_logits, score.C, extra
