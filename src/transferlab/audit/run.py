"""``transferlab audit``: label issues, duplicates, leakage, outliers, image quality, class balance.

Example:
    >>> from transferlab.audit import AuditOptions, run_audit
    >>> res = run_audit("flowers17/", out="audit", options=AuditOptions())  # doctest: +SKIP
    >>> res["counts"]["label"]  # doctest: +SKIP
    12
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.audit.duplicates import (
    COPY_KINDS,
    HASH_COPY_KINDS,
    NearRule,
    Pair,
    bits_of,
    calibrate_phash,
    calibrate_threshold,
    hamming,
    cross_split_pairs,
    exact_pairs,
    near_copy,
    near_pairs,
    nearest_other,
    normalize_rows,
)
from transferlab.audit.features import Embedder, embed_split
from transferlab.audit.labels import find_label_issues
from transferlab.audit.outliers import find_outliers
from transferlab.audit.quality import copy_phash_distances, measure_source, quality_issues
from transferlab.data import ImageSource, Split, atomic_write_text, make_split, open_dataset, parse_fractions
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError, DataError
from transferlab.options import opt

log = logging.getLogger("transferlab")
AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"
KINDS = ("label", "duplicate", "near_duplicate", "leakage", "outlier", "quality")


@dataclass(frozen=True)
class AuditOptions:
    """What ``transferlab audit`` measures and how."""

    backbone: str = opt("efficientnet_lite0", "backbone whose pooled pretrained features are the embeddings")
    weights: str | None = opt(None, "explicit weights file (.pth/.safetensors) for the backbone")
    split: str = opt("0.5,0.25,0.25", "train,val,test fractions of the split `train` would use (for leakage)")
    split_seed: int = opt(0, "seed of that split")
    folds: int = opt(5, "K of the K-fold out-of-fold probabilities")
    C: float = opt(10.0, "inverse regularisation of the out-of-fold logistic regression (L2-normalised features)",
                   flag="--C")
    near_threshold: float | None = opt(None, "cosine similarity above which two images are near-duplicates "
                                             "(default: calibrated on the data, with a perceptual-hash "
                                             "threshold; given, only the cosine is used)")
    calibration_images: int = opt(60, "images copied (downscaled, re-encoded, cropped) to calibrate the threshold")
    outlier_k: int = opt(10, "neighbours of the kNN outlier score")
    seed: int = opt(0, "seed of the folds and the calibration sample")
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    workers: int = opt(0, "DataLoader worker processes for image decoding")
    feature_cache: str = opt("auto", "on-disk cache of pretrained activations: auto, off, or a folder")
    feature_cache_gb: float = opt(20.0, "size limit of the on-disk feature cache")
    quiet: bool = opt(False, "no progress bars")


def feature_cache_of(setting: str, gb: float) -> FeatureCache | None:
    if setting == "off":
        return None
    return FeatureCache(None if setting == "auto" else Path(setting), max_bytes=int(gb * (1 << 30)))


def _split_of(source: ImageSource, o: AuditOptions) -> Split:
    return make_split(source, fractions=parse_fractions(o.split, option="--split"), seed=o.split_seed)


def calibrated_threshold(embedder: Embedder, source: ImageSource, rows_idx: np.ndarray, xn: np.ndarray,
                         hashes: list[str], *, sample: int, seed: int, phashes: list[str] | None = None,
                         cache: FeatureCache | None = None) -> dict[str, Any]:
    """Embed (and, with ``phashes``, perceptually hash) near-copies of ``sample`` images and place the
    thresholds (see ``duplicates``); ``value`` is the cosine one."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows_idx), size=min(sample, len(rows_idx)), replace=False))
    copy_sims = []
    for k, kind in enumerate(COPY_KINDS):
        rows = pick[k :: len(COPY_KINDS)]
        if not len(rows):
            continue
        inp = embedder.inputs(f"audit-copies-{kind}", source, rows_idx[rows],
                              view=lambda im, kind=kind: near_copy(im, kind), tag=f"#audit-copy-{kind}")
        copies = normalize_rows(embedder.embed_inputs(inp))
        copy_sims.append((copies * xn[rows]).sum(1))
    sims = np.concatenate(copy_sims)
    groups = {h: g for g, h in enumerate(dict.fromkeys(hashes))}
    gid = np.asarray([groups[h] for h in hashes])
    _, nn = nearest_other(xn, exclude=gid)
    value = calibrate_threshold(sims, nn)
    floor = round(float(np.median(nn[np.isfinite(nn)])), 4) if np.isfinite(nn).any() else None
    out: dict[str, Any] = {
        "value": value, "copies": len(sims), "copies_min": round(float(sims.min()), 4),
        "copies_q02": round(float(np.quantile(sims, 0.02)), 4), "data_nn_median": floor,
        "rule": "max(2nd percentile of known-copy similarity, median nearest-neighbour similarity)"}
    if phashes is not None and floor is not None:
        dist = copy_phash_distances(source, rows_idx[pick], [phashes[r] for r in pick], cache=cache)
        nn_d = _nearest_phash(bits_of(phashes), gid)
        out["phash"] = {
            "value": calibrate_phash(dist.ravel(), nn_d), "floor": floor, "copies": int(dist.size),
            "copies_max": int(dist.max()), "copies_q98": int(np.quantile(dist, 0.98, method="higher")),
            "copies_by_kind_max": {k: int(v) for k, v in zip(HASH_COPY_KINDS, dist.max(0))},
            "data_nn_median": float(np.median(nn_d)),
            "rule": "perceptual-hash distance <= min(98th percentile of known copies (half size, JPEG 40, 4 % crop, "
                    "all three), median - 2 robust sd of the nearest-neighbour distances) and cosine >= the median "
                    "nearest-neighbour similarity"}
    return out


