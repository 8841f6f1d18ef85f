"""Which backbone: LogME ranking under latency / parameter budgets, latency measured here, and
``compare --backbones`` (backbones x strategies on one split).

* :func:`rank_backbones`: one forward pass per backbone over the training images (pooled features of
  the full network, through the same activation store and on-disk feature cache as ``train``, so a
  later linear probe or fine-tune reuses them), scored by LogME (:mod:`transferlab.engine.logme`).
* :func:`latency_table`: milliseconds per forward pass at batch 1 and batch 32 of the whole network
  at its input size on this machine, measured once per backbone and machine and kept in
  ``$TRANSFERLAB_CACHE/latency.json`` with the machine's description and load at measurement time.
* :func:`probe_cv` / :func:`cv_ranking` (``recommend --cv K``): each ranked backbone's linear probe
  scored by K-fold CV over the non-test pool on the same cached pooled features, and the Kendall tau
  between the LogME and the CV rankings.
* :func:`compare_backbones`: one ``compare`` per backbone on the same dataset object and the same
  seeded split (with ``--cv`` the same folds, seeded by the split seed), merged into one
  ``results.json`` whose entries are ``STRATEGY@BACKBONE`` and whose run rows name their ``backbone``.
  A strategy that does not use the backbone (``hog-svm``, ``scratch:backbone=...``) runs once.
  Every backbone's entries (and ``--cv``) are checked before any run or latency measurement.

Example:
    >>> from transferlab.experiments.backbones import parse_backbones
    >>> parse_backbones("mobilenet_v2, efficientnet_lite0")
    ['mobilenet_v2', 'efficientnet_lite0']
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageDataset, ImageSource, atomic_write_text, build_transform, compute_norm_stats
from transferlab.engine import ActivationStore, SplitInputs, init_distributed
from transferlab.engine.feature_cache import default_cache_root
from transferlab.engine.logme import logme
from transferlab.errors import ConfigError
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone, get_entry, list_backbones, weights_available

log = logging.getLogger("transferlab")
LATENCY_FILE = "latency.json"
LATENCY_BATCHES = (1, 32)


# ----------------------------------------------------------------------------- which backbones

def backbones_with_weights() -> list[str]:
    """Zoo backbones with ImageNet weights available offline here (and a published top-1).

    Example:
        >>> "efficientnet_lite0" in backbones_with_weights()
        True
    """
    return [n for n in list_backbones() if get_entry(n).top1 is not None and weights_available(n) is not None]


def parse_backbones(text: str | Sequence[str]) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; every entry known and with weights here, none twice.

    Example:
        >>> parse_backbones("vgg16")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --backbones: vgg16 has no ImageNet weights here; ...
    """
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    have = backbones_with_weights()
    if not names:
        raise ConfigError(f"--backbones is empty; expected a comma-separated list of: {', '.join(have)}")
    for n in names:
        if n not in list_backbones():
            raise ConfigError(f"--backbones: unknown backbone {n!r}; those with weights here: {', '.join(have)}")
        if n not in have:
            raise ConfigError(f"--backbones: {n} has no ImageNet weights here; those with weights here: "
                              f"{', '.join(have)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--backbones lists a backbone twice: {','.join(names)}")
    return names


# ----------------------------------------------------------------------------- latency

def machine_key() -> dict[str, Any]:
    """What a latency depends on besides the network: CPU model, cores, torch version, how it is measured."""
    from transferlab.experiments.compare import machine_info

    m = machine_info()
    return {"cpu": m["cpu"], "cpus": m["cpus"], "torch": torch.__version__, "device": "cpu",
            "measure": "CPU time of the fastest pass, 1 thread"}


