"""Which backbone: LogME ranking under latency / parameter budgets, latency measured here, and
``compare --backbones`` (backbones x strategies on one split).

* :func:`rank_backbones`: one forward pass per backbone over the training images (pooled features of
  the full network, through the same activation store and on-disk feature cache as ``train``, so a
  later linear probe or fine-tune reuses them), scored by LogME (:mod:`transferlab.engine.logme`).
* :func:`latency_table`: milliseconds per forward pass at batch 1 and batch 32 of the whole network
  at its input size on this machine, measured once per backbone and machine and kept in
  ``$TRANSFERLAB_CACHE/latency.json`` with the machine's description and load at measurement time.
* :func:`compare_backbones`: one ``compare`` per backbone on the same dataset object and the same
  seeded split (folds, when ``compare`` makes them, come from the same seeds too), merged into one
  ``results.json`` whose entries are ``STRATEGY@BACKBONE`` and whose run rows name their ``backbone``.
  A strategy that does not use the backbone (``hog-svm``, ``scratch:backbone=...``) runs once.

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
from transferlab.options import TrainOptions
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
                               if k.startswith("batch_") and k.endswith("_ms"))
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


def compare_backbones(data: str, *, backbones: Sequence[str] | str, strategies: Sequence[str] | str, seeds: int,
                      out: str | os.PathLike[str], source: ImageSource | None = None,
                      latencies: Mapping[str, Mapping[str, Any]] | None = None, **compare_kwargs: Any) -> dict[str, Any]:
    """``compare`` for every backbone on the same split, merged into ``out/results.json``
    (``latencies``: use these instead of :func:`latency_table`'s).

    Example:
        >>> compare_backbones("flowers17/", backbones="mobilenet_v2,efficientnet_lite0",
        ...                   strategies="linear-probe", seeds=1, out="cmp")  # doctest: +SKIP
    """
    from transferlab.data import open_dataset
    from transferlab.experiments.compare import RESULTS, compare, parse_strategies

    names = parse_backbones(backbones)
    entries = parse_strategies(strategies)
    d = compare_kwargs.pop("data_options", None)
    t = compare_kwargs.pop("train_options", None) or TrainOptions()
    src = source if source is not None else open_dataset(data, quiet=bool(d and d.quiet))
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
        for key in ("machine", "split", "data_options", "train_options", "sharing"):
            merged.setdefault(key, res.get(key))
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
    """One point per (strategy entry, backbone) of a ``compare --backbones`` results: mean test
    accuracy with the backbone's ImageNet top-1, parameters and latency (report figures, tables).

    Example:
        >>> backbone_points({"strategies": {"lp@a": {"entry": "lp", "backbone": "a", "test_accuracy_mean": 0.9}},
        ...                  "backbone_facts": {"a": {"top1": 75.0, "params": 5}},
        ...                  "latency": {"a": {"batch_1_ms": 10.0, "batch_32_ms_per_image": 4.0}}})[0]["top1"]
        75.0
    """
    pts = []
    for label, s in results.get("strategies", {}).items():
        bb = s.get("backbone")
        if bb is None or s.get("test_accuracy_mean") is None:
            continue
        facts, lat = results["backbone_facts"][bb], results.get("latency", {}).get(bb, {})
        pts.append({"label": label, "entry": s.get("entry", label), "backbone": bb,
                    "accuracy": s["test_accuracy_mean"], "top1": facts["top1"], "params": facts["params"],
                    "latency_b1_ms": lat.get("batch_1_ms"), "latency_b32_ms_per_image": lat.get("batch_32_ms_per_image")})
    return pts


def choose_backbone(source: ImageSource, train_idx: np.ndarray, *, max_latency_ms: float | None = None,
                    max_params: float | None = None, progress: bool = False) -> tuple[str, list[dict[str, Any]], str]:
    """``recommend``'s backbone: the best LogME among those with weights here within the budgets.

    Returns ``(name, ranking, reason)``.

    Example:
        >>> name, ranking, why = choose_backbone(src, split.train, max_params=5e6)  # doctest: +SKIP
    """
    ranked = rank_backbones(source, train_idx, max_latency_ms=max_latency_ms, max_params=max_params,
                            progress=progress)
    best = ranked[0]
    budgets = [f"{f} {v:g}" for f, v in (("--max-latency-ms", max_latency_ms), ("--max-params", max_params))
               if v is not None]
    others = ", ".join(f"{r['backbone']} {r['logme']:.3f}" for r in ranked[1:])
    why = (f"backbone {best['backbone']}: highest LogME {best['logme']:.3f} (You et al., ICML 2021; the evidence of "
           f"a linear model on its pooled features of the {best['images']} training images) of "
           f"{len(ranked)} with weights here{' within ' + ' and '.join(budgets) if budgets else ''}"
           f"{'; ' + others if others else ''}")
    return best["backbone"], ranked, why