def _nearest_phash(bits: np.ndarray, gid: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Each row's smallest perceptual-hash distance to a row with other pixels."""
    out = np.empty(len(bits), np.float32)
    for a in range(0, len(bits), chunk):
        rows = np.arange(a, min(a + chunk, len(bits)))
        d = hamming(bits[rows], bits)
        d[gid[rows][:, None] == gid[None, :]] = np.inf
        out[rows] = d.min(1)
    return out


def near_rule(thr: dict[str, Any]) -> NearRule:
    """The :class:`NearRule` of a ``near_duplicate_threshold`` document."""
    ph = thr.get("phash")
    return NearRule(embedding=float(thr["value"]), phash=-1 if ph is None else int(ph["value"]),
                    floor=1.0 if ph is None else float(ph["floor"]))


def _pair_finding(kind: str, p: Pair, ids: list[str], names: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "path": ids[p.i], "score": round(p.score, 4), "other": ids[p.j],
            "split": str(names[p.i]), "other_split": str(names[p.j]), **extra}


def _label_findings(x: np.ndarray, y: np.ndarray, ids: list[str], names: np.ndarray, classes: list[str],
                    o: AuditOptions) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    li = find_label_issues(x, y, num_classes=len(classes), folds=o.folds, C=o.C, seed=o.seed)
    out = []
    for r, sev, sug in zip(li.indices, li.severity, li.suggested):
        top = np.argsort(-li.probs[r])[:3]
        out.append({"kind": "label", "path": ids[r], "score": round(float(sev), 4), "given": classes[y[r]],
                    "suggested": classes[int(sug)], "split": str(names[r]),
                    "probabilities": {classes[c]: round(float(li.probs[r, c]), 4) for c in top}})
    oof_acc = float((li.probs.argmax(1) == y).mean())
    return out, {"folds": li.folds, "C": o.C, "out_of_fold_accuracy": round(oof_acc, 4)}


def _balance(source: ImageSource, split: Split) -> dict[str, Any]:
    per_split = {name: {c: int(n) for c, n in zip(source.classes, source.class_counts(getattr(split, name)))}
                 for name in ("train", "val", "test")}
    total = source.class_counts()
    return {"per_class": {c: int(n) for c, n in zip(source.classes, total)}, "per_split": per_split,
            "imbalance_ratio": round(float(total.max() / max(total.min(), 1)), 3)}


class _Stages:
    """Wall seconds per stage of the audit, for the log and ``audit.json`` ``timing``."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[f"{stage}_s"] = round(self.seconds.get(f"{stage}_s", 0.0) + now - self.last, 2)
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total_s": round(time.perf_counter() - self.t0, 2)}


def audit_source(source: ImageSource, *, options: AuditOptions, split: Split | None = None) -> dict[str, Any]:
    """Every check on an opened source; returns the ``audit.json`` document."""
    from threadpoolctl import threadpool_limits

    o = options
    if len(source.classes) < 2:
        raise DataError(f"{source.root}: only one class ({', '.join(source.classes) or 'none'}); "
                        "audit needs at least 2 classes")
    st = _Stages()
    split = split if split is not None else _split_of(source, o)
    cache = feature_cache_of(o.feature_cache, o.feature_cache_gb)
    embedder = Embedder.create(o.backbone, source=source, norm_indices=split.train, weights=o.weights, cache=cache,
                               device=o.device, workers=o.workers, progress=not o.quiet)
    x, rows_idx, names = embed_split(embedder, source, split)
    st.done("embed")
    ids = [source.identity(int(i)) for i in rows_idx]
    y = source.labels[rows_idx]
    stats, pixels_cached = measure_source(source, rows_idx, cache=cache)
    if pixels_cached:
        log.info("pixel hashes and quality measurements of %d images from the feature cache (no decoding)", len(stats))
    hashes = [s.hash for s in stats]
    st.done("pixels")
    # one BLAS thread: on 2 cores OpenBLAS's threads make each small L-BFGS step of the K-fold
    # logistic regressions ~20x slower (3.2 s against 0.14 s for one fit of 1088 x 1280, 17 classes)
    with threadpool_limits(limits=1, user_api="blas"):
        findings, thr, label_info = _analyse(embedder, source, o, x=x, y=y, rows_idx=rows_idx, ids=ids, names=names,
                                             stats=stats, hashes=hashes, stages=st)
    counts = {k: sum(1 for f in findings if f["kind"] == k) for k in KINDS}
    disk = embedder.store.disk
    return {
        "data": source.root, "n_images": len(source), "classes": list(source.classes), "backbone": o.backbone,
        "split": {"fractions": o.split, "split_seed": o.split_seed, "sizes": split.sizes()},
        "near_duplicate_threshold": thr, "labels": label_info, "counts": counts, "balance": _balance(source, split),
        "feature_cache": None if disk is None else {"root": str(disk.root), "hits": disk.hits, "misses": disk.misses},
        "forward_images": embedder.store.forward_images,
        "pixels_from_cache": pixels_cached,
        "timing": st.total(),
        "options": asdict(o), "findings": findings,
    }


def _analyse(embedder: Embedder, source: ImageSource, o: AuditOptions, *, x: np.ndarray, y: np.ndarray,
             rows_idx: np.ndarray, ids: list[str], names: np.ndarray, stats: list[Any], hashes: list[str],
             stages: _Stages) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(findings sorted by kind then score, the near-duplicate threshold, the out-of-fold summary)."""
    xn = normalize_rows(x)
    if o.near_threshold is not None:
        if not 0.0 < o.near_threshold <= 1.0:
            raise ConfigError(f"--near-threshold must be in (0, 1], got {o.near_threshold}")
        thr: dict[str, Any] = {"value": float(o.near_threshold), "rule": "given by --near-threshold"}
    else:
        thr = calibrated_threshold(embedder, source, rows_idx, xn, hashes, sample=o.calibration_images, seed=o.seed,
                                   phashes=[s.phash for s in stats], cache=embedder.store.disk)
    stages.done("calibration")
    rule = near_rule(thr)
    bits = bits_of([s.phash for s in stats])
    findings, label_info = _label_findings(x, y, ids, names, list(source.classes), o)
    stages.done("labels")
    findings += [_pair_finding("duplicate", p, ids, names) for p in exact_pairs(hashes)]
    findings += [_pair_finding("near_duplicate", p, ids, names, phash_distance=p.phash)
                 for p in near_pairs(xn, rule=rule, hashes=hashes, bits=bits)]
    findings += [_pair_finding("leakage", p, ids, names, match="exact" if p.exact else "near", matches=n,
                               phash_distance=p.phash)
                 for p, n in cross_split_pairs(xn, names, rule=rule, hashes=hashes, bits=bits)]
    stages.done("duplicates")
    flagged, knn, own = find_outliers(xn, y, k=o.outlier_k)
    findings += [{"kind": "outlier", "path": ids[r], "score": round(float(s), 4), "class": source.classes[y[r]],
                  "centroid_distance": round(float(d), 4), "split": str(names[r])}
                 for r, s, d in zip(flagged, knn, own)]
    colour_set = np.mean([not s.grayscale for s in stats]) >= 0.5
    for r, s in enumerate(stats):
        for issue, score, what in quality_issues(s, colour_set=bool(colour_set)):
            findings.append({"kind": "quality", "path": ids[r], "score": score, "issue": issue, "measured": what,
                             "split": str(names[r])})
    stages.done("outliers_quality")
    findings.sort(key=lambda f: (KINDS.index(f["kind"]), -f["score"]))
    return findings, thr, label_info


def run_audit(data: str, *, out: str | os.PathLike[str], options: AuditOptions | None = None,
              source: ImageSource | None = None) -> dict[str, Any]:
    """Audit DATA and write ``out/audit.json`` and ``out/audit.html``; returns the JSON document."""
    from transferlab.audit.html import write_html

    o = options or AuditOptions()
    src = source if source is not None else open_dataset(data, quiet=o.quiet)
    res = audit_source(src, options=o)
    res["data"] = str(data)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_html = time.perf_counter()
    write_html(res, src, out_dir / AUDIT_HTML)
    res["timing"]["html_s"] = round(time.perf_counter() - t_html, 2)
    res["timing"]["total_s"] = round(res["timing"]["total_s"] + res["timing"]["html_s"], 2)
    atomic_write_text(out_dir / AUDIT_JSON, json.dumps(res, indent=2))
    c = res["counts"]
    thr = res["near_duplicate_threshold"]
    ph = f" or perceptual-hash distance <= {thr['phash']['value']}" if "phash" in thr else ""
    log.info("audit of %s (%d images): %s; near-duplicates: cosine >= %.4f%s; features: %d images through the "
             "backbone (%s)", data, res["n_images"], ", ".join(f"{c[k]} {k}" for k in KINDS),
             thr["value"], ph, res["forward_images"],
             "feature cache " + ("hit" if res["forward_images"] == 0 else "filled") if res["feature_cache"] else "no cache")
    log.info("audit timing: %s", ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in res["timing"].items()))
    return res