def measure_latency(name: str, *, batch_sizes: Sequence[int] = LATENCY_BATCHES, repeats: int = 3) -> dict[str, Any]:
    """Ms per forward pass of ``name`` (random weights: the same arithmetic) at its input size, on one
    thread: ``batch_B_ms`` is the CPU time of the fastest of ``repeats`` passes (batch 1: 3x as many)
    after a warm-up, what one idle core would take; on a shared machine wall-clock time measures the
    neighbours, so the fastest wall-clock pass (``batch_B_wall_ms``) is recorded beside it.

    Example:
        >>> measure_latency("small_cnn", batch_sizes=(1,), repeats=2)["batch_1_ms"] > 0
        True
    """
    entry = get_entry(name)
    model = TransferModel(backbone=create_backbone(name, pretrained=False), num_classes=10,
                          head=HeadConfig(dropout=0.0)).eval()
    size = entry.input_size
    out: dict[str, Any] = {"backbone": name, "input_size": size, "params": entry.params, "threads": 1}
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                x = torch.randn(b, 3, size, size).contiguous(memory_format=torch.channels_last)
                model(x)  # warm-up (allocations, kernel selection)
                cpu, wall = [], []
                for _ in range(repeats if b > 1 else 3 * repeats):
                    c0, w0 = time.process_time(), time.perf_counter()
                    model(x)
                    cpu.append((time.process_time() - c0) * 1000)
                    wall.append((time.perf_counter() - w0) * 1000)
                out[f"batch_{b}_ms"] = round(min(cpu), 2)
                out[f"batch_{b}_ms_per_image"] = round(min(cpu) / b, 3)
                out[f"batch_{b}_wall_ms"] = round(min(wall), 2)
    finally:
        torch.set_num_threads(threads)
    out.update(load_avg_1m=round((load + os.getloadavg()[0]) / 2, 2),
               measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return out


def latency_table(names: Sequence[str], *, cache: Path | None = None, refresh: bool = False) -> dict[str, dict[str, Any]]:
    """Latency of each backbone, measured once per machine and kept in ``cache`` (default
    ``$TRANSFERLAB_CACHE/latency.json``); the log says which values come from the file."""
    path = cache if cache is not None else default_cache_root().parent / LATENCY_FILE
    key = machine_key()
    stored: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    entries = [e for e in stored.get("entries", []) if not refresh]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        hit = next((e for e in entries if e["backbone"] == name and e["machine"] == key), None)
        if hit is not None:
            values = ", ".join(f"{v:.1f} ms at batch {k.split('_')[1]}" for k, v in hit.items()
                               if k.startswith("batch_") and k.endswith("_ms") and not k.endswith("_wall_ms"))
            log.info("%s: latency from %s (measured %s at load %.1f): %s", name, path, hit["measured_at"],
                     hit["load_avg_1m"], values)
            out[name] = hit
            continue
        log.info("%s: measuring latency at batch %s (once per machine)", name, " and ".join(map(str, LATENCY_BATCHES)))
        out[name] = {**measure_latency(name), "machine": key}
        entries = [e for e in entries if not (e["backbone"] == name and e["machine"] == key)] + [out[name]]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"entries": entries}, indent=2))
    return out


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """True for the points no other point beats (cost <= and score >=, one strictly).

    Example:
        >>> pareto_front([1, 2, 3, 4], [0.5, 0.9, 0.8, 0.95])
        [True, True, False, True]
    """
    pts = list(zip(costs, scores))
    return [not any((c2 <= c and s2 >= s) and (c2 < c or s2 > s) for c2, s2 in pts) for c, s in pts]


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Pearson r and Spearman rho (None with fewer than 3 points or a constant side).

    Example:
        >>> correlation([1, 2, 3], [2, 4, 7])["spearman"]
        1.0
    """
    from scipy.stats import pearsonr, spearmanr

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return {"pearson": None, "spearman": None, "n": int(xs.size)}
    return {"pearson": round(float(pearsonr(xs, ys)[0]), 4), "spearman": round(float(spearmanr(xs, ys)[0]), 4),
            "n": int(xs.size)}


# ----------------------------------------------------------------------------- LogME ranking

def pooled_features(source: ImageSource, indices: np.ndarray, backbone: str, *, split_name: str = "train",
                    options: TrainOptions | None = None, device: str = "auto", workers: int = 0,
                    progress: bool = False) -> np.ndarray:
    """Global-average-pooled features of the full pretrained network, through ``train``'s store.

    The activations go through the on-disk feature cache under the key a linear probe / fine-tune
    of the same images uses, so ranking and the run that follows compute them once.
    """
    from transferlab.experiments.train import cache_fingerprint, feature_cache, item_keys

    t = options or TrainOptions()
    bb = create_backbone(backbone, pretrained=True)
    pre = bb.preprocessing
    norm = compute_norm_stats("pretrained", source=source, indices=indices, preprocessing=pre)
    model = TransferModel(backbone=bb, num_classes=max(2, len(source.classes)), head=HeadConfig())
    n = len(model.stage_names)
    store = ActivationStore(model, device=init_distributed(device).device, batch_size=max(t.batch_size, 64),
                            num_workers=workers, progress=progress, disk=feature_cache(t),
                            fingerprint=cache_fingerprint(bb, norm))
    store.pristine_upto = n
    split = SplitInputs(name=split_name, labels=torch.as_tensor(source.labels[indices], dtype=torch.long),
                        eval_dataset=ImageDataset(source, indices, build_transform(pre, norm=norm),
                                                  draft_size=pre.resize_size),
                        items=item_keys(source, indices))
    acts = store.get(split, n)
    if acts is None:
        raise ConfigError(f"{backbone}: the features of {len(indices)} images do not fit the activation memory budget")
    with torch.inference_mode():
        return torch.cat([model.pool(acts[i : i + 256]) for i in range(0, len(acts), 256)]).numpy()


def within_budget(names: Sequence[str], *, max_latency_ms: float | None, max_params: float | None,
                  latencies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The backbones within both budgets; a budget that excludes every one is a one-line error.

    Example:
        >>> within_budget(["mobilenet_v2"], max_latency_ms=5, max_params=None,
        ...               latencies={"mobilenet_v2": {"batch_1_ms": 9.0}})
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --max-latency-ms 5 excludes every backbone: mobilenet_v2 (9.0 ms at batch 1, 3.50M params)
    """
    for flag, v in (("--max-latency-ms", max_latency_ms), ("--max-params", max_params)):
        if v is not None and not v > 0:
            raise ConfigError(f"{flag} must be > 0, got {v}")
    kept = [n for n in names
            if (max_latency_ms is None or latencies[n]["batch_1_ms"] <= max_latency_ms)
            and (max_params is None or _params(n) <= max_params)]
    if not kept:
        budgets = " and ".join(f"{f} {v:g}" for f, v in (("--max-latency-ms", max_latency_ms),
                                                        ("--max-params", max_params)) if v is not None)
        facts = ", ".join(f"{n} ({latencies[n]['batch_1_ms']:.1f} ms at batch 1, {_params(n) / 1e6:.2f}M params)"
                          if n in latencies else f"{n} ({_params(n) / 1e6:.2f}M params)" for n in names)
        raise ConfigError(f"{budgets} excludes every backbone: {facts}")
    return kept


