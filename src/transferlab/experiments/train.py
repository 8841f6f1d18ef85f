"""``transferlab train`` / ``transferlab.train``: data + task + backbone + plan -> a run directory.

One pipeline and one run lifecycle for every task (``transferlab.tasks``): the task reads its
targets, builds its head, datasets, loss and metrics; this module does the rest (split, plan,
engine, ``config.json``, ``metrics.json``, ``model.json`` + ``model.safetensors``, resume).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.calibration import calibrate_splits, check_calibration
from transferlab.data import ImageSource, Split, atomic_write_text, load_split, make_split, parse_fractions, save_split
from transferlab.engine import ActivationStore, Engine, SplitInputs, init_distributed
from transferlab.errors import BadFileError, ConfigError
from transferlab.experiments.artifacts import save_model
from transferlab.experiments.cv import check_cv
from transferlab.experiments.cvsupport import supports_cv
from transferlab.experiments.pipeline import (
    Outcome,
    RunSetup,
    cache_fingerprint,
    feature_cache,
    make_plan,
    plan_options,
)
from transferlab.experiments.rundir import claim_run_dir
from transferlab.experiments.schema import read_config_json
from transferlab.options import DataOptions, TrainOptions, options_from_kwargs
from transferlab.strategies import Plan, TransferModel, fit_linear_probe
from transferlab.strategies.plans import FEATURE_BASELINES
from transferlab.tasks import DEFAULT_TASK, canonical, get_task
from transferlab.tasks.base import item_keys
from transferlab.tasks.classify import head_config
from transferlab.zoo import check_backbone_name

__all__ = ["CONFIG", "METRICS", "Run", "cache_fingerprint", "feature_cache", "head_config", "item_keys", "localize",
           "make_plan", "plan_options", "resume_training", "run_localization", "run_training", "train"]

log = logging.getLogger("transferlab")
CONFIG = "config.json"
METRICS = "metrics.json"


@dataclass
class Run:
    """The outcome of a training run of any task (also on disk in ``run_dir``)."""

    run_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]
    classes: list[str]
    model: Any = field(repr=False)

    @property
    def task(self) -> str:
        return str(self.metrics.get("task", DEFAULT_TASK))

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["test"]["accuracy"])

    def predict(self, images: Any, *, top: int = 5) -> list[dict[str, Any]]:
        """Top classes of images (paths or PIL images) with the saved model (see ``transferlab.load``)."""
        if self.run_dir is None:
            raise ConfigError("run.predict needs the run directory: train with out=RUN_DIR")
        from transferlab.api import load

        return load(self.run_dir).predict(images, top=top)

    def __repr__(self) -> str:
        from transferlab.api import run_lines

        return "\n".join(run_lines(self))

    def _repr_html_(self) -> str:
        from transferlab.api import run_html

        return run_html(self)


def setup_logging(*, quiet: bool, is_main: bool = True) -> None:
    logger = logging.getLogger("transferlab")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet or not is_main else logging.INFO)


def versions() -> dict[str, str]:
    import timm
    import torchvision

    from transferlab import __version__

    return {"transferlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__}


def _config(data: str, d: DataOptions, t: TrainOptions, plan: Plan, *, task: str = DEFAULT_TASK,
            task_options: Any = None) -> dict[str, Any]:
    return _config_dict(data, d, t, plan=plan.to_dict(), task=task, task_options=task_options)


def _config_dict(data: str, d: DataOptions, t: TrainOptions, *, plan: dict[str, Any] | None,
                 task: str = DEFAULT_TASK, task_options: Any = None) -> dict[str, Any]:
    return {"task": task, "data": str(data),
            **({"data_path": str(Path(data).resolve())} if Path(data).exists() else {}),
            "data_options": asdict(d), "train_options": asdict(t),
            **({"task_options": asdict(task_options)} if task_options is not None else {}),
            "plan": plan, "versions": versions(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads()}}


def config_data(cfg: dict[str, Any]) -> str:
    """The dataset a run's ``config.json`` trained on: as given when it resolves from here, else its absolute path.

    Example:
        >>> config_data({"data": "no/such/relative/dir", "data_path": "/abs/flowers17"})
        '/abs/flowers17'
    """
    given = str(cfg["data"])
    return given if Path(given).exists() or "data_path" not in cfg else str(cfg["data_path"])


def _for_task(task: str, t: TrainOptions) -> TrainOptions:
    """``t`` for a task other than classification: its options that only classification has are refused,
    and ``--strategy auto`` (the search, classification only) becomes fine-tune, said in one line."""
    only = [flag for flag, on in (("--cv", t.cv is not None), ("--ensemble", t.ensemble),
                                  ("--calibrate", t.calibrate != "none"), ("--unlabeled", bool(t.unlabeled)),
                                  ("--strategy hog-svm", t.strategy in FEATURE_BASELINES)) if on]
    if only:
        raise ConfigError(f"{', '.join(only)}: classification only; --task {task} trains with a --strategy "
                          f"such as fine-tune or feature-extraction")
    if t.strategy != "auto" or t.plan:
        return t
    log.info("--strategy auto searches classification strategies; --task %s trains fine-tune (its measured "
             "default)", task)
    return replace(t, strategy="fine-tune")


def run_training(data: str, *, data_options: DataOptions, train_options: TrainOptions,
                 out: str | os.PathLike[str] | None = None, resume: bool = False,
                 callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
                 source: ImageSource | None = None, split: Split | None = None,
                 store: ActivationStore | None = None, save_predictions: bool = False,
                 overwrite: bool = False, task: str = DEFAULT_TASK, task_options: Any = None) -> Run:
    """Train one strategy for one task on one dataset and write the run directory (rank 0 only).

    The one pipeline of every task: data -> task targets -> split -> plan -> engine -> artifacts.
    ``task`` is a registry name or alias (``classify``, ``localize``); ``task_options`` the task's
    own options (e.g. ``LocalizeOptions``; its defaults when None).
    ``callbacks`` are called with each epoch's history record, after its checkpoint is written
    (``--cv``: every fold's records, with their ``fold`` and epochs numbered on across the folds).
    ``source``/``split`` reuse an already opened dataset and split (``data`` is then only recorded);
    ``store`` shares cached frozen-prefix activations between runs (the caller guarantees its entries
    were computed with this run's stages below each boundary, see ``experiments.compare``);
    ``save_predictions`` writes ``predictions_test.csv`` (classification; other tasks always do).
    With ``train_options.cv = K`` the strategy is scored by K-fold cross-validation over the
    non-test pool (:mod:`transferlab.experiments.cvfit`; linear-probe: :mod:`transferlab.experiments.auto`)
    and ``metrics["cv"]`` holds ``k, cv_mean, cv_std, cv_loss_mean, cv_loss_std, fold_accuracy``.
    The run folder is locked for the run; a non-empty one is refused unless ``resume`` or
    ``overwrite`` (see :mod:`transferlab.experiments.rundir`).
    """
    t_start = time.perf_counter()
    d, t = data_options, train_options
    spec = get_task(task)
    to = task_options if task_options is not None or spec.options_class is None else spec.options_class()
    spec.check(data_options=d, train_options=t, options=to)
    ctx = init_distributed(d.device)
    setup_logging(quiet=d.quiet, is_main=ctx.is_main)
    run_dir = Path(out) if out is not None else None
    check_backbone_name(t.backbone)  # a misspelt name fails before the dataset scan and before --out exists
    lock = claim_run_dir(run_dir, resume=resume, overwrite=overwrite) if run_dir is not None and ctx.is_main else None
    own_split = split is None  # compare passes its split and checks it for leakage once
    prepared, skipped, split = _open_data(data, spec, to, d, source=source, split=split, resume=resume,
                                          run_dir=run_dir)
    source = prepared.source
    if ctx.is_main:
        log.info("%s", describe_split(split, source, train_per_class=d.train_per_class, resumed=resume))
    if spec.name != "classification":
        t = _for_task(spec.name, t)
    elif t.strategy in FEATURE_BASELINES:  # no network: hand-crafted features and a classifier
        from transferlab.experiments.baselines import run_hog_svm  # --cv: C chosen by the folds

        return run_hog_svm(data, source=source, split=split, data_options=d, train_options=t,
                           run_dir=run_dir if ctx.is_main else None, save_predictions=save_predictions)
    _check_selection(t, split, source, resume=resume)
    if (t.strategy == "auto" or (t.cv is not None and t.strategy == "linear-probe")) and not t.plan:
        from transferlab.experiments.auto import Search, auto_run  # CV on cached pooled features

        return auto_run(data, source=source, split=split, data_options=d, train_options=t,
                        run_dir=run_dir if ctx.is_main else None, t_start=t_start,
                        search=Search() if t.strategy == "auto" else Search.probe(t))
    setup = RunSetup.build(spec=spec, prepared=prepared, split=split, data_options=d, train_options=t,
                           task_options=to, ctx=ctx, store=store,
                           norm_idx=None if t.cv is None else np.concatenate([split.train, split.val]))
    inputs = _split_inputs(setup) if t.cv is None else None  # checked (e.g. --unlabeled) before anything is written
    engine = setup.engine(callbacks=callbacks)
    config = _config(data, d, t, setup.plan, task=spec.name, task_options=to)
    if run_dir is not None and ctx.is_main:  # everything is validated: the run is about to happen
        save_split(split, source, run_dir)
        if not (resume and (run_dir / CONFIG).is_file()):
            atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2))
    if t.cv is not None:
        from transferlab.experiments.cvfit import run_cv

        outcome = run_cv(setup, callbacks=callbacks)
    else:
        assert inputs is not None
        outcome = _fit_split(setup, engine, inputs, run_dir=run_dir, resume=resume)
    metrics, temperature = _metrics(setup, outcome, data=data, own_split=own_split, skipped=skipped, t_start=t_start)
    _write_run(setup, outcome, metrics, temperature, run_dir=run_dir, save_predictions=save_predictions)
    ctx.barrier()
    if lock is not None:
        lock.release()
    tm = metrics["timing"]
    earlier = (f", {metrics['resumed_train_s']:.1f}s of the training before the resume"
               if "resumed_train_s" in metrics else "")
    log.info("timings: %.1fs = extraction %.1fs + training %.1fs + other %.1fs (scan, setup, evaluation, "
             "writing%s)%s", tm["total_s"], tm["extract_s"], tm["train_s"], tm["other_s"], earlier,
             f"; run directory {run_dir}" if run_dir is not None else "")
    return Run(run_dir=run_dir, metrics=metrics, history=outcome.history, config=config, classes=setup.classes,
               model=outcome.model)


def _open_data(data: str, spec: Any, to: Any, d: DataOptions, *, source: ImageSource | None, split: Split | None,
               resume: bool, run_dir: Path | None) -> tuple[Any, list[Any], Split]:
    """The task's prepared dataset, the files skipped while reading it, and the split (given, read back, or made)."""
    prepared = (spec.prepare(source, options=to) if source is not None
                else spec.read(data, options=to, quiet=d.quiet))
    skipped = list(source.skipped) if source is not None else prepared.skipped
    if split is not None:
        return prepared, skipped, split
    if resume and run_dir is not None and (run_dir / "split_train.txt").is_file():
        return prepared, skipped, load_split(run_dir, prepared.source)
    return prepared, skipped, make_split(prepared.source, fractions=parse_fractions(d.split, option="--split"),
                                         seed=d.split_seed, train_per_class=d.train_per_class)


def _check_selection(t: TrainOptions, split: Split, source: ImageSource, *, resume: bool) -> None:
    """How the run selects (one split, ``--refit``, ``--cv``, ``--ensemble``, ``--calibrate``): bad combinations
    are one line each, before any training."""
    if t.ensemble and t.cv is None and t.strategy != "auto":
        raise ConfigError("--ensemble averages the K fold models of cross-validation: give --cv K (or --strategy auto)")
    if t.cv is None:  # a held-out val split first: --calibrate with --refit is refused for that, whatever the strategy
        check_calibration(t.calibrate, n_val=len(split.val), refit=t.refit)
    searched = (t.strategy == "auto" or t.strategy == "linear-probe" and t.cv is not None) and not t.plan
    if searched and t.calibrate != "none":
        raise ConfigError(f"--calibrate {t.calibrate} fits a temperature on the logits of one network; the probe "
                          f"search (--strategy auto, or linear-probe with --cv) saves averaged probabilities: give "
                          f"a backprop --strategy (e.g. fine-tune) with or without --cv")
    if t.cv is None:
        return
    if t.refit:
        raise ConfigError(f"--refit with --cv {t.cv}: cross-validation already trains the final model on the whole "
                          f"non-test pool (or keeps the fold models with --ensemble); drop --refit")
    if not supports_cv(t):
        raise ConfigError(f"--unlabeled with --cv {t.cv}: pseudo-labels are fitted on one train split; drop one")
    check_cv(t.cv, source.labels[np.concatenate([split.train, split.val])], list(source.classes))
    check_calibration(t.calibrate, n_val=len(split.train) + len(split.val), refit=False)
    if resume:
        log.info("--resume: a cross-validated run keeps no checkpoint; its folds run again from the start")


SplitsIn = tuple[SplitInputs, SplitInputs, SplitInputs, SplitInputs | None]  # train, val, test, unlabeled


def _split_inputs(setup: RunSetup) -> SplitsIn:
    """train (with its augmented view), val, test, and the ``--unlabeled`` folder's images (or None)."""
    split = setup.split
    return (setup.inputs("train", split.train, training=True), setup.inputs("val", split.val),
            setup.inputs("test", split.test), _unlabeled_inputs(setup) if setup.t.unlabeled else None)


def _fit_split(setup: RunSetup, engine: Engine, inputs: SplitsIn, *, run_dir: Path | None, resume: bool) -> Outcome:
    """The single run: train on the train split, select on val (``--refit``: then train on train+val)."""
    t, model = setup.t, setup.model
    train_in, val_in, test_in, unl_in = inputs
    extra: dict[str, Any] = {}
    if unl_in is not None and setup.plan.strategy == "feature-extraction":
        from transferlab.unlabeled.train import add_pseudo_labelled

        train_in, extra["unlabeled"] = add_pseudo_labelled(
            setup.store, model, train_in, unl_in, boundary=len(setup.kept), method=t.unlabeled_method,
            threshold=t.unlabeled_threshold, seed=setup.d.seed, folder=t.unlabeled)
    if setup.plan.strategy == "linear-probe" and not setup.plan.phases:
        val_out, train_s = _fit_probe(setup, engine, train_in, val_in, unl_in, extra)
        history, best_epoch, boundary = [], None, len(setup.kept)
    else:
        if t.refit:
            setup.snapshot()
        fit = engine.fit(setup.plan, train=train_in, val=val_in, run_dir=run_dir, resume=resume)
        history, best_epoch, train_s = fit.history, fit.best_epoch, fit.train_s
        extra["early_stops"] = fit.early_stops
        if fit.resumed_train_s:
            extra["resumed_train_s"] = round(fit.resumed_train_s, 3)
        if fit.restored is not None:
            extra["restored"] = fit.restored
        boundary = setup.boundary
        val_out = engine.predict(val_in, boundary=boundary)  # the held-out selection run's
        if t.refit:
            extra["refit"] = setup.refit_train_val(engine, fit, train_in, val_in)
            train_s += extra["refit"]["train_s"]
    test_out = engine.predict(test_in, boundary=boundary)
    return Outcome(model=model, val_out=val_out, val_labels=val_in.labels, test_out=test_out,
                   test_labels=test_in.labels, history=history, best_epoch=best_epoch, train_s=train_s,
                   extract_s=engine.extract_s, extra=extra)


def _fit_probe(setup: RunSetup, engine: Engine, train_in: SplitInputs, val_in: SplitInputs,
               unl_in: SplitInputs | None, extra: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """linear-probe on one split: val logits of the train-only fit that val selected, and the fit's seconds.

    The model keeps the final head (refit on train+val at the chosen C); ``extra["probe"]`` says how.
    """
    d, t, model, n_kept = setup.d, setup.t, setup.model, len(setup.kept)
    if d.augment != "none" and t.views == 0 and setup.ctx.is_main:
        log.info("linear-probe fits on the features of the clean training images: --augment %s applies to "
                 "phases trained by backprop (--views K gives the probe K augmented copies)", d.augment)
    probe, fit_s = _linear_probe(engine, train_in, val_in, t, n_kept, len(setup.classes), d.seed)
    if unl_in is not None:
        from transferlab.unlabeled.train import pooled, probe_with_unlabeled

        xs = [pooled(engine.store, model, s, n_kept) for s in (train_in, val_in, unl_in)]
        probe, extra["unlabeled"] = probe_with_unlabeled(
            probe, xs[0], train_in.labels.numpy(), xs[1], val_in.labels.numpy(), xs[2],
            num_classes=len(setup.classes), classifier=t.classifier, method=t.unlabeled_method,
            threshold=t.unlabeled_threshold, seed=d.seed, folder=t.unlabeled)
    extra["probe"] = {"classifier": probe.classifier, "C": probe.C, "refit_on": "train+val",
                      "val_accuracy_by_C": {str(k): v for k, v in probe.grid.items()}}
    _set_linear_head(model, probe.selection_weight, probe.selection_bias)
    val_out = engine.predict(val_in, boundary=n_kept)  # the train-only fit that val selected
    _set_linear_head(model, probe.weight, probe.bias)  # final: refit on train+val
    return val_out, fit_s


def _unlabeled_inputs(setup: RunSetup) -> SplitInputs:
    """``--unlabeled FOLDER`` as inputs through the run's eval transform."""
    from transferlab.unlabeled.train import open_for_run, unlabeled_inputs

    t = setup.t
    return unlabeled_inputs(open_for_run(t.unlabeled, strategy=setup.plan.strategy, source=setup.source,
                                         split=setup.split),
                            transform=setup.eval_tf, draft_size=setup.model.preprocessing.resize_size)


def _metrics(setup: RunSetup, out: Outcome, *, data: str, own_split: bool, skipped: list[Any],
             t_start: float) -> tuple[dict[str, Any], float | None]:
    """``metrics.json`` (val/test metrics, calibrated when asked, timing, sizes, what the fit reported) and the
    fitted temperature (``--calibrate temperature``) or None."""
    spec, ctx, split, classes = setup.spec, setup.ctx, setup.split, setup.classes
    extra = out.extra
    if ctx.is_main and own_split:  # after training: from the features the run left in the cache, if any
        extra["leakage"] = leakage_check(str(data), setup.source, split, setup.d, setup.t, setup.plan)
    if hasattr(spec, "after_fit"):  # e.g. multilabel thresholds chosen on val
        spec.after_fit(out.model, out.val_out, out.val_labels)
    temperature, calibration = (calibrate_splits(setup.t.calibrate, val=(out.val_out, out.val_labels),
                                                 test=(out.test_out, out.test_labels))
                                if spec.name == "classification" else (None, {"val": {}, "test": {}}))

    def scores(outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        return spec.split_metrics(outputs, labels, classes=classes, objective=setup.objective, model=out.model)

    metrics = {
        "task": spec.name,
        "strategy": setup.plan.strategy,
        "backbone": setup.t.backbone,
        **spec.run_metrics(prepared=setup.prepared, options=setup.to),
        "val": {**scores(out.val_out, out.val_labels), **({"what": out.val_what} if out.val_what else {})},
        "test": scores(out.test_out, out.test_labels),
        "timing": run_timing(total_s=time.perf_counter() - t_start + out.extra.get("resumed_train_s", 0.0),
                             extract_s=out.extract_s, train_s=out.train_s),
        "best_epoch": out.best_epoch,
        "split_sizes": split.sizes(),
        "skipped_files": [list(s) for s in skipped],
        **extra,
    }
    for name in ("val", "test"):
        metrics[name].update(calibration[name])
    if temperature is not None:
        fitted_on = "the out-of-fold logits of the pool" if out.val_what else "val"
        log.info("temperature scaling: T = %.3f fitted on %s (%d images); test ECE %.4f -> %.4f", temperature,
                 fitted_on, len(out.val_labels), calibration["test"]["ece_uncalibrated"], calibration["test"]["ece"])
    return metrics, temperature


def _write_run(setup: RunSetup, out: Outcome, metrics: dict[str, Any], temperature: float | None, *,
               run_dir: Path | None, save_predictions: bool) -> None:
    """The model, ``metrics.json`` and the task's outputs (rank 0); ``cv.json`` for a cross-validated run."""
    if run_dir is None or not setup.ctx.is_main:
        return
    spec, plan = setup.spec, setup.plan
    save_model(run_dir, out.model, classes=setup.classes, norm=setup.norm, task=spec.name,
               extra={"strategy": plan.strategy, f"test_{spec.score_name}": spec.headline(metrics),
                      **({"temperature": temperature} if temperature is not None else {})})
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
    if "cv" in metrics:
        atomic_write_text(run_dir / "cv.json", json.dumps({**metrics["cv"], "final": metrics.get("final")}, indent=2))
        atomic_write_text(run_dir / "cv_history.jsonl", "".join(json.dumps(h) + "\n" for h in out.history))
    spec.write_outputs(run_dir, prepared=setup.prepared, indices=setup.split.test,
                       outputs=out.test_out / (temperature or 1.0), labels=out.test_labels, classes=setup.classes,
                       save_predictions=save_predictions, model=out.model)


def leakage_check(data: str, source: ImageSource, split: Split, d: DataOptions, t: TrainOptions,
                  plan: Plan) -> dict[str, Any] | None:
    """The one-line cross-split near-duplicate warning, from the pretrained features in the feature cache."""
    from transferlab.audit.leakage import check_split_leakage

    if not plan.pretrained:
        return None
    opt = "" if d.split == DataOptions.split else f" --split {d.split}"
    opt += "" if d.split_seed == 0 else f" --split-seed {d.split_seed}"
    return check_split_leakage(source, split, data=data, backbone=t.backbone, weights=t.weights,
                               cache=feature_cache(t), compute=False, split_option=opt)


def run_timing(*, total_s: float, extract_s: float, train_s: float) -> dict[str, float]:
    """The ``timing`` block of metrics.json: parts that add up to ``total_s``.

    ``extract_s``: frozen-prefix activations computed (the cached inputs of the trainable stages);
    ``train_s``: the epochs (or the linear probe's fit), extraction excluded; ``other_s``: the rest
    (dataset scan, model build, normalisation, evaluation on cached inputs, writing files).

    Example:
        >>> run_timing(total_s=23.2, extract_s=9.3, train_s=13.9)
        {'total_s': 23.2, 'extract_s': 9.3, 'train_s': 13.9, 'other_s': 0.0}
    """
    total, ext, trn = round(total_s, 3), round(extract_s, 3), round(train_s, 3)
    return {"total_s": total, "extract_s": ext, "train_s": trn, "other_s": round(max(total - ext - trn, 0.0), 3)}


def describe_split(split: Split, source: ImageSource, *, train_per_class: int | None, resumed: bool) -> str:
    """The split sizes in one line (after ``--train-per-class`` subsampling).

    Example:
        >>> describe_split(split, source, train_per_class=10, resumed=False)  # doctest: +SKIP
        'split: train 170 (10 per class), val 340, test 340 images'
    """
    sizes = split.sizes()
    per = f" ({train_per_class} per class)" if train_per_class else ""
    how = " (read back from the run directory)" if resumed else ""
    return f"split: train {sizes['train']}{per}, val {sizes['val']}, test {sizes['test']} images{how}"


def _linear_probe(engine: Engine, train_in: SplitInputs, val_in: SplitInputs, t: TrainOptions, n_kept: int,
                  num_classes: int, seed: int) -> tuple[Any, float]:
    """The probe fitted on the cached features, and the seconds of the fit itself (extraction excluded)."""
    model = engine.model

    def feats(split: SplitInputs) -> np.ndarray:
        acts = engine.store.get(split, n_kept)
        if acts is None:
            raise ConfigError("linear-probe features do not fit the cache budget; use a smaller --cut or data")
        with torch.inference_mode():
            return torch.cat([model.pool(acts[i : i + 256]) for i in range(0, len(acts), 256)]).numpy()

    t0 = time.perf_counter()
    xtr, xva = feats(train_in), feats(val_in)
    engine.extract_s += time.perf_counter() - t0
    t1 = time.perf_counter()
    probe = fit_linear_probe(xtr, train_in.labels.numpy(), xva, val_in.labels.numpy(), num_classes=num_classes,
                             classifier=t.classifier, seed=seed)
    if model.head[-1].in_features != probe.weight.shape[1]:
        raise ConfigError(f"linear-probe needs --head linear, got a {t.head} head")
    return probe, time.perf_counter() - t1


def _set_linear_head(model: TransferModel, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        model.head[-1].weight.copy_(weight)
        model.head[-1].bias.copy_(bias)


def _task_option_objects(task: str, kwargs: dict[str, Any]) -> tuple[DataOptions, TrainOptions, Any]:
    """Data, train and task options of ``task`` picked out of ``kwargs`` (with the task's defaults)."""
    spec = get_task(task)
    to = options_from_kwargs(spec.options_class, kwargs) if spec.options_class is not None else None
    if getattr(spec, "default_split", None):
        kwargs.setdefault("split", spec.default_split)
    d = options_from_kwargs(DataOptions, kwargs)
    t = options_from_kwargs(getattr(spec, "train_options_class", TrainOptions), kwargs)
    return d, t, to


def train(data: str, *, out: str | os.PathLike[str] | None = None, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), task: str = DEFAULT_TASK,
          **options: Any) -> Run:
    """Python API mirroring ``transferlab train``; options are the CLI flags' names (the task's too).

    Example:
        >>> import transferlab
        >>> run = transferlab.train("flowers17/", backbone="efficientnet_lite0",
        ...                         strategy="feature-extraction", out="runs/fe")  # doctest: +SKIP
        >>> run.test_accuracy  # doctest: +SKIP
        0.96
        >>> boxes = transferlab.train("oxford-pets-3/", task="localize", out="runs/loc")  # doctest: +SKIP
    """
    kwargs = dict(options)
    d, t, to = _task_option_objects(task, kwargs)
    if kwargs:
        raise ConfigError(f"unknown option(s) {sorted(kwargs)} for transferlab.train (task {canonical(task)})")
    return run_training(data, data_options=d, train_options=t, out=out, resume=resume, callbacks=callbacks,
                        overwrite=overwrite, task=task, task_options=to)


def localize(data: str, *, out: str | os.PathLike[str] | None = None, **options: Any) -> Run:
    """``train(data, task="localize", ...)``: the Python API of ``transferlab localize train``.

    Example:
        >>> run = localize("../shared/datasets/oxford-pets-3", backbone="efficientnet_lite0",
        ...                strategy="fine-tune", out="runs/loc-ft")  # doctest: +SKIP
        >>> run.metrics["test"]["mean_iou"]  # doctest: +SKIP
        0.70
    """
    kwargs = dict(options)
    d, t, to = _task_option_objects("localization", kwargs)
    if kwargs:
        raise ConfigError(f"unknown option(s) {sorted(kwargs)} for transferlab.localize")
    return run_training(data, data_options=d, train_options=t, out=out, task="localization", task_options=to)


def run_localization(data: str, *, data_options: DataOptions, train_options: TrainOptions, loc_options: Any,
                     out: str | os.PathLike[str] | None = None) -> Run:
    """``run_training`` for the localization task (kept for callers of the former pipeline)."""
    return run_training(data, data_options=data_options, train_options=train_options, out=out,
                        task="localization", task_options=loc_options)


def resume_training(run_dir: str | os.PathLike[str], *, quiet: bool | None = None,
                    callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> Run:
    """Continue an interrupted run of any task from its last checkpoint, with the options it was started with."""
    cfg_path = Path(run_dir) / CONFIG
    if not cfg_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG} there (not a transferlab run directory)")
    cfg = read_config_json(run_dir)
    try:
        spec = get_task(cfg.get("task", DEFAULT_TASK))
        d = DataOptions(**cfg["data_options"])
        if quiet is not None:
            d = DataOptions(**{**asdict(d), "quiet": quiet})
        t = getattr(spec, "train_options_class", TrainOptions)(**cfg["train_options"])
        raw = cfg.get("task_options", cfg.get("localize_options"))
        to = spec.options_class(**raw) if spec.options_class is not None and raw is not None else None
    except (TypeError, ConfigError) as exc:
        raise BadFileError(cfg_path, f"holds options this version cannot use ({exc})",
                           "start the run again with --overwrite") from None
    return run_training(config_data(cfg), data_options=d, train_options=t, out=run_dir, resume=True,
                        callbacks=callbacks, task=spec.name, task_options=to)