def parse_drop(text: str) -> set[str]:
    """``--drop label,duplicate`` as a set of kinds; an unknown kind is an error.

    Example:
        >>> sorted(parse_drop("label, near_duplicate"))
        ['label', 'near_duplicate']
    """
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"--drop expects kinds from {', '.join(KINDS)}, got {text!r}")
    return kinds


def write_clean(audit: dict[str, Any], source: ImageSource, path: str | os.PathLike[str], *,
                drop: set[str]) -> dict[str, int]:
    """A ``path,label`` CSV of ``source`` without the images of the ``drop`` kinds of findings.

    Pair findings drop their ``path`` (the later image of the pair) and keep ``other``. The user's
    files are never touched: the CSV lists absolute paths. Returns ``{"kept", "dropped"}``.
    """
    import csv
    import io

    if source.in_memory:
        raise ConfigError(f"--write-clean needs image files; {source.name} is an in-memory data set")
    dropped = {f["path"] for f in audit["findings"] if f["kind"] in drop}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    keep = np.asarray([source.identity(i) not in dropped for i in range(len(source))], dtype=bool)
    for i in np.flatnonzero(keep):
        w.writerow([source.identity(int(i)), source.classes[source.labels[i]]])
    kept = int(keep.sum())
    emptied = [c for c, n in zip(source.classes, source.class_counts(np.flatnonzero(keep))) if n == 0]
    if emptied:
        raise DataError(f"--drop {','.join(sorted(drop))} would remove every image of class(es) {emptied}; "
                        "expected at least one image per class left")
    atomic_write_text(Path(path), buf.getvalue())
    log.info("%s: %d images kept, %d dropped (%s); no file of %s was moved or changed", path, kept,
             len(source) - kept, ",".join(sorted(drop)), source.root)
    return {"kept": kept, "dropped": len(source) - kept}
