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
from transferlab.data import (
    ImageSource,
    NormStats,
    Split,
    atomic_write_text,
    batch_augmentation,
    compute_norm_stats,
    load_split,
    make_split,
    parse_fractions,
    save_split,
)
from transferlab.engine import (
    ActivationStore,
    Engine,
    EngineOptions,
    SplitInputs,
    concat_inputs,
    init_distributed,
)
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import BadFileError, ConfigError
from transferlab.experiments.artifacts import save_model
from transferlab.experiments.rundir import claim_run_dir
from transferlab.experiments.schema import read_config_json
from transferlab.options import DataOptions, TrainOptions, options_from_kwargs
from transferlab.strategies import Plan, PlanOptions, TransferModel, build_plan, check_cut, fit_linear_probe, load_plan
from transferlab.strategies.plans import FEATURE_BASELINES
from transferlab.tasks import DEFAULT_TASK, canonical, get_task
from transferlab.tasks.base import item_keys
from transferlab.tasks.classify import head_config
from transferlab.zoo import Backbone, check_backbone_name, create_backbone

__all__ = ["CONFIG", "METRICS", "Run", "head_config", "item_keys", "localize", "make_plan", "resume_training",
           "run_localization", "run_training", "train"]

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


def plan_options(t: TrainOptions) -> PlanOptions:
    names = PlanOptions.__dataclass_fields__
    return PlanOptions(**{k: v for k, v in asdict(t).items() if k in names})


