"""``transferlab train`` / ``transferlab.train``: data + backbone + plan -> a run directory."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import (
    FixedViews,
    ImageDataset,
    ImageSource,
    NormStats,
    Split,
    atomic_write_text,
    batch_augmentation,
    build_transform,
    compute_norm_stats,
    load_split,
    make_split,
    open_dataset,
    parse_fractions,
    save_split,
)
from transferlab.engine import (
    ActivationStore,
    Engine,
    EngineOptions,
    SplitInputs,
    classification_metrics,
    concat_inputs,
    init_distributed,
)
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError
from transferlab.experiments.artifacts import save_model
from transferlab.options import DataOptions, TrainOptions, options_from_kwargs
from transferlab.strategies import HeadConfig, Plan, PlanOptions, TransferModel, build_plan, fit_linear_probe, load_plan
from transferlab.zoo import Backbone, check_backbone_name, create_backbone

log = logging.getLogger("transferlab")
CONFIG = "config.json"
METRICS = "metrics.json"


@dataclass
class Run:
    """The outcome of a training run (also on disk in ``run_dir``)."""

    run_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]
    classes: list[str]
    model: TransferModel = field(repr=False)

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


def head_config(t: TrainOptions) -> HeadConfig:
    try:
        hidden = tuple(int(h) for h in t.hidden.split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden must be comma-separated integers, got {t.hidden!r}") from None
    return HeadConfig(kind=t.head, hidden=hidden, dropout=t.dropout, pool=t.pool)


def plan_options(t: TrainOptions) -> PlanOptions:
    names = PlanOptions.__dataclass_fields__
    return PlanOptions(**{k: v for k, v in asdict(t).items() if k in names})


def make_plan(t: TrainOptions, stage_names: list[str]) -> Plan:
    if t.plan:
        return load_plan(t.plan)
    return build_plan(t.strategy, stage_names=stage_names, options=plan_options(t))


def _config(data: str, d: DataOptions, t: TrainOptions, plan: Plan) -> dict[str, Any]:
    return {"data": str(data), "data_options": asdict(d), "train_options": asdict(t), "plan": plan.to_dict(),
            "versions": versions(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                 "torch_threads": torch.get_num_threads()}}


def run_training(data: str, *, data_options: DataOptions, train_options: TrainOptions,
                 out: str | os.PathLike[str] | None = None, resume: bool = False,
                 callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
                 source: ImageSource | None = None, split: Split | None = None,
                 store: ActivationStore | None = None, save_predictions: bool = False) -> Run:
    """Train one strategy on one dataset and write the run directory (rank 0 only).

    ``callbacks`` are called with each epoch's history record, after its checkpoint is written.
    ``source``/``split`` reuse an already opened dataset and split (``data`` is then only recorded);
    ``store`` shares cached frozen-prefix activations between runs (the caller guarantees its entries
    were computed with this run's stages below each boundary, see ``experiments.compare``);
    ``save_predictions`` writes ``predictions_test.csv`` (identity, true, predicted, confidence).
    """
    t_start = time.perf_counter()
    d, t = data_options, train_options
    ctx = init_distributed(d.device)
    setup_logging(quiet=d.quiet, is_main=ctx.is_main)
    run_dir = Path(out) if out is not None else None
    check_backbone_name(t.backbone)  # a misspelt name fails before the dataset scan and before --out exists
    if run_dir is not None and ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    if source is None:
        source = open_dataset(data, quiet=d.quiet)
    if split is not None:
        pass
    elif resume and run_dir is not None and (run_dir / "split_train.txt").is_file():
        split = load_split(run_dir, source)
    else:
        split = make_split(source, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed,
                           train_per_class=d.train_per_class)
    if ctx.is_main:
        log.info("%s", describe_split(split, source, train_per_class=d.train_per_class, resumed=resume))
    torch.manual_seed(d.seed)
    backbone = create_backbone(t.backbone, pretrained=False)  # random init: the scratch baseline's
    stage_names = backbone.stage_names
    if t.cut is not None and not 1 <= t.cut <= len(stage_names):
        raise ConfigError(f"--cut must be between 1 and {len(stage_names)} for {t.backbone}, got {t.cut}")
    if t.runtime == "onnx" and ctx.device.type != "cpu":
        raise ConfigError(f"--runtime onnx runs on the CPU only; got --device {d.device} ({ctx.device})")
    if t.views < 0 or (t.views > 0 and d.augment == "none"):
        raise ConfigError(f"--views must be 0, or > 0 together with an --augment preset; got --views {t.views} "
                          f"with --augment {d.augment}")
    kept = stage_names[: t.cut] if t.cut else stage_names
    plan = make_plan(t, kept)
    plan.validate(kept)
    if plan.pretrained:
        backbone = create_backbone(t.backbone, pretrained=True, weights=t.weights)
    model = TransferModel(backbone=backbone, num_classes=len(source.classes), head=head_config(t), cut=t.cut)
    pre = model.preprocessing
    norm = compute_norm_stats(d.normalize, source=source, indices=split.train, preprocessing=pre)
    eval_tf = build_transform(pre, norm=norm)
    train_tf = build_transform(pre, norm=norm, train=True, augment=d.augment)

    def inputs(name: str, idx: np.ndarray, *, training: bool = False) -> SplitInputs:
        ev = ImageDataset(source, idx, eval_tf, draft_size=pre.resize_size)
        if training and t.views > 0:  # fixed augmented views: deterministic, so cacheable
            fixed = FixedViews(ev, train_tf, views=t.views, seed=d.split_seed)
            tag = f"#{d.augment}-view"
            return SplitInputs(
                name=f"{name}+views{t.views}", labels=torch.as_tensor(fixed.labels, dtype=torch.long),
                eval_dataset=fixed, train_dataset=fixed,
                items=[k + (f"{tag}{v}-seed{d.split_seed}" if v else "") for k in item_keys(source, idx)
                       for v in range(t.views + 1)],
            )
        return SplitInputs(
            name=name,
            labels=torch.as_tensor(source.labels[idx], dtype=torch.long),
            eval_dataset=ev,
            train_dataset=ImageDataset(source, idx, train_tf, draft_size=pre.resize_size) if training else None,
            items=item_keys(source, idx),
        )

    train_in, val_in, test_in = inputs("train", split.train, training=True), inputs("val", split.val), inputs("test", split.test)
    config = _config(data, d, t, plan)
    if run_dir is not None and ctx.is_main:
        save_split(split, source, run_dir)
        if not (resume and (run_dir / CONFIG).is_file()):
            atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2))
    class_weights = None
    if t.class_weights == "auto":
        counts = np.bincount(source.labels[split.train], minlength=len(source.classes)).astype(float)
        class_weights = tuple(float(x) for x in counts.sum() / (len(counts) * np.maximum(counts, 1)))
    if store is None:
        store = ActivationStore(
            model, device=ctx.device, batch_size=max(t.batch_size, 64), num_workers=d.workers,
            progress=not d.quiet and ctx.is_main, disk=feature_cache(t),
            fingerprint=cache_fingerprint(backbone, norm) if plan.pretrained else None, runtime=t.runtime,
        )
    elif store.runtime != t.runtime:
        raise ConfigError(f"--runtime {t.runtime}: the shared activation store runs {store.runtime}")
    store.pristine_upto = len(kept)  # before any phase runs, nothing has trained
    engine = Engine(
        model, ctx=ctx,
        options=EngineOptions(batch_size=t.batch_size, seed=d.seed, patience=t.patience,
                              label_smoothing=t.label_smoothing, class_weights=class_weights,
                              balanced_sampler=t.balanced_sampler, precision=t.precision, num_workers=d.workers,
                              cache=t.cache, quiet=d.quiet, monitor=t.monitor),
        store=_adopt(store, model),
        cacheable_train=(d.augment == "none" or t.views > 0) and d.batch_augment == "none",
        batch_augment=batch_augmentation(None if d.batch_augment == "none" else d.batch_augment,
                                         num_classes=len(source.classes)),
        callbacks=callbacks,
    )
    n_kept = len(kept)
    extra: dict[str, Any] = {}
    if plan.strategy == "linear-probe" and not plan.phases:
        if d.augment != "none" and t.views == 0 and ctx.is_main:
            log.info("linear-probe fits on the features of the clean training images: --augment %s applies to "
                     "phases trained by backprop (--views K gives the probe K augmented copies)", d.augment)
        probe, fit_s = _linear_probe(engine, train_in, val_in, t, n_kept, len(source.classes), d.seed)
        extra["probe"] = {"classifier": probe.classifier, "C": probe.C, "refit_on": "train+val",
                          "val_accuracy_by_C": {str(k): v for k, v in probe.grid.items()}}
        history: list[dict[str, Any]] = []
        best_epoch, train_s = -1, fit_s
        boundary = n_kept
        _set_linear_head(engine.model, probe.selection_weight, probe.selection_bias)
        val_logits = engine.predict(val_in, boundary=boundary)  # the train-only fit that val selected
        _set_linear_head(engine.model, probe.weight, probe.bias)  # final: refit on train+val
    else:
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if t.refit else None
        fit = engine.fit(plan, train=train_in, val=val_in, run_dir=run_dir, resume=resume)
        history, best_epoch, train_s = fit.history, fit.best_epoch, fit.train_s
        boundary = plan.lowest_trainable_stage(kept) if plan.pretrained else 0
        val_logits = engine.predict(val_in, boundary=boundary)  # the held-out selection run's
        if initial is not None:
            extra["refit"] = _refit(engine, plan, fit, initial, train_in, inputs("val", split.val, training=True),
                                    val_in, seed=d.seed)
            train_s += extra["refit"]["train_s"]
    test_logits = engine.predict(test_in, boundary=boundary)
    classes = list(source.classes)
    metrics = {
        "strategy": plan.strategy,
        "backbone": t.backbone,
        "val": classification_metrics(val_logits, val_in.labels.numpy(), classes=classes,
                                      loss=float(torch.nn.functional.cross_entropy(val_logits, val_in.labels))),
        "test": classification_metrics(test_logits, test_in.labels.numpy(), classes=classes,
                                       loss=float(torch.nn.functional.cross_entropy(test_logits, test_in.labels))),
        "timing": run_timing(total_s=time.perf_counter() - t_start, extract_s=engine.extract_s, train_s=train_s),
        "best_epoch": best_epoch,
        "skipped_files": [list(s) for s in source.skipped],
        **extra,
    }
    if run_dir is not None and ctx.is_main:
        save_model(run_dir, model, classes=classes, norm=norm,
                   extra={"strategy": plan.strategy, "test_accuracy": metrics["test"]["accuracy"]})
        atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
        if save_predictions:
            probs = test_logits.softmax(1)
            conf, pred = probs.max(1)
            rows = ["identity,true,predicted,confidence"] + [
                f"{json.dumps(source.identity(int(i)))},{int(y)},{int(p)},{float(c):.6f}"
                for i, y, p, c in zip(split.test, test_in.labels.tolist(), pred.tolist(), conf.tolist())]
            atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
    ctx.barrier()
    tm = metrics["timing"]
    log.info("timings: %.1fs = extraction %.1fs + training %.1fs + other %.1fs (scan, setup, evaluation, "
             "writing)%s", tm["total_s"], tm["extract_s"], tm["train_s"], tm["other_s"],
             f"; run directory {run_dir}" if run_dir is not None else "")
    return Run(run_dir=run_dir, metrics=metrics, history=history, config=config, classes=classes, model=model)


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
    replay = [sum(1 for h in fit.history if h["phase_index"] == pi and h["epoch"] <= fit.best_epoch)
              for pi in range(len(plan.phases))]
    engine.model.load_state_dict(initial)
    torch.manual_seed(seed)
    both = concat_inputs(train_in, val_as_train)
    result = engine.fit(plan, train=both, val=val_in, run_dir=None, replay=replay)
    log.info("refit on %s (%d items): %s epochs per phase", both.name, len(both), replay)
    return {"on": both.name, "items": len(both), "epochs_per_phase": replay, "train_s": round(result.train_s, 3)}


def item_keys(source: ImageSource, indices: np.ndarray) -> list[str]:
    """``identity|size|mtime`` of each item: a changed file changes its key."""
    keys = []
    for i in indices:
        stat = source.file_stat(int(i))
        keys.append(f"{source.identity(int(i))}|{stat[0]}|{stat[1]}" if stat else source.identity(int(i)))
    return keys


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


def train(data: str, *, out: str | os.PathLike[str] | None = None, resume: bool = False,
          callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), **options: Any) -> Run:
    """Python API mirroring ``transferlab train``; options are the CLI flags' names.

    Example:
        >>> import transferlab
        >>> run = transferlab.train("flowers17/", backbone="efficientnet_lite0",
        ...                         strategy="feature-extraction", out="runs/fe")  # doctest: +SKIP
        >>> run.test_accuracy  # doctest: +SKIP
        0.96
    """
    kwargs = dict(options)
    d = options_from_kwargs(DataOptions, kwargs)
    t = options_from_kwargs(TrainOptions, kwargs)
    if kwargs:
        raise ConfigError(f"unknown option(s) {sorted(kwargs)} for transferlab.train")
    return run_training(data, data_options=d, train_options=t, out=out, resume=resume, callbacks=callbacks)


def resume_training(run_dir: str | os.PathLike[str], *, quiet: bool | None = None,
                    callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> Run:
    """Continue an interrupted run from its last checkpoint, with the options it was started with."""
    cfg_path = Path(run_dir) / CONFIG
    if not cfg_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG} there (not a transferlab run directory)")
    cfg = json.loads(cfg_path.read_text())
    d = DataOptions(**cfg["data_options"])
    if quiet is not None:
        d = DataOptions(**{**asdict(d), "quiet": quiet})
    t = TrainOptions(**cfg["train_options"])
    return run_training(cfg["data"], data_options=d, train_options=t, out=run_dir, resume=True,
                        callbacks=callbacks)