def _params(name: str) -> int:
    return int(get_entry(name).params)


def rank_backbones(source: ImageSource, indices: np.ndarray, *, names: Sequence[str] | None = None,
                   max_latency_ms: float | None = None, max_params: float | None = None,
                   latencies: Mapping[str, Mapping[str, Any]] | None = None, options: TrainOptions | None = None,
                   device: str = "auto", workers: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Backbones within the budgets, best LogME first (LogME of the pooled features of ``indices``,
    usually the training split). ``names``: default every backbone with weights here;
    ``latencies``: measured values to use (default with ``max_latency_ms``: :func:`latency_table`, measured
    once here).

    Example:
        >>> ranked = rank_backbones(src, split.train, max_latency_ms=30)  # doctest: +SKIP
        >>> ranked[0]["backbone"], ranked[0]["logme"]  # doctest: +SKIP
        ('efficientnet_lite0', 1.23)
    """
    names = parse_backbones(names) if names is not None else backbones_with_weights()
    kept = within_budget(names, max_latency_ms=None, max_params=max_params, latencies={})
    lat = dict(latencies) if latencies is not None else latency_table(kept) if max_latency_ms is not None else {}
    kept = within_budget(kept, max_latency_ms=max_latency_ms, max_params=max_params, latencies=lat)
    if len(kept) < len(names):
        log.info("budgets keep %d of %d backbones: %s", len(kept), len(names), ", ".join(kept))
    labels = source.labels[np.asarray(indices)]
    rows = []
    for name in kept:
        t0 = time.perf_counter()
        feats = pooled_features(source, np.asarray(indices), name, options=options, device=device, workers=workers,
                                progress=progress)
        entry = get_entry(name)
        rows.append({"backbone": name, "logme": round(logme(feats, labels), 6), "params": entry.params,
                     "top1": entry.top1, "input_size": entry.input_size, "feature_dim": int(feats.shape[1]),
                     "latency_b1_ms": lat.get(name, {}).get("batch_1_ms"),
                     "latency_b32_ms": lat.get(name, {}).get("batch_32_ms"), "images": int(len(labels)),
                     "seconds": round(time.perf_counter() - t0, 2)})
        log.info("%s: LogME %.4f on %d images (%.1fs)", name, rows[-1]["logme"], len(labels), rows[-1]["seconds"])
    return sorted(rows, key=lambda r: -r["logme"])


# ----------------------------------------------------------------------------- compare --backbones

def uses_backbone(entry: str) -> bool:
    """False for compare entries that never use the run's backbone (they run once per compare).

    Example:
        >>> uses_backbone("linear-probe"), uses_backbone("hog-svm"), uses_backbone("scratch:backbone=small_cnn")
        (True, False, False)
    """
    strategy, _, pairs = entry.partition(":")
    return strategy.strip() != "hog-svm" and "backbone=" not in pairs.replace(" ", "")


def compare_backbones(data: str, *, backbones: Sequence[str] | str, strategies: Sequence[str] | str,
                      seeds: int | None = None,
                      out: str | os.PathLike[str], source: ImageSource | None = None,
                      latencies: Mapping[str, Mapping[str, Any]] | None = None, **compare_kwargs: Any) -> dict[str, Any]:
    """``compare`` for every backbone on the same split, merged into ``out/results.json``
    (``latencies``: use these instead of :func:`latency_table`'s).

    Example:
        >>> compare_backbones("flowers17/", backbones="mobilenet_v2,efficientnet_lite0",
        ...                   strategies="linear-probe", seeds=1, out="cmp")  # doctest: +SKIP
    """
    from transferlab.data import open_dataset
    from transferlab.experiments.compare import RESULTS, compare, default_seeds, parse_strategies, prepare_compare

    names = parse_backbones(backbones)
    entries = parse_strategies(strategies)
    d = compare_kwargs.pop("data_options", None) or DataOptions()
    t = compare_kwargs.pop("train_options", None) or TrainOptions()
    src = source if source is not None else open_dataset(data, quiet=d.quiet)
    checks = {k: v for k, v in compare_kwargs.items() if k in ("train_per_class", "val_subset", "test_subset", "tta")}
    for k, name in enumerate(names):  # every backbone's entries (and --cv) checked before any run or measurement
        prepare_compare(data, strategies=[e for e in entries if uses_backbone(e) or k == 0],
                        seeds=3 if seeds is None else seeds, data_options=d, train_options=replace(t, backbone=name),
                        source=src, **{"train_per_class": None, **checks})
    seeds = default_seeds(seeds, t)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lat = dict(latencies) if latencies is not None else latency_table(names)
    merged: dict[str, Any] = {"status": "running", "data": str(data), "backbone": ",".join(names),
                              "backbones": names, "seeds": seeds, "strategies_order": [], "strategies": {},
                              "latency": lat, "backbone_facts": {n: get_entry(n).facts() for n in names}}
    t0 = time.perf_counter()
    for k, name in enumerate(names):
        mine = [e for e in entries if uses_backbone(e) or k == 0]
        res = compare(data, strategies=mine, seeds=seeds, out=out_dir / "backbones" / name, source=src,
                      data_options=d, train_options=replace(t, backbone=name), **compare_kwargs)
        if "split" in merged and res["split"]["sizes"] != merged["split"]["sizes"]:
            raise ConfigError(f"compare --backbones: {name}'s split differs from {names[0]}'s")
        for key in ("machine", "split", "data_options", "train_options", "sharing", "cv"):
            if key in res:
                merged.setdefault(key, res[key])
        for entry in mine:
            label = f"{entry}@{name}" if uses_backbone(entry) else entry
            merged["strategies"][label] = {**res["strategies"][entry], "backbone": name if uses_backbone(entry)
                                           else None, "entry": entry}
            merged["strategies_order"].append(label)
        merged["wall_s"] = round(time.perf_counter() - t0, 3)
        atomic_write_text(out_dir / RESULTS, json.dumps(merged, indent=2))
    merged["status"] = "done"
    atomic_write_text(out_dir / RESULTS, json.dumps(merged, indent=2))
    return merged


def backbone_points(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One point per (strategy entry, backbone) of a ``compare --backbones`` results: its accuracy with the
    backbone's ImageNet top-1, parameters and latency (report figures, tables). ``accuracy`` is the mean
    K-fold CV accuracy (``accuracy_std``: its std across folds) when the compare ran with ``--cv``, else
    the mean test accuracy (``accuracy_std``: across seeds); ``measure`` says which, ``test_accuracy``
    is always the test split's.

    Example:
        >>> backbone_points({"strategies": {"lp@a": {"entry": "lp", "backbone": "a", "test_accuracy_mean": 0.9}},
        ...                  "backbone_facts": {"a": {"top1": 75.0, "params": 5}},
        ...                  "latency": {"a": {"batch_1_ms": 10.0, "batch_32_ms_per_image": 4.0}}})[0]["top1"]
        75.0
    """
    cv = (results.get("cv") or {}).get("k")
    pts = []
    for label, s in results.get("strategies", {}).items():
        bb = s.get("backbone")
        if bb is None or s.get("test_accuracy_mean") is None:
            continue
        facts, lat = results["backbone_facts"][bb], results.get("latency", {}).get(bb, {})
        by_cv = cv is not None and s.get("cv_mean") is not None
        pts.append({"label": label, "entry": s.get("entry", label), "backbone": bb,
                    "accuracy": s["cv_mean"] if by_cv else s["test_accuracy_mean"],
                    "accuracy_std": s["cv_std"] if by_cv else s.get("test_accuracy_std"),
                    "measure": f"{cv}-fold CV" if by_cv else "test", "test_accuracy": s["test_accuracy_mean"],
                    "top1": facts["top1"], "params": facts["params"],
                    "latency_b1_ms": lat.get("batch_1_ms"), "latency_b32_ms_per_image": lat.get("batch_32_ms_per_image")})
    return pts


def probe_cv(source: ImageSource, parts: Sequence[np.ndarray], backbone: str, *, k: int, seed: int = 0,
             grid: tuple[float, ...] | None = None, options: TrainOptions | None = None, device: str = "auto",
             workers: int = 0, progress: bool = False) -> Any:
    """The linear probe of ``backbone`` scored by stratified ``k``-fold CV over the rows of ``parts`` (the
    non-test pool: the training and the validation indices), on the pooled features LogME ranks
    (:func:`pooled_features`: the same on-disk feature cache, so the training images are not computed
    again). Folds: :func:`~transferlab.experiments.cv.stratified_folds` of the pool's labels in ``parts``
    order, seeded by ``seed`` (pass the split seed: the folds are then those of ``train --cv`` on the same
    split); C from ``grid`` (default auto's) by mean CV accuracy. Returns the
    :class:`~transferlab.experiments.cv.CVScore`.

    Example:
        >>> probe_cv(src, [split.train, split.val], "mobilenet_v2", k=5).mean  # doctest: +SKIP
        0.951
    """
    from transferlab.experiments.auto import AUTO_GRID
    from transferlab.experiments.cv import check_cv, cv_linear_probe, stratified_folds

    rows = [(name, np.asarray(idx)) for name, idx in zip(("train", "val", "pool"), parts) if len(idx)]
    y = np.concatenate([source.labels[idx] for _, idx in rows]).astype(np.int64)
    folds = stratified_folds(y, k=check_cv(k, y, list(source.classes)), seed=seed)
    x = np.vstack([pooled_features(source, idx, backbone, split_name=name, options=options, device=device,
                                   workers=workers, progress=progress) for name, idx in rows])
    score, _ = cv_linear_probe([x], y, folds, num_classes=len(source.classes), grid=grid or AUTO_GRID, seed=seed)
    return score


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two scorings of the same items (None with fewer than 2 or a constant side).

    Example:
        >>> kendall_tau([1, 2, 3, 4], [0.5, 0.7, 0.6, 0.9])
        0.6667
    """
    from scipy.stats import kendalltau

    if len(a) < 2:
        return None
    tau = kendalltau(a, b)[0]
    return None if np.isnan(tau) else round(float(tau), 4)


def cv_ranking(source: ImageSource, ranked: list[dict[str, Any]], *, train_idx: np.ndarray, val_idx: np.ndarray,
               k: int, seed: int, progress: bool = False) -> dict[str, Any]:
    """``recommend --cv K``: every ranked backbone's linear probe scored by :func:`probe_cv` (its row gains
    cv_mean, cv_std, cv_loss_mean, C and cv_rank); returns the CV pick, LogME's pick and the Kendall tau
    between the two rankings."""
    for row in ranked:
        t0 = time.perf_counter()
        score = probe_cv(source, [train_idx, val_idx], row["backbone"], k=k, seed=seed, progress=progress)
        row.update({"cv_mean": round(score.mean, 6), "cv_std": round(score.std, 6),
                    "cv_loss_mean": round(score.loss_mean, 6), "C": score.C,
                    "cv_s": round(time.perf_counter() - t0, 2)})
        log.info("%s: linear probe %d-fold CV accuracy %.4f ± %.4f (C=%g, %.1fs)", row["backbone"], k,
                 score.mean, score.std, score.C, row["cv_s"])
    by_cv = sorted(ranked, key=lambda r: (-r["cv_mean"], r["cv_loss_mean"], -r["logme"]))
    for i, row in enumerate(by_cv, start=1):
        row["cv_rank"] = i
    return {"k": k, "pool": int(len(train_idx) + len(val_idx)), "fold_seed": seed,
            "cv_pick": by_cv[0]["backbone"], "logme_pick": ranked[0]["backbone"],
            "agree": by_cv[0]["backbone"] == ranked[0]["backbone"],
            "kendall_tau": kendall_tau([r["logme"] for r in ranked], [r["cv_mean"] for r in ranked]),
            "backbones": len(ranked)}


def choose_backbone(source: ImageSource, train_idx: np.ndarray, *, max_latency_ms: float | None = None,
                    max_params: float | None = None, progress: bool = False, cv: int | None = None,
                    val_idx: np.ndarray | None = None, seed: int = 0
                    ) -> tuple[str, list[dict[str, Any]], str, dict[str, Any] | None]:
    """``recommend``'s backbone: the best LogME among those with weights here within the budgets; with
    ``cv``, the best ``cv``-fold CV accuracy of a linear probe over ``train_idx`` + ``val_idx`` (the pool's
    folds seeded by ``seed``), LogME's pick and the rank agreement reported beside it.

    Returns ``(name, ranking, reason, cv_record or None)``; ``ranking`` is best LogME first.

    Example:
        >>> name, ranking, why, _ = choose_backbone(src, split.train, max_params=5e6)  # doctest: +SKIP
    """
    if cv is not None:  # the folds are checked before any forward pass
        from transferlab.experiments.cv import check_cv

        pool = np.concatenate([train_idx, val_idx if val_idx is not None else train_idx[:0]])
        check_cv(cv, source.labels[pool], list(source.classes))
    ranked = rank_backbones(source, train_idx, max_latency_ms=max_latency_ms, max_params=max_params,
                            progress=progress)
    best = ranked[0]
    budgets = [f"{f} {v:g}" for f, v in (("--max-latency-ms", max_latency_ms), ("--max-params", max_params))
               if v is not None]
    within = f"{len(ranked)} with weights here{' within ' + ' and '.join(budgets) if budgets else ''}"
    logme_why = (f"LogME (You et al., ICML 2021; the evidence of a linear model on its pooled features of the "
                 f"{best['images']} training images)")
    if cv is None:
        others = ", ".join(f"{r['backbone']} {r['logme']:.3f}" for r in ranked[1:])
        why = (f"backbone {best['backbone']}: highest {logme_why} {best['logme']:.3f} of {within}"
               f"{'; ' + others if others else ''}")
        return best["backbone"], ranked, why, None
    record = cv_ranking(source, ranked, train_idx=train_idx,
                        val_idx=val_idx if val_idx is not None else train_idx[:0], k=cv, seed=seed, progress=progress)
    pick = next(r for r in ranked if r["backbone"] == record["cv_pick"])
    tau = "-" if record["kendall_tau"] is None else f"{record['kendall_tau']:+.2f}"
    why = (f"backbone {pick['backbone']}: highest {cv}-fold CV accuracy of a linear probe, {pick['cv_mean']:.4f} ± "
           f"{pick['cv_std']:.4f} over the {record['pool']} non-test images, of {within}; "
           + (f"{logme_why} agrees" if record["agree"] else
              f"{logme_why} would pick {best['backbone']} ({best['logme']:.3f}; CV {best['cv_mean']:.4f} ± "
              f"{best['cv_std']:.4f})")
           + f"; Kendall tau between the LogME and the CV rankings {tau} over {len(ranked)} backbones: "
           + ", ".join(f"{r['backbone']} LogME {r['logme']:.3f} / CV {r['cv_mean']:.4f}" for r in ranked))
    return pick["backbone"], ranked, why, record