def make_plan(t: TrainOptions, stage_names: list[str]) -> Plan:
    if t.plan:
        return load_plan(t.plan)
    return build_plan(t.strategy, stage_names=stage_names, options=plan_options(t))


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
    ``callbacks`` are called with each epoch's history record, after its checkpoint is written.
    ``source``/``split`` reuse an already opened dataset and split (``data`` is then only recorded);
    ``store`` shares cached frozen-prefix activations between runs (the caller guarantees its entries
    were computed with this run's stages below each boundary, see ``experiments.compare``);
    ``save_predictions`` writes ``predictions_test.csv`` (classification; other tasks always do).
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
    prepared = (spec.prepare(source, options=to) if source is not None
                else spec.read(data, options=to, quiet=d.quiet))
    skipped = list(source.skipped) if source is not None else prepared.skipped
    source = prepared.source
    if split is not None:
        pass
    elif resume and run_dir is not None and (run_dir / "split_train.txt").is_file():
        split = load_split(run_dir, source)
    else:
        split = make_split(source, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed,
                           train_per_class=d.train_per_class)
    if ctx.is_main:
        log.info("%s", describe_split(split, source, train_per_class=d.train_per_class, resumed=resume))
    if spec.name != "classification":
        t = _for_task(spec.name, t)
    elif t.strategy in FEATURE_BASELINES:  # no network: hand-crafted features and a classifier
        from transferlab.experiments.baselines import run_hog_svm

        return run_hog_svm(data, source=source, split=split, data_options=d, train_options=t,
                           run_dir=run_dir if ctx.is_main else None, save_predictions=save_predictions)
    check_calibration(t.calibrate, n_val=len(split.val), refit=t.refit)
    if t.ensemble and t.cv is None and t.strategy != "auto":
        raise ConfigError("--ensemble averages the K fold models of cross-validation: give --cv K (or --strategy auto)")
    if (t.strategy == "auto" or t.cv is not None) and not t.plan:  # experiments.auto: CV on cached features
        from transferlab.experiments.auto import Search, auto_run

        if t.strategy not in ("auto", "linear-probe"):
            raise ConfigError(f"--cv applies to --strategy auto and linear-probe (features computed once for all "
                              f"folds); got --strategy {t.strategy}: use --refit for one held-out selection")
        if t.calibrate != "none":
            raise ConfigError(f"--calibrate {t.calibrate} fits a temperature on the val split of one run; the "
                              f"cross-validated search (--strategy auto or --cv) has no such split: give an "
                              f"explicit --strategy (e.g. fine-tune) without --cv")
        return auto_run(data, source=source, split=split, data_options=d, train_options=t,
                        run_dir=run_dir if ctx.is_main else None, t_start=t_start,
                        search=Search() if t.strategy == "auto" else Search.probe(t))
    torch.manual_seed(d.seed)
    backbone = create_backbone(t.backbone, pretrained=False)  # random init: the scratch baseline's
    kept = check_cut(t.cut, stage_names=backbone.stage_names, backbone=t.backbone)
    if t.runtime == "onnx" and ctx.device.type != "cpu":
        raise ConfigError(f"--runtime onnx runs on the CPU only; got --device {d.device} ({ctx.device})")
    plan = make_plan(t, kept)
    plan.validate(kept)
    if plan.pretrained:
        backbone = create_backbone(t.backbone, pretrained=True, weights=t.weights)
    if t.input_size is not None:
        backbone.preprocessing = backbone.preprocessing.with_input_size(t.input_size)
    classes = list(prepared.classes or source.classes)
    model = spec.build_model(backbone, train_options=t, options=to, num_classes=len(classes))
    pre = model.preprocessing
    norm = compute_norm_stats(d.normalize, source=source, indices=split.train, preprocessing=pre)
    eval_tf, train_tf = spec.transforms(pre, norm, data_options=d, options=to)

    def inputs(name: str, idx: np.ndarray, *, training: bool = False) -> SplitInputs:
        got = spec.inputs(prepared, idx, training=training, eval_tf=eval_tf, train_tf=train_tf, preprocessing=pre,
                          data_options=d, train_options=t, options=to)
        return SplitInputs(name=name + got.name_suffix, labels=got.labels, eval_dataset=got.eval_dataset,
                           train_dataset=got.train_dataset, items=got.items)

    train_in, val_in, test_in = inputs("train", split.train, training=True), inputs("val", split.val), inputs("test", split.test)
    unl_in = None
    if t.unlabeled:
        from transferlab.unlabeled.train import open_for_run, unlabeled_inputs

        unl_in = unlabeled_inputs(open_for_run(t.unlabeled, strategy=plan.strategy, source=source, split=split),
                                  transform=eval_tf, draft_size=pre.resize_size)
    config = _config(data, d, t, plan, task=spec.name, task_options=to)
    class_weights = None
    if t.class_weights == "auto":
        counts = np.bincount(source.labels[split.train], minlength=len(classes)).astype(float)
        class_weights = tuple(float(x) for x in counts.sum() / (len(counts) * np.maximum(counts, 1)))
    if store is None:
        store = ActivationStore(
            model, device=ctx.device, batch_size=max(t.batch_size, 64), num_workers=d.num_workers,
            progress=not d.quiet and ctx.is_main, disk=feature_cache(t),
            fingerprint=cache_fingerprint(backbone, norm) if plan.pretrained else None, runtime=t.runtime,
        )
    elif store.runtime != t.runtime:
        raise ConfigError(f"--runtime {t.runtime}: the shared activation store runs {store.runtime}")
    else:  # a shared store (compare) keys its disk entries with this run's weights and normalisation
        store.fingerprint = cache_fingerprint(backbone, norm) if plan.pretrained else None
    store.pristine_upto = len(kept)  # before any phase runs, nothing has trained
    objective = spec.objective(train_options=t, class_weights=class_weights, options=to, device=ctx.device,
                               num_classes=len(classes))
    engine = Engine(
        model, ctx=ctx,
        options=EngineOptions(batch_size=t.batch_size, seed=d.seed, patience=t.patience,
                              label_smoothing=t.label_smoothing, class_weights=class_weights,
                              balanced_sampler=t.balanced_sampler, precision=t.precision, num_workers=d.num_workers,
                              cache=t.cache, quiet=d.quiet, monitor=t.monitor),
        store=_adopt(store, model),
        cacheable_train=spec.cacheable_train(data_options=d, train_options=t, options=to),
        batch_augment=batch_augmentation(None if d.batch_augment == "none" else d.batch_augment,
                                         num_classes=len(classes)),
        callbacks=callbacks, task=objective,
    )
    if run_dir is not None and ctx.is_main:  # everything is validated: the run is about to happen
        save_split(split, source, run_dir)
        if not (resume and (run_dir / CONFIG).is_file()):
            atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2))
    n_kept = len(kept)
    extra: dict[str, Any] = {}
    if unl_in is not None and plan.strategy == "feature-extraction":
        from transferlab.unlabeled.train import add_pseudo_labelled

        train_in, extra["unlabeled"] = add_pseudo_labelled(
            store, model, train_in, unl_in, boundary=n_kept, method=t.unlabeled_method,
            threshold=t.unlabeled_threshold, seed=d.seed, folder=t.unlabeled)
    if plan.strategy == "linear-probe" and not plan.phases:
        if d.augment != "none" and t.views == 0 and ctx.is_main:
            log.info("linear-probe fits on the features of the clean training images: --augment %s applies to "
                     "phases trained by backprop (--views K gives the probe K augmented copies)", d.augment)
        probe, fit_s = _linear_probe(engine, train_in, val_in, t, n_kept, len(classes), d.seed)
        if unl_in is not None:
            from transferlab.unlabeled.train import pooled, probe_with_unlabeled

            xs = [pooled(engine.store, model, s, n_kept) for s in (train_in, val_in, unl_in)]
            probe, extra["unlabeled"] = probe_with_unlabeled(
                probe, xs[0], train_in.labels.numpy(), xs[1], val_in.labels.numpy(), xs[2],
                num_classes=len(classes), classifier=t.classifier, method=t.unlabeled_method,
                threshold=t.unlabeled_threshold, seed=d.seed, folder=t.unlabeled)
        extra["probe"] = {"classifier": probe.classifier, "C": probe.C, "refit_on": "train+val",
                          "val_accuracy_by_C": {str(k): v for k, v in probe.grid.items()}}
        history: list[dict[str, Any]] = []
        best_epoch, train_s = None, fit_s
        boundary = n_kept
        _set_linear_head(engine.model, probe.selection_weight, probe.selection_bias)
        val_out = engine.predict(val_in, boundary=boundary)  # the train-only fit that val selected
        _set_linear_head(engine.model, probe.weight, probe.bias)  # final: refit on train+val
    else:
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if t.refit else None
        fit = engine.fit(plan, train=train_in, val=val_in, run_dir=run_dir, resume=resume)
        history, best_epoch, train_s = fit.history, fit.best_epoch, fit.train_s
        extra["early_stops"] = fit.early_stops
        if fit.restored is not None:
            extra["restored"] = fit.restored
        boundary = plan.lowest_trainable_stage(kept) if plan.pretrained else 0
        val_out = engine.predict(val_in, boundary=boundary)  # the held-out selection run's
        if initial is not None:
            extra["refit"] = _refit(engine, plan, fit, initial, train_in, inputs("val", split.val, training=True),
                                    val_in, seed=d.seed)
            train_s += extra["refit"]["train_s"]
    test_out = engine.predict(test_in, boundary=boundary)
    if ctx.is_main and own_split:  # after training: from the features the run left in the cache, if any
        extra["leakage"] = leakage_check(str(data), source, split, d, t, plan)
    if hasattr(spec, "after_fit"):  # e.g. multilabel thresholds chosen on val
        spec.after_fit(model, val_out, val_in.labels)
    temperature, calibration = (calibrate_splits(t.calibrate, val=(val_out, val_in.labels), test=(test_out, test_in.labels))
                                if spec.name == "classification" else (None, {"val": {}, "test": {}}))
    metrics = {
        "task": spec.name,
        "strategy": plan.strategy,
        "backbone": t.backbone,
        **spec.run_metrics(prepared=prepared, options=to),
        "val": spec.split_metrics(val_out, val_in.labels, classes=classes, objective=objective, model=model),
        "test": spec.split_metrics(test_out, test_in.labels, classes=classes, objective=objective, model=model),
        "timing": run_timing(total_s=time.perf_counter() - t_start, extract_s=engine.extract_s, train_s=train_s),
        "best_epoch": best_epoch,
        "split_sizes": split.sizes(),
        "skipped_files": [list(s) for s in skipped],
        **extra,
    }
    for name in ("val", "test"):
        metrics[name].update(calibration[name])
    if temperature is not None:
        log.info("temperature scaling: T = %.3f fitted on val (%d images); test ECE %.4f -> %.4f", temperature,
                 len(val_in.labels), calibration["test"]["ece_uncalibrated"], calibration["test"]["ece"])
    if run_dir is not None and ctx.is_main:
        save_model(run_dir, model, classes=classes, norm=norm, task=spec.name,
                   extra={"strategy": plan.strategy, f"test_{spec.score_name}": spec.headline(metrics),
                          **({"temperature": temperature} if temperature is not None else {})})
        atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
        spec.write_outputs(run_dir, prepared=prepared, indices=split.test, outputs=test_out / (temperature or 1.0),
                           labels=test_in.labels, classes=classes, save_predictions=save_predictions, model=model)
    ctx.barrier()
    if lock is not None:
        lock.release()
    tm = metrics["timing"]
    log.info("timings: %.1fs = extraction %.1fs + training %.1fs + other %.1fs (scan, setup, evaluation, "
             "writing)%s", tm["total_s"], tm["extract_s"], tm["train_s"], tm["other_s"],
             f"; run directory {run_dir}" if run_dir is not None else "")
    return Run(run_dir=run_dir, metrics=metrics, history=history, config=config, classes=classes, model=model)


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


