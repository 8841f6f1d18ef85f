"""``transferlab probe-layers``: how linearly separable the target classes are after each stage.

Every image goes once through the pretrained featurizer; the output of every stage is globally
average-pooled on the way (one forward pass per image for all stages, per resolution). A linear
classifier (StandardScaler + logistic regression, C chosen on the validation split, then refit on
train+val, as the ``linear-probe`` strategy) is fitted per stage. ``DIR/probe.json`` holds, shallow
to deep, ``{"name", "width", "val_accuracy", "test_accuracy", "seconds"}`` per stage; ``DIR/probe.png``
plots accuracy against depth. With ``--cv K`` each stage's probe is scored by stratified K-fold CV
over train+val instead (``cv_mean``, ``cv_std``, ``fold_accuracy`` in place of ``val_accuracy``; error
bars in the plot) from the same features, computed once for all folds.

The recommendation rule (:func:`transfer_point`, :func:`advice_from_probe`): the stages up to the
point where validation probing accuracy stops rising (or starts to fall) are general for this
data; that point is the suggested cut / frozen prefix, and the stages above it are the ones to
retrain or fine-tune.

Example:
    >>> from transferlab.experiments.probe import probe_layers
    >>> res = probe_layers("flowers17/", out="probe", options=ProbeOptions(backbone="mobilenet_v2"))
    ... # doctest: +SKIP
    >>> res["advice"]["cut"]  # doctest: +SKIP
    9
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferlab.data import (
    ImageDataset,
    ImageSource,
    Split,
    atomic_write_bytes,
    atomic_write_text,
    build_transform,
    compute_norm_stats,
    make_split,
    open_dataset,
    parse_fractions,
)
from transferlab.engine import init_distributed
from transferlab.errors import ConfigError
from transferlab.options import DataOptions, opt
from transferlab.progress import bar
from transferlab.strategies import fit_linear_probe
from transferlab.zoo import create_backbone

log = logging.getLogger("transferlab")
PROBE_JSON = "probe.json"
PROBE_PNG = "probe.png"


@dataclass(frozen=True)
class ProbeOptions:
    """What ``probe-layers`` probes and how (the data flags are :class:`DataOptions`)."""

    backbone: str = opt("efficientnet_lite0", "backbone from the zoo (see `transferlab models`)")
    weights: str | None = opt(None, "explicit weights file (.pth/.safetensors) for the backbone")
    resolutions: str | None = opt(None, "input resolutions to probe, comma-separated (e.g. 160,224); "
                                        "default: the backbone's own")
    classifier: str = opt("logreg", "linear classifier per stage", choices=("logreg", "svm"))
    batch_size: int = opt(32, "images per forward batch")
    tolerance: float = opt(0.01, "recommendation: a stage within this of the best val accuracy counts as "
                                 "the plateau")
    feature_cache: str = opt("auto", "on-disk feature cache shared with train/compare (pooled per-stage features "
                                     "are kept there): auto ($TRANSFERLAB_CACHE/features), off, or a folder")
    cv: int | None = opt(None, "K >= 2: score each stage's probe by stratified K-fold cross-validation over the "
                               "non-test pool (train+val; mean ± std across folds, C chosen by it; the advice uses "
                               "the CV means; test scored once by the probe refit on the pool); features per stage "
                               "are computed once for all folds")


# ----------------------------------------------------------------------------- the rule

@dataclass(frozen=True)
class LayerAdvice:
    """Where the featurizer stops being general for the target data, from probing accuracies.

    ``point`` (1-based) is the deepest stage still worth keeping frozen: stages ``1..point`` form the
    suggested frozen prefix (or the cut, ``cut == point``); the ``unfreeze = L - point`` stages above
    it are the specific ones to fine-tune (0: only a new head, i.e. feature extraction).
    """

    point: int
    stage: str
    cut: int
    unfreeze: int
    best_stage: str
    best_accuracy: float
    falls_after: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer_point(accuracies: Sequence[float], *, tolerance: float = 0.01) -> int:
    """The 1-based stage where probing accuracy stops rising or falls.

    The rule: the shallowest stage whose accuracy is within ``tolerance`` (absolute) of the best
    accuracy of any stage. Rising to the end gives the last stage; a plateau gives its first stage
    (deeper stages add nothing measurable); a peak followed by a fall gives the peak (or the start of
    the plateau before it). Use validation accuracies, never test ones.

    Example:
        >>> transfer_point([0.40, 0.70, 0.90, 0.95])           # still rising: keep everything
        4
        >>> transfer_point([0.40, 0.80, 0.93, 0.935, 0.94])    # stops rising at stage 3
        3
        >>> transfer_point([0.40, 0.85, 0.90, 0.80, 0.70])     # peaks at stage 3, then falls
        3
    """
    acc = [float(a) for a in accuracies]
    if not acc:
        raise ConfigError("transfer_point: expected at least one stage accuracy, got none")
    if not all(np.isfinite(a) and 0.0 <= a <= 1.0 for a in acc):
        raise ConfigError(f"transfer_point: expected accuracies in [0, 1], got {acc}")
    if not (np.isfinite(tolerance) and 0.0 <= tolerance < 1.0):
        raise ConfigError(f"--tolerance must be in [0, 1), got {tolerance}")
    best = max(acc)
    return next(i for i, a in enumerate(acc, start=1) if a >= best - tolerance - 1e-12)


def advice_from_probe(stages: Sequence[Mapping[str, Any]], *, tolerance: float = 0.01,
                      key: str = "val_accuracy") -> LayerAdvice:
    """:func:`transfer_point` applied to probe stages (``{"name", "val_accuracy", ...}``, shallow to deep);
    ``key="cv_mean"`` uses the stages' mean cross-validated accuracies (``probe-layers --cv``).

    Example:
        >>> a = advice_from_probe([{"name": "s1", "val_accuracy": 0.5}, {"name": "s2", "val_accuracy": 0.9},
        ...                        {"name": "s3", "val_accuracy": 0.8}])
        >>> a.cut, a.unfreeze, a.falls_after
        (2, 1, True)
    """
    if not stages:
        raise ConfigError("advice_from_probe: expected probe stages, got none")
    names = [str(s["name"]) for s in stages]
    acc = [float(s[key]) for s in stages]
    probing = "validation probing accuracy" if key == "val_accuracy" else "cross-validated probing accuracy"
    point = transfer_point(acc, tolerance=tolerance)
    n = len(acc)
    best_i = int(np.argmax(acc))
    falls = acc[-1] < acc[point - 1] - tolerance  # the deepest stage is measurably worse
    stage = names[point - 1]
    if point == n:
        reason = (f"{probing} still rises at the last stage ({stage}, {acc[-1]:.3f}): "
                  "every stage transfers; keep them all and train a new head (feature extraction)")
    elif falls:
        reason = (f"{probing} peaks at {stage} ({acc[point - 1]:.3f}) and falls after it "
                  f"(to {acc[-1]:.3f} at {names[-1]}): cut at {stage}, or fine-tune the {n - point} stage(s) above")
    else:
        reason = (f"{probing} stops rising at {stage} ({acc[point - 1]:.3f}; best "
                  f"{acc[best_i]:.3f} at {names[best_i]}, tolerance {tolerance}): the {n - point} stage(s) above "
                  "add little; cut there for speed, or fine-tune them")
    return LayerAdvice(point=point, stage=stage, cut=point, unfreeze=n - point, best_stage=names[best_i],
                       best_accuracy=acc[best_i], falls_after=falls, reason=reason)


# ----------------------------------------------------------------------------- features

def parse_resolutions(text: str | Sequence[int] | None, *, default: int) -> list[int]:
    """``"160,224"`` -> ``[160, 224]`` (order kept, duplicates refused); None -> ``[default]``.

    Example:
        >>> parse_resolutions("160, 224", default=224), parse_resolutions(None, default=224)
        ([160, 224], [224])
    """
    if text is None:
        return [default]
    parts = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--resolutions must be comma-separated integers (e.g. 160,224), got {text!r}") from None
    if not values or any(v < 16 for v in values):
        raise ConfigError(f"--resolutions must list sizes >= 16 px, got {text!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--resolutions lists a size twice: {text!r}")
    return values


@dataclass
class StageFeatures:
    """Pooled features of every stage for one dataset: ``features[k]`` is (N, width_k)."""

    features: list[np.ndarray]
    labels: np.ndarray
    forward_s: list[float]  # seconds spent in each stage
    images: int  # images pushed through the first stage


def pooled_stage_features(featurizer: nn.Sequential, dataset: Dataset, *, batch_size: int = 32,
                          device: torch.device | None = None, workers: int = 0,
                          progress: str | None = None) -> StageFeatures:
    """One forward pass per image through all stages, each stage's output globally average-pooled.

    Example:
        >>> f = pooled_stage_features(bb.featurizer, dataset)  # doctest: +SKIP
        >>> [x.shape[1] for x in f.features][:2]  # doctest: +SKIP
        [32, 16]
    """
    device = device or torch.device("cpu")
    stages = list(featurizer)
    pooled: list[list[torch.Tensor]] = [[] for _ in stages]
    seconds = [0.0] * len(stages)
    labels: list[torch.Tensor] = []
    images = 0
    loader: Any = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                             generator=torch.Generator())
    if progress:
        loader = bar(loader, desc=progress, unit="batch")
    was_training = featurizer.training
    featurizer.eval()
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            images += len(x)
            labels.append(torch.as_tensor(y))
            for k, stage in enumerate(stages):
                t0 = time.perf_counter()
                x = stage(x)
                seconds[k] += time.perf_counter() - t0
                pooled[k].append(x.float().mean(dim=(2, 3)).cpu())
    featurizer.train(was_training)
    feats = [torch.cat(p).numpy() if p else np.zeros((0, 0), np.float32) for p in pooled]
    y_all = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    return StageFeatures(features=feats, labels=y_all, forward_s=seconds, images=images)


def _cached_stage_features(bb: Any, src: ImageSource, idx: np.ndarray, *, pre: Any, norm: Any, tf: Any,
                           o: ProbeOptions, d: DataOptions, device: torch.device,
                           progress: str | None) -> StageFeatures:
    """:func:`pooled_stage_features`, kept in the feature cache of train/compare (keyed like theirs, plus
    ``pooled``: probe-layers needs every stage's pooled output, which train's boundary entries do not hold)."""
    from transferlab.engine.feature_cache import FeatureCache
    from transferlab.experiments.train import item_keys

    labels = src.labels[idx].astype(np.int64)
    cache = None if o.feature_cache == "off" else FeatureCache(
        None if o.feature_cache == "auto" else Path(o.feature_cache))
    key = None
    if cache is not None and bb.weights.pretrained and bb.weights.sha256:
        fp = {"backbone": bb.name, "weights_sha256": bb.weights.sha256, "preprocessing": pre.to_dict(),
              "normalization": norm.to_dict(), "pooled": "global average of every stage's output"}
        key = cache.key(fingerprint=fp, boundary=len(bb.stage_names), items=item_keys(src, idx))
        widths_file = cache.root / f"{key}.widths.json"
        hit = cache.load(key) if widths_file.is_file() else None
        if hit is not None:
            bounds = np.cumsum([0, *json.loads(widths_file.read_text())])
            cols = hit.numpy()
            log.info("%s %d px: pooled stage features of %d images from the feature cache (no forward pass)",
                     bb.name, pre.input_size, len(idx))
            return StageFeatures(features=[cols[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])], labels=labels,
                                 forward_s=[0.0] * len(bb.stage_names), images=0)
    ds = ImageDataset(src, idx, tf, draft_size=pre.resize_size)
    feats = pooled_stage_features(bb.featurizer, ds, batch_size=o.batch_size, device=device, workers=d.num_workers,
                                  progress=progress)
    if key is not None and cache is not None and len(idx):
        atomic_write_text(cache.root / f"{key}.widths.json", json.dumps([f.shape[1] for f in feats.features]))
        writer = cache.writer(key, n=len(idx), shape=(sum(f.shape[1] for f in feats.features),))
        writer.write(torch.from_numpy(np.concatenate(feats.features, axis=1)))
        writer.commit()
    return feats


def probe_stages(train: StageFeatures, val: StageFeatures, test: StageFeatures, *, names: Sequence[str],
                 num_classes: int, classifier: str = "logreg", seed: int = 0) -> list[dict[str, Any]]:
    """Fit one linear probe per stage; accuracy on val (train-only fit, which chose C) and on test
    (the classifier refit on train+val at that C).

    Example:
        >>> rows = probe_stages(tr, va, te, names=bb.stage_names, num_classes=17)  # doctest: +SKIP
        >>> sorted(rows[0])  # doctest: +SKIP
        ['C', 'fit_s', 'forward_s', 'name', 'seconds', 'test_accuracy', 'val_accuracy', 'width']
    """
    rows = []
    for k, name in enumerate(names):
        t0 = time.perf_counter()
        r = fit_linear_probe(train.features[k], train.labels, val.features[k], val.labels,
                             num_classes=num_classes, classifier=classifier, seed=seed)
        fit_s = time.perf_counter() - t0
        logits = torch.as_tensor(test.features[k]) @ r.weight.T + r.bias
        test_acc = float((logits.argmax(1).numpy() == test.labels).mean()) if len(test.labels) else 0.0
        forward_s = train.forward_s[k] + val.forward_s[k] + test.forward_s[k]
        rows.append({"name": name, "width": int(train.features[k].shape[1]),
                     "val_accuracy": round(r.val_accuracy, 6), "test_accuracy": round(test_acc, 6),
                     "seconds": round(forward_s + fit_s, 3), "forward_s": round(forward_s, 3),
                     "fit_s": round(fit_s, 3), "C": r.C})
    return rows


def probe_stages_cv(train: StageFeatures, val: StageFeatures, test: StageFeatures, *, names: Sequence[str],
                    num_classes: int, k: int, classifier: str = "logreg", seed: int = 0,
                    fold_seed: int = 0) -> list[dict[str, Any]]:
    """One linear probe per stage scored by stratified ``k``-fold CV over train+val (the same folds for
    every stage, seeded by ``fold_seed``; C from the probe's grid by mean CV accuracy), and on test by the
    probe refit on the whole pool at that C. Each stage's features are the ones computed once (no fold
    runs a forward pass).

    Example:
        >>> rows = probe_stages_cv(tr, va, te, names=bb.stage_names, num_classes=17, k=5)  # doctest: +SKIP
        >>> rows[-1]["cv_mean"], rows[-1]["cv_std"]  # doctest: +SKIP
        (0.951, 0.012)
    """
    from transferlab.experiments.cv import cv_linear_probe, fit_head, head_probs, stratified_folds
    from transferlab.strategies.linear_probe import C_GRID

    y = np.concatenate([train.labels, val.labels])
    folds = stratified_folds(y, k=k, seed=fold_seed)
    pool = np.arange(len(y))
    rows = []
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        x = np.vstack([train.features[i], val.features[i]])
        score, _ = cv_linear_probe([x], y, folds, num_classes=num_classes, classifier=classifier, grid=C_GRID,
                                   seed=seed)
        head = fit_head([x], y, pool, C=score.C, num_classes=num_classes, classifier=classifier, seed=seed)
        probs = head_probs([test.features[i]], np.arange(len(test.labels)), head)
        test_acc = float((probs.argmax(1) == test.labels).mean()) if len(test.labels) else 0.0
        fit_s = time.perf_counter() - t0
        forward_s = train.forward_s[i] + val.forward_s[i] + test.forward_s[i]
        rows.append({"name": name, "width": int(x.shape[1]), "cv_mean": round(score.mean, 6),
                     "cv_std": round(score.std, 6), "cv_loss_mean": round(score.loss_mean, 6),
                     "fold_accuracy": [round(a, 6) for a in score.fold_accuracy],
                     "test_accuracy": round(test_acc, 6), "seconds": round(forward_s + fit_s, 3),
                     "forward_s": round(forward_s, 3), "fit_s": round(fit_s, 3), "C": score.C})
    return rows


# ----------------------------------------------------------------------------- the command

def probe_layers(data: str, *, out: str | os.PathLike[str], options: ProbeOptions | None = None,
                 data_options: DataOptions | None = None, source: ImageSource | None = None,
                 split: Split | None = None) -> dict[str, Any]:
    """Probe every stage of ``options.backbone`` on ``data``; write ``out/probe.json`` and ``out/probe.png``.

    ``stages`` (top level) is the first resolution's table; ``resolutions`` holds every resolution's.
    ``source``/``split`` reuse an opened dataset and a split (``data`` is then only recorded).

    Example:
        >>> res = probe_layers("flowers17/", out="probe", options=ProbeOptions(resolutions="160,224"))
        ... # doctest: +SKIP
        >>> [r["resolution"] for r in res["resolutions"]]  # doctest: +SKIP
        [160, 224]
    """
    o = options or ProbeOptions()
    d = data_options or DataOptions()
    if o.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {o.batch_size}")
    if not 0.0 <= o.tolerance < 1.0:
        raise ConfigError(f"--tolerance must be in [0, 1), got {o.tolerance}")
    from transferlab.experiments.train import setup_logging, versions

    setup_logging(quiet=d.quiet)
    t_start = time.perf_counter()
    ctx = init_distributed(d.device)
    bb = create_backbone(o.backbone, pretrained=True, weights=o.weights)
    sizes = parse_resolutions(o.resolutions, default=bb.preprocessing.input_size)
    src = source if source is not None else open_dataset(data, quiet=d.quiet)
    sp = split if split is not None else make_split(
        src, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed,
        train_per_class=d.train_per_class)
    if o.cv is not None:  # before any forward pass
        from transferlab.experiments.cv import check_cv

        check_cv(o.cv, src.labels[np.concatenate([sp.train, sp.val])], list(src.classes))
        log.info("probe-layers --cv %d: %d non-test images (train %d + val %d) in %d stratified folds; test %d "
                 "scored once per stage by the probe refit on them", o.cv, len(sp.train) + len(sp.val),
                 len(sp.train), len(sp.val), o.cv, len(sp.test))
    bb = bb.to(ctx.device).to(memory_format=torch.channels_last)
    names = bb.stage_names
    results = []
    images = 0
    for size in sizes:
        pre = bb.preprocessing.with_input_size(size)
        norm = compute_norm_stats(d.normalize, source=src, indices=sp.train, preprocessing=pre)
        tf = build_transform(pre, norm=norm)
        feats = {}
        t0 = time.perf_counter()
        for part in ("train", "val", "test"):
            feats[part] = _cached_stage_features(bb, src, getattr(sp, part), pre=pre, norm=norm, tf=tf, o=o, d=d,
                                                 device=ctx.device, progress=None if d.quiet else f"{size}px {part}")
            images += feats[part].images
        extract_s = time.perf_counter() - t0
        if o.cv is None:
            rows = probe_stages(feats["train"], feats["val"], feats["test"], names=names,
                                num_classes=len(src.classes), classifier=o.classifier, seed=d.seed)
        else:
            rows = probe_stages_cv(feats["train"], feats["val"], feats["test"], names=names,
                                   num_classes=len(src.classes), k=o.cv, classifier=o.classifier, seed=d.seed,
                                   fold_seed=d.split_seed)
        advice = advice_from_probe(rows, tolerance=o.tolerance, key="val_accuracy" if o.cv is None else "cv_mean")
        results.append({"resolution": size, "stages": rows, "extract_s": round(extract_s, 3),
                        "advice": advice.to_dict()})
        log.info("%s at %d px: %s", o.backbone, size, advice.reason)
    first = results[0]
    out_dir = Path(out)
    report: dict[str, Any] = {
        "data": str(data), "backbone": o.backbone, "weights": bb.weights.source,
        "resolution": first["resolution"], "stages": first["stages"], "advice": first["advice"],
        "resolutions": results,
        "rule": f"advice.point = the shallowest stage whose {'validation' if o.cv is None else 'mean CV'} probing "
                f"accuracy is within {o.tolerance} of the best stage's (where accuracy stops rising or falls); "
                "cut = point, unfreeze = stages above it",
        "pooling": "global average pooling of each stage's output, one forward pass per image",
        "classifier": {"kind": o.classifier, "C": "chosen on val from the train-only fit; test uses the refit "
                                                   "on train+val" if o.cv is None else
                       f"chosen by mean {o.cv}-fold CV accuracy over train+val (the same folds for every stage, "
                       f"seeded by the split seed); test uses the refit on train+val"},
        "cv": None if o.cv is None else {"k": o.cv, "pool": int(len(sp.train) + len(sp.val)),
                                         "fold_seed": d.split_seed},
        "split": {"fractions": d.split, "split_seed": d.split_seed, "train_per_class": d.train_per_class,
                  "sizes": sp.sizes()},
        "classes": list(src.classes), "forward_images": images,
        "options": asdict(o), "data_options": asdict(d),
        "timing": {"total_s": round(time.perf_counter() - t_start, 3)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "versions": versions()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / PROBE_JSON, json.dumps(report, indent=2))
    atomic_write_bytes(out_dir / PROBE_PNG, probe_figure_png(report))
    return report


def probe_figure_png(report: Mapping[str, Any]) -> bytes:
    """Accuracy vs depth (val dashed, test solid; one colour per resolution), the advice point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["name"] for s in report["stages"]]
    x = np.arange(1, len(names) + 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 3.6))
    k = (report.get("cv") or {}).get("k")
    for i, res in enumerate(report["resolutions"]):
        colour = f"C{i}"
        ax.plot(x, [s["test_accuracy"] for s in res["stages"]], "-o", color=colour, ms=4,
                label=f"test, {res['resolution']} px")
        if k:
            ax.errorbar(x, [s["cv_mean"] for s in res["stages"]], yerr=[s["cv_std"] for s in res["stages"]],
                        fmt="--s", color=colour, ms=3, alpha=0.7, capsize=3,
                        label=f"{k}-fold CV mean ± fold std, {res['resolution']} px")
        else:
            ax.plot(x, [s["val_accuracy"] for s in res["stages"]], "--s", color=colour, ms=3, alpha=0.7,
                    label=f"val, {res['resolution']} px")
    point = report["advice"]["point"]
    ax.axvline(point, color="#888", ls=":", lw=1)
    ax.text(point, 0.02, f" advice: {report['advice']['stage']}", fontsize=7, color="#555", rotation=90,
            va="bottom")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{k}\n{n}" for k, n in zip(x, names)], fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("stage (shallow -> deep)")
    ax.set_ylabel("linear-probe accuracy")
    ax.set_title(f"{report['backbone']} on {Path(str(report['data'])).name}: which layers transfer", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def format_probe_table(report: Mapping[str, Any]) -> str:
    """A Markdown table of every resolution's stages (what the CLI prints and the README shows); with
    ``--cv`` the val column is the CV mean ± std across folds.

    Example:
        >>> print(format_probe_table({"resolutions": [{"resolution": 32, "stages": [{"name": "s1", "width": 8,
        ...     "val_accuracy": 0.5, "test_accuracy": 0.25, "seconds": 1.0}]}]}))
        | px | k | stage | width | val acc | test acc | seconds |
        |---:|---:|---|---:|---:|---:|---:|
        | 32 | 1 | s1 | 8 | 0.500 | 0.250 | 1.0 |
    """
    k = (report.get("cv") or {}).get("k")
    lines = [f"| px | k | stage | width | {f'{k}-fold CV acc' if k else 'val acc'} | test acc | seconds |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for res in report["resolutions"]:
        for i, s in enumerate(res["stages"], start=1):
            score = f"{s['cv_mean']:.3f} ± {s['cv_std']:.3f}" if k else f"{s['val_accuracy']:.3f}"
            lines.append(f"| {res['resolution']} | {i} | {s['name']} | {s['width']} | {score} | "
                         f"{s['test_accuracy']:.3f} | {s['seconds']:.1f} |")
    return "\n".join(lines)
