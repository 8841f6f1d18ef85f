"""``transferlab compare``: several strategies x seeds (x training-set sizes) on one split.

Work sharing rule: one compare opens the dataset once and makes the split once. All runs that
start from pretrained weights share one :class:`ActivationStore`. An entry at boundary ``b`` (the
input of stage ``b``) is valid for a run as long as every stage below ``b`` still holds the
pretrained weights; the engine drops entries above any stage it trains, so after a run finishes
the store only holds entries at or below that run's lowest trainable stage, all computed with
pretrained weights. Entries present before a run are restored after it (they were pretrained
then and tensors are never modified in place); after a crashed run the store is reset to what it
held before. Scratch runs (random weights) get their own store, whose only entries are the
preprocessed images (boundary 0, independent of the weights). Across training-set sizes the
train entries are dropped; val/test entries are kept unless ``--normalize dataset`` makes the
inputs depend on the training images.

Example:
    >>> from transferlab.experiments.compare import compare
    >>> res = compare("flowers17/", strategies=["scratch", "feature-extraction"], seeds=3,
    ...               out="cmp", train_options=TrainOptions(backbone="efficientnet_lite0"))  # doctest: +SKIP
    >>> res["strategies"]["feature-extraction"]["test_accuracy_mean"]  # doctest: +SKIP
    0.95
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.api import CompareResults
from transferlab.data import ImageSource, Split, atomic_write_text, make_split, open_dataset, parse_fractions
from transferlab.engine import ActivationStore, init_distributed
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import BadFileError, ConfigError, DataError
from transferlab.experiments.cv import check_cv
from transferlab.experiments.cvsupport import check_cv_entries
from transferlab.experiments.inference import measure_tta
from transferlab.experiments.rundir import claim_run_dir
from transferlab.experiments.train import feature_cache, plan_options, run_training, setup_logging, versions
from transferlab.options import DataOptions, TrainOptions, with_overrides
from transferlab.progress import Counter
from transferlab.strategies import build_plan, check_cut
from transferlab.strategies.plans import FEATURE_BASELINES, STRATEGIES
from transferlab.tta import check_tta
from transferlab.zoo import create_backbone

log = logging.getLogger("transferlab")
RESULTS = "results.json"


def parse_strategies(text: str | Sequence[str]) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, checked against the known strategies.

    An entry may carry its own options as ``STRATEGY:OPTION=VALUE[:OPTION=VALUE]`` (flag spelling),
    so one compare can hold variants such as ``fine-tune:unfreeze=2,fine-tune:unfreeze=4``.

    Example:
        >>> parse_strategies("scratch, linear-probe, fine-tune:unfreeze=2")
        ['scratch', 'linear-probe', 'fine-tune:unfreeze=2']
    """
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ConfigError("--strategies is empty; expected a comma-separated list, e.g. scratch,fine-tune")
    unknown = [s for s in names if strategy_of(s) not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy {strategy_of(unknown[0])!r} in --strategies; expected some of: "
                          f"{', '.join(STRATEGIES)}")
    for s in names:
        variant_options(s, TrainOptions())  # option names and values checked before any run
    if len(set(names)) != len(names):
        raise ConfigError(f"--strategies lists a strategy twice: {','.join(names)}")
    return names


def strategy_of(name: str) -> str:
    """The strategy of a compare entry (``"fine-tune:unfreeze=2"`` -> ``"fine-tune"``)."""
    return name.partition(":")[0].strip()


def variant_options(name: str, train: TrainOptions) -> TrainOptions:
    """``train`` for the compare entry ``name``: its strategy and its own ``OPTION=VALUE`` overrides.

    Example:
        >>> variant_options("fine-tune:unfreeze=2", TrainOptions()).unfreeze
        2
    """
    strategy, _, pairs = name.partition(":")
    out = with_overrides(train, pairs, context=f"--strategies entry {name!r}")
    if out.strategy != train.strategy or (out.backbone != train.backbone and strategy.strip() != "scratch"):
        raise ConfigError(f"--strategies entry {name!r}: strategy and backbone are set for the whole compare, "
                          "not per entry (except a scratch baseline's architecture, e.g. scratch:backbone=small_cnn)")
    return replace(out, strategy=strategy.strip())