def _refit(engine: Engine, plan: Plan, fit: Any, initial: dict[str, torch.Tensor], train_in: SplitInputs,
           val_as_train: SplitInputs, val_in: SplitInputs, *, seed: int) -> dict[str, Any]:
    """Train ``plan`` again from ``initial`` on train+val, each phase for the epochs that led to the best one."""
    replay = [sum(1 for h in fit.history if h["phase_index"] == pi and h["epoch"] <= (fit.best_epoch or 0))
              for pi in range(len(plan.phases))]
    engine.model.load_state_dict(initial)
    torch.manual_seed(seed)
    both = concat_inputs(train_in, val_as_train)
    result = engine.fit(plan, train=both, val=val_in, run_dir=None, replay=replay)
    log.info("refit on %s (%d items): %s epochs per phase", both.name, len(both), replay)
    return {"on": both.name, "items": len(both), "epochs_per_phase": replay, "train_s": round(result.train_s, 3)}


def cache_fingerprint(backbone: Backbone, norm: NormStats) -> dict[str, Any] | None:
    """What pretrained activations depend on (besides the boundary and the images)."""
    if not backbone.weights.pretrained or backbone.weights.sha256 is None:
        return None
    return {"backbone": backbone.name, "weights_sha256": backbone.weights.sha256,
            "preprocessing": backbone.preprocessing.to_dict(), "normalization": norm.to_dict()}


def feature_cache(t: TrainOptions) -> FeatureCache | None:
    if t.feature_cache == "off":
        return None
    root = None if t.feature_cache == "auto" else Path(t.feature_cache)
    return FeatureCache(root, max_bytes=int(t.feature_cache_gb * (1 << 30)))


def _adopt(store: ActivationStore | None, model: TransferModel) -> ActivationStore | None:
    """A shared store computes new boundaries with the current run's model."""
    if store is not None:
        store.model = model
    return store


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