def parse_sizes(text: str | Sequence[int] | None) -> list[int]:
    """``"5,10"`` -> ``[5, 10]`` (sorted, positive); None or ``""`` -> ``[]``.

    Example:
        >>> parse_sizes("20,5")
        [5, 20]
    """
    if text is None:
        return []
    parts = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    try:
        sizes = sorted({int(p) for p in parts})
    except ValueError:
        raise ConfigError(f"--train-per-class must be comma-separated integers, got {text!r}") from None
    if any(n < 1 for n in sizes):
        raise ConfigError(f"--train-per-class values must be >= 1, got {text!r}")
    return sizes


def stratified_subset(source: ImageSource, idx: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of ``n`` items of ``idx`` (all of ``idx`` if it is smaller).

    Example:
        >>> src = ImageSource.from_arrays(np.zeros((8, 2, 2), np.uint8), [0, 1] * 4, classes=["a", "b"], name="t")
        >>> stratified_subset(src, np.arange(8), 4, seed=0).size
        4
    """
    idx = np.asarray(idx, dtype=np.int64)
    if n >= idx.size:
        return idx
    rng = np.random.default_rng(seed)
    labels = source.labels[idx]
    classes = np.unique(labels)
    picks = []
    base, extra = divmod(n, classes.size)
    for k, c in enumerate(classes):
        pool = idx[labels == c]
        want = min(pool.size, base + (1 if k < extra else 0))
        picks.append(rng.choice(pool, size=want, replace=False))
    return np.sort(np.concatenate(picks))


def machine_info() -> dict[str, Any]:
    """Platform, CPU and library versions (for reports)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": versions()}


def summarize_runs(runs: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Mean ± std of test accuracy and macro F1 over the ok runs of one strategy, with the runs."""
    ok = [r for r in runs if r["status"] == "ok"]
    acc = np.array([r["test_accuracy"] for r in ok], dtype=float)
    val = np.array([r["val_accuracy"] for r in ok], dtype=float)
    f1 = np.array([r["macro_f1"] for r in ok], dtype=float)

    def stat(a: np.ndarray, fn: Any) -> float | None:
        return round(float(fn(a)), 6) if a.size else None

    out = {"test_accuracy_mean": stat(acc, np.mean), "test_accuracy_std": stat(acc, np.std),
           "val_accuracy_mean": stat(val, np.mean), "val_accuracy_std": stat(val, np.std),
           "macro_f1_mean": stat(f1, np.mean), "macro_f1_std": stat(f1, np.std),
           "wall_s": round(wall_s, 3), "n_ok": len(ok), "n_failed": len(runs) - len(ok), "runs": runs}
    cv = [r for r in ok if r.get("cv_mean") is not None]
    if cv:  # --cv: the CV mean (over seeds) and the spread across folds (fold std, mean over seeds)
        out.update({"cv_k": cv[0]["cv_k"], **{key: stat(np.array([r[key] for r in cv], dtype=float), np.mean)
                                              for key in ("cv_mean", "cv_std", "cv_loss_mean")}})
    tta = [r["tta"] for r in ok if "tta" in r]
    if tta:
        out["tta"] = {"mode": tta[0]["mode"], **{f"{k}_mean": stat(np.array([x[k] for x in tta]), np.mean)
                                                 for k in ("accuracy", "accuracy_plain", "cost_ratio")}}
    return out



def _run_record(run: Any, *, seed: int, run_dir: Path) -> dict[str, Any]:
    return _record(run.metrics, seed=seed, run_dir=run_dir)


def _finished_record(run_dir: Path, *, seed: int) -> dict[str, Any] | None:
    """The record of a run that finished earlier (its ``metrics.json`` is written last), else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
        if not (run_dir / "model.json").is_file() and m.get("strategy") not in FEATURE_BASELINES:
            return None  # a network run writes model.json before metrics.json; hog-svm has no model file
        return _record(m, seed=seed, run_dir=run_dir)
    except (ValueError, KeyError, TypeError):
        log.warning("compare --resume: %s is unreadable; training that run again", path)
        return None


def _record(m: dict[str, Any], *, seed: int, run_dir: Path) -> dict[str, Any]:
    """One run row; a cross-validated run (``--cv``) adds its fold scores (its ``val_accuracy`` is then the
    accuracy of the out-of-fold predictions)."""
    cv = m.get("cv") or {}
    return {"seed": seed, "status": "ok", "backbone": m["backbone"], "run_dir": str(run_dir),
            "test_accuracy": m["test"]["accuracy"],
            **({"cv_k": cv["k"], **{key: cv[key] for key in ("cv_mean", "cv_std", "cv_loss_mean", "cv_loss_std")}}
               if cv else {}),
            "macro_f1": m["test"]["macro_f1"], "top5": m["test"]["top5"], "test_loss": m["test"]["loss"],
            "val_accuracy": m["val"]["accuracy"], "best_epoch": m["best_epoch"], "timing": m["timing"]}


class _SharedStore:
    """The one activation store of a compare (see the module docstring for the validity rule)."""

    def __init__(self, *, device: torch.device, batch_size: int, workers: int, progress: bool,
                 runtime: str = "auto", disk: FeatureCache | None = None) -> None:
        # the model is adopted by each run (run_training(store=...) sets store.model and the disk fingerprint),
        # so pretrained entries go to and come from the same on-disk feature cache as `transferlab train`
        self._args = dict(device=device, batch_size=max(batch_size, 64), num_workers=workers, progress=progress,
                          runtime=runtime, disk=disk)
        self.store = ActivationStore(None, **self._args)  # type: ignore[arg-type]
        self._main: tuple[str, int | None] | None = None
        self._others: dict[tuple[str, int | None], ActivationStore] = {}

    def for_options(self, t: TrainOptions) -> ActivationStore:
        """The store of the compare's backbone and resolution; an entry with another architecture or
        input size (e.g. ``scratch:backbone=small_cnn``) gets its own: its images are preprocessed differently."""
        key = (t.backbone, t.input_size)
        if self._main is None:
            self._main = key
        if key == self._main:
            return self.store
        return self._others.setdefault(key, ActivationStore(None, **self._args))  # type: ignore[arg-type]

    def new_training_set(self, *, keep_eval: bool) -> None:
        for store in (self.store, *self._others.values()):
            for key in list(store._cache):
                if key[0].startswith("train") or not keep_eval:
                    del store._cache[key]

    @property
    def forward_images(self) -> int:
        return self.store.forward_images + sum(s.forward_images for s in self._others.values())


def _leakage_once(data: str, src: ImageSource, split: Split, d: DataOptions, t: TrainOptions) -> dict[str, Any] | None:
    """The cross-split near-duplicate check, once per compare: it embeds image files (an in-memory set
    such as the demo's only from cached features)."""
    from transferlab.audit.leakage import check_split_leakage
    from transferlab.experiments.train import feature_cache

    opt = "" if d.split == DataOptions.split else f" --split {d.split}"
    opt += "" if d.split_seed == 0 else f" --split-seed {d.split_seed}"
    return check_split_leakage(src, split, data=data, backbone=t.backbone, weights=t.weights,
                               cache=feature_cache(t), compute=not src.in_memory, device=d.device,
                               workers=d.num_workers, split_option=opt)


@dataclass
class CompareSetup:
    """What a compare runs on, checked before any run: its entries, the opened dataset and the split per
    training-set size (``whole``: the full training split, for the leakage check)."""

    names: list[str]
    source: ImageSource
    splits: list[tuple[int | None, Split]]
    whole: Split


def prepare_compare(data: str, *, strategies: Sequence[str] | str, seeds: int,
                    train_per_class: Sequence[int] | str | None, data_options: DataOptions,
                    train_options: TrainOptions, val_subset: int | None = None, test_subset: int | None = None,
                    source: ImageSource | None = None, tta: str = "none") -> CompareSetup:
    """Every check of a compare that needs no training (options, plans, ``--cv`` against the strategies and
    the non-test pool's smallest class), the dataset opened and split; one-line errors, nothing written.

    Example:
        >>> prepare_compare("flowers17/", strategies="fine-tune", seeds=1, train_per_class=None,
        ...                 data_options=DataOptions(), train_options=TrainOptions(cv=99))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --cv 99: ...
    """
    d, t = data_options, train_options
    check_tta(tta)
    names = parse_strategies(strategies)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds!r}")
    sizes = parse_sizes(train_per_class)
    if d.train_per_class is not None:
        if sizes:
            raise ConfigError("give --train-per-class once (compare takes a comma-separated list)")
        sizes = [d.train_per_class]
    for n, v in (("val_subset", val_subset), ("test_subset", test_subset)):
        if v is not None and v < 1:
            raise ConfigError(f"{n} must be >= 1, got {v}")
    for name in names:
        tn = variant_options(name, t)
        stage_names = create_backbone(tn.backbone, pretrained=False).stage_names
        kept = check_cut(tn.cut, stage_names=stage_names, backbone=tn.backbone)
        build_plan(tn.strategy, stage_names=kept, options=plan_options(tn)).validate(kept)
    if t.cv is not None:
        check_cv_entries([(name, variant_options(name, t)) for name in names], k=t.cv)

    setup_logging(quiet=d.quiet)
    src = source if source is not None else open_dataset(data, quiet=d.quiet)
    base = make_split(src, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed)
    counts = src.class_counts(base.train)
    if sizes and sizes[-1] > counts.min():
        c = int(np.argmin(counts))
        raise DataError(f"--train-per-class {sizes[-1]} exceeds the smallest class {src.classes[c]!r} "
                        f"({int(counts[c])} training images)")
    val = base.val if val_subset is None else stratified_subset(src, base.val, val_subset, seed=d.split_seed + 1)
    test = base.test if test_subset is None else stratified_subset(src, base.test, test_subset,
                                                                     seed=d.split_seed + 2)
    splits: list[tuple[int | None, Split]] = []
    for n in sizes or [None]:
        train = base.train if n is None else make_split(
            src, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed, train_per_class=n).train
        splits.append((n, Split(train=train, val=val, test=test)))
        if t.cv is not None:  # the folds split the non-test pool (train+val) of every training-set size
            check_cv(t.cv, src.labels[np.concatenate([train, val])], list(src.classes))
    return CompareSetup(names=names, source=src, splits=splits, whole=Split(train=base.train, val=val, test=test))


def default_seeds(seeds: int | None, t: TrainOptions) -> int:
    """``seeds``, or the default: 3, or 1 with ``--cv`` (the folds give the spread), said in one line.

    Example:
        >>> default_seeds(None, TrainOptions()), default_seeds(2, TrainOptions(cv=5))
        (3, 2)
    """
    if seeds is not None:
        return seeds
    if t.cv is None:
        return 3
    log.info("compare --cv %d: 1 seed per entry (the %d folds give the spread; --seeds N repeats each entry N times)",
             t.cv, t.cv)
    return 1


def compare(
    data: str,
    *,
    strategies: Sequence[str] | str,
    seeds: int | None = None,
    out: str | os.PathLike[str],
    train_per_class: Sequence[int] | str | None = None,
    data_options: DataOptions | None = None,
    train_options: TrainOptions | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    source: ImageSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    tta: str = "none",
) -> dict[str, Any]:
    """Run every strategy for every seed on one split; write ``out/results.json`` after each run.

    ``train_options.cv`` (``--cv K``): every run is scored by stratified K-fold CV over the non-test
    pool (train+val; the test split is in no fold and scored once by the run's final model); its
    row and the entry's summary carry ``cv_mean``, ``cv_std`` (across folds), ``cv_loss_mean``.
    Entries whose strategy cannot be cross-validated (:mod:`transferlab.experiments.cvsupport`) and
    a K above the pool's smallest class are one-line errors before any run. ``seeds``: default 3,
    or 1 with ``--cv``.

    ``tta`` (``flip``, ``flip+crops``): each run's record gains ``tta``, its test accuracy and
    inference seconds without and with test-time augmentation (:func:`inference.measure_tta`).
    ``train_per_class``: one value subsamples the training split; several values add a
    data-efficiency study (``results["efficiency"]``) and the main table is the largest value.
    ``val_subset``/``test_subset``: a seeded, stratified subset of the val/test split (e.g. the
    demo's fixed 2000 test images). A run that raises is recorded with its error; the others go on.
    ``resume`` continues a killed compare in ``out``: finished runs are read back, an interrupted
    one resumes from its checkpoint, the rest run; the options must be those it was started with.
    A non-empty ``out`` is refused unless ``resume`` or ``overwrite``.

    Example:
        >>> compare("flowers17/", strategies="scratch,fine-tune", seeds=2, out="cmp")  # doctest: +SKIP
    """
    d = data_options or DataOptions()
    t = train_options or TrainOptions()
    setup = prepare_compare(data, strategies=strategies, seeds=3 if seeds is None else seeds,
                            train_per_class=train_per_class, data_options=d, train_options=t, val_subset=val_subset,
                            test_subset=test_subset, source=source, tta=tta)
    seeds = default_seeds(seeds, t)
    names, src, splits = setup.names, setup.source, setup.splits
    out_dir = Path(out)
    leakage = _leakage_once(str(data), src, setup.whole, d, t)

    lock = claim_run_dir(out_dir, resume=resume, overwrite=overwrite)
    if resume:
        _check_resumable(out_dir, data=str(data), names=names, seeds=seeds, d=d, t=t)
    ctx = init_distributed(d.device)
    stores = _SharedStore(device=ctx.device, batch_size=t.batch_size, workers=d.num_workers,
                           progress=not d.quiet, runtime=t.runtime, disk=feature_cache(t))
    main_n, main_split = splits[-1]
    results: dict[str, Any] = {
        "status": "running", "data": str(data), "backbone": t.backbone, "seeds": seeds, "strategies_order": names,
        "strategies": {}, "machine": machine_info(),
        "split": {"fractions": d.split, "split_seed": d.split_seed, "train_per_class": main_n,
                  "val_subset": val_subset, "test_subset": test_subset, "sizes": main_split.sizes(),
                  "classes": list(src.classes)},
        "data_options": asdict(d), "train_options": asdict(t), "leakage": leakage,
        "sharing": {"rule": "every run shares the preprocessed images (boundary 0); pretrained runs also "
                            "share activations up to their lowest trainable stage" + (
                                "; a cross-validated run computes its features once for all its folds (pooled "
                                "features or HOG descriptors of pool+test, through the on-disk feature cache)"
                                if t.cv is not None else ""), "forward_images": 0},
    }
    if t.cv is not None:
        results["cv"] = {"k": t.cv, "folds": f"stratified over the non-test pool (train+val), seeded by the split "
                                             f"seed {d.split_seed}; the test split is in no fold; an entry trained by "
                                             "backprop is scored with each fold at the epochs the other folds chose"}
    if len(splits) > 1:
        results["efficiency"] = {"train_per_class": [n for n, _ in splits], "strategies": {}}
    total = len(splits) * len(names) * seeds
    bar = Counter(total=total, desc="compare", unit="run", enabled=not d.quiet)
    t_all = time.perf_counter()
    for k, (n, split) in enumerate(splits):
        if k:
            stores.new_training_set(keep_eval=d.normalize != "dataset")
        per_strategy: dict[str, dict[str, Any]] = {}
        for name in names:
            runs: list[dict[str, Any]] = []
            wall = 0.0
            for seed in range(seeds):
                run_dir = out_dir / "runs" / (f"n{n}" if len(splits) > 1 else "") / name.replace(":", "+") / f"seed{seed}"
                label = f"{name} seed {seed}" + (f" n={n}" if n is not None else "")
                bar.describe(label)
                store = stores.for_options(variant_options(name, t))
                before = dict(store._cache)
                t0, earlier = time.perf_counter(), 0.0
                done = _finished_record(run_dir, seed=seed) if resume else None
                try:
                    if done is not None:
                        earlier = float(done["timing"].get("total_s", 0.0))  # its wall when it ran
                        log.info("compare --resume: %s seed %d finished earlier in %.1fs (%s); not run again", name,
                                 seed, earlier, run_dir)
                        runs.append(done)
                        raise _AlreadyDone
                    again = resume and (run_dir / "config.json").is_file()
                    run = run_training(str(data), data_options=replace(d, seed=seed, train_per_class=n),
                                       train_options=variant_options(name, t), out=run_dir, source=src,
                                       split=split, store=store, save_predictions=True, resume=again,
                                       overwrite=resume and not again)
                    store._cache.update(before)
                    runs.append(_run_record(run, seed=seed, run_dir=run_dir))
                    if tta != "none":
                        runs[-1]["tta"] = measure_tta(run_dir, source=src, indices=split.test, mode=tta,
                                                      device=d.device)
                except _AlreadyDone:
                    pass
                except Exception as exc:  # recorded, the other runs go on (KeyboardInterrupt is not caught)
                    store._cache.clear()
                    store._cache.update(before)
                    message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    log.error("%s seed %d failed: %s", name, seed, message)
                    run_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(run_dir / "error.txt", traceback.format_exc())
                    runs.append({"seed": seed, "status": "failed", "backbone": variant_options(name, t).backbone,
                                 "run_dir": str(run_dir), "error": message})
                wall += time.perf_counter() - t0 + earlier
                per_strategy[name] = {"strategy": strategy_of(name), **summarize_runs(runs, wall)}
                if n == main_n:
                    results["strategies"][name] = per_strategy[name]
                if "efficiency" in results:
                    results["efficiency"]["strategies"].setdefault(name, {})[str(n)] = {
                        key: per_strategy[name][key] for key in
                        ("test_accuracy_mean", "test_accuracy_std", "macro_f1_mean", "macro_f1_std", "n_ok")}
                results["sharing"]["forward_images"] = stores.forward_images
                results["wall_s"] = round(time.perf_counter() - t_all, 3)
                atomic_write_text(out_dir / RESULTS, json.dumps(results, indent=2))
                bar.update()
                if runs[-1]["status"] == "ok" and not d.quiet:
                    r = runs[-1]
                    scored = (f"{r['cv_k']}-fold CV {r['cv_mean']:.4f} ± {r['cv_std']:.4f}" if "cv_mean" in r
                              else f"val {r['val_accuracy']:.4f}")
                    log.info("compare %d/%d: %s: %s, test %.4f (%.1fs)", bar.done, total, label, scored,
                             r["test_accuracy"], r["timing"]["total_s"])
    bar.close()
    results["status"] = "done"
    disk = stores.store.disk
    results["sharing"]["feature_cache_hits"] = disk.hits if disk is not None else 0
    n_cv = sum(1 for s in results["strategies"].values() for r in s["runs"] if "cv_mean" in r)
    n_runs = sum(len(s["runs"]) for s in results["strategies"].values())
    results["sharing"]["cv_runs"] = n_cv
    if n_cv < n_runs:
        log.info("compare: %d activation sets from the feature cache, %d images through the frozen prefix%s",
                 results["sharing"]["feature_cache_hits"], stores.forward_images,
                 " (every activation came from the cache)" if stores.forward_images == 0 else "")
    if n_cv:
        log.info("compare: %d cross-validated run(s) computed their features once for all %d folds (their log "
                 "lines say which came from the feature cache)", n_cv, t.cv)
    atomic_write_text(out_dir / RESULTS, json.dumps(results, indent=2))
    lock.release()
    return CompareResults(results)


class _AlreadyDone(Exception):
    """Control flow of ``compare --resume``: the run finished before the interruption."""


def _check_resumable(out_dir: Path, *, data: str, names: list[str], seeds: int, d: DataOptions,
                     t: TrainOptions) -> None:
    """``--resume`` continues the same compare: same data, strategies, seeds and options."""
    path = out_dir / RESULTS
    if not path.is_file():
        return  # killed before the first run finished: nothing to compare against
    try:
        old = json.loads(path.read_text())
        started = (old["data"], old["strategies_order"], old["seeds"], old["data_options"], old["train_options"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadFileError(path, f"not a compare's results ({exc})", "run the compare again with --overwrite") from None
    now = (data, names, seeds, json.loads(json.dumps(asdict(d))), json.loads(json.dumps(asdict(t))))
    labels = ("DATA", "--strategies", "--seeds", "data options", "train options")
    for label, a, b in zip(labels, started, now):
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                a, b = {k: a.get(k) for k in keys}, {k: b.get(k) for k in keys}
            raise ConfigError(f"--resume {out_dir}: {label} differ from the interrupted compare's ({a} then, {b} now); "
                              f"give the same options, or --overwrite to start over")


def best_strategy(results: dict[str, Any]) -> str | None:
    """The entry with the highest mean CV accuracy when every scored entry was cross-validated (``--cv``),
    else the highest mean test accuracy (None if every run failed).

    Example:
        >>> best_strategy({"strategies": {"a": {"test_accuracy_mean": 0.5}, "b": {"test_accuracy_mean": 0.9}}})
        'b'
        >>> best_strategy({"strategies": {"a": {"test_accuracy_mean": 0.5, "cv_mean": 0.9},
        ...                               "b": {"test_accuracy_mean": 0.9, "cv_mean": 0.8}}})
        'a'
    """
    ok = {k: v for k, v in results["strategies"].items() if v.get("test_accuracy_mean") is not None}
    key = "cv_mean" if ok and all(v.get("cv_mean") is not None for v in ok.values()) else "test_accuracy_mean"
    scored = [(v[key], k) for k, v in ok.items()]
    return max(scored)[1] if scored else None
