"""``transferlab localize train``: boxed images + backbone + plan -> a localization run directory.

Mirrors :func:`transferlab.experiments.train.run_training` with the same engine and plans; the
run directory holds ``config.json``, ``split_{train,val,test}.txt``, ``history.jsonl``,
``metrics.json``, ``model.safetensors`` + ``model.json``, ``predictions_test.csv``,
``predictions_test.png`` (red predicted / green true boxes), ``curves.png`` and ``report.html``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save as save_tensors

from transferlab.data import (
    ImageSource,
    NormStats,
    atomic_write_bytes,
    atomic_write_text,
    compute_norm_stats,
    load_image,
    make_split,
    parse_fractions,
    save_split,
)
from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed
from transferlab.errors import ConfigError
from transferlab.experiments.train import head_config, make_plan, setup_logging, versions
from transferlab.localization.data import BoxDataset, FixedViews
from transferlab.localization.figures import Tile, localization_curves, png_bytes, prediction_grid
from transferlab.localization.metrics import box_metrics, paired_iou, valid_boxes
from transferlab.localization.model import BOX_ACTIVATIONS, LOC_HEADS, TRUNKS, LocHeadConfig, LocalizationModel
from transferlab.localization.task import BOX_LOSSES, LocalizationTask
from transferlab.localization.transforms import BOX_AUGMENTS, box_transform
from transferlab.localization.voc import BoxSet, load_source_boxes
from transferlab.options import DataOptions, TrainOptions, opt, options_from_kwargs
from transferlab.strategies.model import POOLS
from transferlab.strategies.plans import STRATEGIES
from transferlab.zoo import Preprocessing, create_backbone

__all__ = ["LOC_SPLIT", "LocTrainOptions", "LocalizationRun", "LocalizeOptions", "LoadedLocalizer", "boxed_source", "load_localizer",
           "localize", "run_localization", "save_localizer"]

log = logging.getLogger("transferlab")
CONFIG, METRICS, MODEL_FILE, MODEL_JSON = "config.json", "metrics.json", "model.safetensors", "model.json"
TASK = "localization"
#: Default train/val/test fractions of the boxed images (stratified by class).
LOC_SPLIT = "0.6,0.2,0.2"
#: Options of ``TrainOptions`` that do not apply to localization (the CLI leaves them out).
TRAIN_SKIP = ("classifier", "head", "pool", "label_smoothing", "class_weights", "balanced_sampler",
              "views", "monitor", "cv", "ensemble", "time_budget")  # views: LocalizeOptions has its own (box-aware); monitor: val loss
#: Options of ``DataOptions`` that localization replaces (``--split`` default, box-aware ``--augment``).
DATA_SKIP = ("split", "augment", "batch_augment")


@dataclass(frozen=True)
class LocalizeOptions:
    """The localization head, loss and box-aware augmentation (``transferlab localize train``)."""

    head: str = opt("box", "box: 4 normalised coordinates; class+box: classifier and box regressor, joint loss",
                    choices=LOC_HEADS)
    box_activation: str = opt("sigmoid", "output activation of the box regressor", choices=BOX_ACTIVATIONS)
    box_loss: str = opt("smooth-l1", "box loss (torch smooth L1, or torchvision GIoU)", choices=BOX_LOSSES)
    box_weight: float = opt(1.0, "class+box: loss = cross-entropy + WEIGHT x box loss")
    trunk: str = opt("linear", "layers before the outputs: linear (none) or dense (--hidden, ReLU + dropout)",
                     choices=TRUNKS)
    pool: str = opt("flatten", "feature map -> vector: flatten keeps where things are (avg does not)",
                    choices=POOLS)
    box_augment: str = opt("none", "box-aware training augmentation (none keeps features cacheable)",
                           choices=BOX_AUGMENTS, flag="--augment")
    crop_scale: float = opt(0.5, "flip-scale: smallest crop area (fraction of the image; the box is kept whole)")
    views: int = opt(0, "K > 0: K fixed, seeded --augment views per training image, cached like plain inputs "
                        "(0: fresh augmentation every epoch, no cache)")

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if not self.box_weight > 0:
            raise ConfigError(f"--box-weight must be > 0, got {self.box_weight}")
        if self.views < 0 or (self.views > 0 and self.box_augment == "none"):
            raise ConfigError(f"--views must be 0, or > 0 together with --augment flip|flip-scale; got --views "
                              f"{self.views} with --augment {self.box_augment}")


@dataclass(frozen=True)
class LocTrainOptions(TrainOptions):
    """``TrainOptions`` with defaults that suit a flattened box head (its fan-in is large: small rates)."""

    strategy: str = opt("fine-tune", "transfer strategy", choices=STRATEGIES)
    epochs: int = opt(15, "epochs of the head phase (feature-extraction, first phase of others)")
    finetune_epochs: int = opt(15, "epochs of a phase that trains featurizer stages")
    unfreeze: int = opt(3, "fine-tune / chain-thaw / gradual-unfreeze: stages from the top that train")
    lr: float = opt(1e-4, "learning rate of the new head")
    finetune_lr: float = opt(1e-4, "learning rate of the top group when featurizer stages train")
    lr_decay: float = opt(1.0, "discriminative rates: divide the rate by this per stage going down")


@dataclass
class LocalizationRun:
    """The outcome of a localization run (also on disk in ``run_dir``)."""

    run_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]
    model: LocalizationModel = field(repr=False)


@dataclass
class LoadedLocalizer:
    """A trained localizer rebuilt from ``model.json`` + ``model.safetensors``."""

    model: LocalizationModel
    classes: list[str]
    preprocessing: Preprocessing
    norm: NormStats
    meta: dict[str, Any]

    def transform(self) -> Any:
        return box_transform(self.preprocessing, norm=self.norm, augment="none")


def boxed_source(source: ImageSource, boxes: BoxSet) -> tuple[ImageSource, BoxSet]:
    """The items with a box as their own source (same identities and classes), boxes re-indexed."""
    sub = ImageSource.from_files([source.identity(int(i)) for i in boxes.indices], source.labels[boxes.indices],
                                 classes=source.classes, name=source.name, root=source.root)
    return sub, replace(boxes, indices=np.arange(len(boxes), dtype=np.int64))


def save_localizer(run_dir: Path, model: LocalizationModel, *, classes: list[str], norm: NormStats,
                   extra: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` (tensors) + ``model.json`` (architecture, classes, preprocessing); no pickle."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / MODEL_FILE, save_tensors(state))
    meta = {"format": 1, "task": TASK, "backbone": model.backbone_name, "cut": model.cut,
            "head": model.head_config.to_dict(), "num_classes": model.num_classes, "classes": classes,
            "preprocessing": model.preprocessing.to_dict(), "normalization": norm.to_dict(),
            "geometry": "whole image resized to input_size x input_size; boxes normalised to [0, 1]",
            **(extra or {})}
    atomic_write_text(run_dir / MODEL_JSON, json.dumps(meta, indent=2))


def load_localizer(run_dir: str | os.PathLike[str]) -> LoadedLocalizer:
    """Rebuild a trained localizer from a run directory.

    Example:
        >>> lz = load_localizer("runs/loc-ft")  # doctest: +SKIP
        >>> lz.model.head_config.kind  # doctest: +SKIP
        'box'
    """
    d = Path(run_dir)
    meta_path, weights_path = d / MODEL_JSON, d / MODEL_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"{d} is not a finished run: expected {MODEL_JSON} and {MODEL_FILE} in it")
    meta = json.loads(meta_path.read_text())
    if meta.get("task") != TASK:
        raise ConfigError(f"{meta_path}: expected a localization model (task {TASK!r}), got task "
                          f"{meta.get('task', 'classification')!r}")
    model = LocalizationModel(backbone=create_backbone(meta["backbone"], pretrained=False),
                              head=LocHeadConfig.from_dict(meta["head"]), cut=int(meta["cut"]))
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    model.eval()
    return LoadedLocalizer(model=model, classes=list(meta["classes"]),
                           preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                           norm=NormStats.from_dict(meta["normalization"]), meta=meta)


def pixel_boxes(normalised: torch.Tensor, sizes: np.ndarray) -> np.ndarray:
    """Normalised (N, 4) boxes -> pixels of images of ``sizes`` (N, 2) = (width, height)."""
    scale = np.concatenate([sizes, sizes], axis=1).astype(np.float64)
    return valid_boxes(normalised.float()).clamp(0, 1).numpy().astype(np.float64) * scale


def write_predictions(run_dir: Path, source: ImageSource, boxes: BoxSet, indices: np.ndarray,
                      outputs: torch.Tensor, targets: torch.Tensor, classes: list[str], *, n_draw: int = 24) -> None:
    """``predictions_test.csv`` (pixel boxes, IoU, classes) and ``predictions_test.png`` (a grid)."""
    sizes = boxes.sizes[indices]
    pred_px, true_px = pixel_boxes(outputs[:, :4], sizes), pixel_boxes(targets[:, :4], sizes)
    iou = paired_iou(outputs[:, :4], targets[:, :4]).tolist()
    has_cls = outputs.shape[1] > 4
    pred_cls = outputs[:, 4:].argmax(1).tolist() if has_cls else [None] * len(indices)
    header = ("identity,true_xmin,true_ymin,true_xmax,true_ymax,pred_xmin,pred_ymin,pred_xmax,pred_ymax,iou,"
              "true_class,pred_class")
    rows = [header]
    for k, i in enumerate(indices):
        t, p = true_px[k], pred_px[k]
        pc = "" if pred_cls[k] is None else classes[pred_cls[k]]
        rows.append(",".join([json.dumps(source.identity(int(i))), *(f"{v:.1f}" for v in t), *(f"{v:.1f}" for v in p),
                              f"{iou[k]:.4f}", classes[int(targets[k, 4])], pc]))
    atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
    tiles = []
    for k in range(min(n_draw, len(indices))):
        cap = f"IoU {iou[k]:.2f}" + ("" if pred_cls[k] is None else f" {classes[pred_cls[k]][:14]}")
        tiles.append(Tile(load_image(source.identity(int(indices[k]))), pred=pred_px[k], true=true_px[k], caption=cap))
    if tiles:
        atomic_write_bytes(run_dir / "predictions_test.png", png_bytes(prediction_grid(tiles, cols=6, size=160)))


def write_report(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """A small ``report.html``: test metrics, the prediction grid and the learning curves."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in metrics["test"].items())
    title = f"Localization: {metrics['strategy']} / {metrics['backbone']}"
    text = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><h2>Test</h2><table>{rows}</table>"
            "<h2>Test images: predicted (red) and true (green) boxes</h2><img src='predictions_test.png'>"
            "<h2>Learning curves</h2><img src='curves.png'>")
    return atomic_write_text(run_dir / "report.html", text)


def run_localization(data: str, *, data_options: DataOptions, train_options: TrainOptions,
                     loc_options: LocalizeOptions, out: str | os.PathLike[str] | None = None) -> LocalizationRun:
    """Train a box (or class+box) head with one strategy on the boxed images of a pets layout.

    The trainval images with a VOC box are split by ``data_options.split`` (stratified by class,
    ``split_seed``); images without a box are counted in the log and in ``metrics.json``.
    """
    t_start = time.perf_counter()
    d, t, lo = data_options, train_options, loc_options
    if d.augment != "none" or d.batch_augment != "none":
        raise ConfigError(f"localization needs box-aware augmentation: use --augment {'|'.join(BOX_AUGMENTS)}, "
                          f"got data augment {d.augment!r} / batch augment {d.batch_augment!r}")
    ctx = init_distributed(d.device)
    setup_logging(quiet=d.quiet, is_main=ctx.is_main)
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    from transferlab.data import open_dataset

    full = open_dataset(data, quiet=d.quiet)
    all_boxes = load_source_boxes(full)
    source, boxes = boxed_source(full, all_boxes)
    split = make_split(source, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed,
                       train_per_class=d.train_per_class)
    torch.manual_seed(d.seed)
    backbone = create_backbone(t.backbone, pretrained=False)
    stage_names = backbone.stage_names
    if t.cut is not None and not 1 <= t.cut <= len(stage_names):
        raise ConfigError(f"--cut must be between 1 and {len(stage_names)} for {t.backbone}, got {t.cut}")
    kept = stage_names[: t.cut] if t.cut else stage_names
    if t.strategy == "linear-probe" and not t.plan:
        raise ConfigError("--strategy linear-probe fits a classifier; for boxes use feature-extraction, fine-tune, "
                          "chain-thaw, gradual-unfreeze, full or scratch")
    plan = make_plan(t, kept)
    plan.validate(kept)
    if plan.pretrained:
        backbone = create_backbone(t.backbone, pretrained=True, weights=t.weights)
    hidden = head_config(replace(t, head="dense")).hidden
    head = LocHeadConfig(kind=lo.head, activation=lo.box_activation, trunk=lo.trunk, hidden=hidden,
                         dropout=t.dropout, pool=lo.pool,
                         num_classes=len(source.classes) if lo.head == "class+box" else 0)
    model = LocalizationModel(backbone=backbone, head=head, cut=t.cut)
    pre = model.preprocessing
    norm = compute_norm_stats(d.normalize, source=source, indices=split.train, preprocessing=pre)
    eval_tf = box_transform(pre, norm=norm, augment="none")
    train_tf = box_transform(pre, norm=norm, augment=lo.box_augment, scale=(lo.crop_scale, 1.0))

    def inputs(name: str, idx: np.ndarray, *, training: bool = False) -> SplitInputs:
        ev = BoxDataset(source, boxes, idx, eval_tf, draft_size=pre.input_size)
        if training and lo.views > 0:  # fixed augmented views: deterministic, so cacheable
            fixed = FixedViews(ev, train_tf, views=lo.views, seed=d.seed)
            return SplitInputs(name=name, labels=fixed.targets, eval_dataset=fixed, train_dataset=fixed)
        tr = BoxDataset(source, boxes, idx, train_tf, draft_size=pre.input_size) if training else None
        return SplitInputs(name=name, labels=ev.targets, eval_dataset=ev, train_dataset=tr)

    train_in, val_in, test_in = inputs("train", split.train, training=True), inputs("val", split.val), inputs("test", split.test)
    config = {"task": TASK, "data": str(data), "data_options": asdict(d), "train_options": asdict(t),
              "localize_options": asdict(lo), "plan": plan.to_dict(), "versions": versions(),
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}}
    if run_dir is not None and ctx.is_main:
        save_split(split, source, run_dir)
        atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2))
    task = LocalizationTask(box_loss=lo.box_loss, box_weight=lo.box_weight, num_classes=head.num_classes)
    engine = Engine(model, ctx=ctx, task=task, cacheable_train=lo.box_augment == "none" or lo.views > 0,
                    options=EngineOptions(batch_size=t.batch_size, seed=d.seed, patience=t.patience,
                                          precision=t.precision, num_workers=d.num_workers, cache=t.cache, quiet=d.quiet))
    fit = engine.fit(plan, train=train_in, val=val_in, run_dir=run_dir)
    boundary = plan.lowest_trainable_stage(kept) if plan.pretrained else 0
    val_out, test_out = engine.predict(val_in, boundary=boundary), engine.predict(test_in, boundary=boundary)

    def split_metrics(outputs: torch.Tensor, s: SplitInputs) -> dict[str, Any]:
        loss, _ = task.evaluate(outputs, s.labels)
        logits = outputs[:, 4:] if head.num_classes else None
        return box_metrics(outputs[:, :4], s.labels[:, :4], logits=logits, labels=s.labels[:, 4], loss=loss)

    metrics = {
        "task": TASK, "strategy": plan.strategy, "backbone": t.backbone, "head": lo.head,
        "box_loss": lo.box_loss, "box_activation": lo.box_activation, "augment": lo.box_augment,
        "val": split_metrics(val_out, val_in), "test": split_metrics(test_out, test_in),
        "timing": {"total_s": round(time.perf_counter() - t_start, 3), "extract_s": round(engine.extract_s, 3),
                   "train_s": round(fit.train_s, 3)},
        "best_epoch": fit.best_epoch, "split_sizes": split.sizes(), "boxes": all_boxes.summary(),
        "skipped_files": [list(s) for s in full.skipped],
        "history_note": "history.jsonl keeps the task score (mean IoU) under train_accuracy / val_accuracy",
    }
    if run_dir is not None and ctx.is_main:
        save_localizer(run_dir, model, classes=list(source.classes), norm=norm,
                       extra={"strategy": plan.strategy, "test_mean_iou": metrics["test"]["mean_iou"]})
        atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
        write_predictions(run_dir, source, boxes, split.test, test_out, test_in.labels, list(source.classes))
        if fit.history:
            atomic_write_bytes(run_dir / "curves.png", png_bytes(localization_curves(
                fit.history, title=f"{plan.strategy} / {t.backbone}: loss and mean IoU")))
        write_report(run_dir, metrics)
    ctx.barrier()
    m = metrics["test"]
    log.info("%s on %s: test mean IoU %.4f, acc@0.5 %.4f, acc@0.75 %.4f (%.1fs)", plan.strategy, t.backbone,
             m["mean_iou"], m["acc_at_0.5"], m["acc_at_0.75"], metrics["timing"]["total_s"])
    return LocalizationRun(run_dir=run_dir, metrics=metrics, history=fit.history, config=config, model=model)


def localize(data: str, *, out: str | os.PathLike[str] | None = None, **options: Any) -> LocalizationRun:
    """Python API mirroring ``transferlab localize train``; options are the CLI flags' names.

    Example:
        >>> run = localize("../shared/datasets/oxford-pets-3", backbone="efficientnet_lite0",
        ...                strategy="fine-tune", out="runs/loc-ft")  # doctest: +SKIP
        >>> run.metrics["test"]["mean_iou"]  # doctest: +SKIP
        0.78
    """
    kwargs = {"split": LOC_SPLIT, **options}
    lo = options_from_kwargs(LocalizeOptions, kwargs)
    d = options_from_kwargs(DataOptions, kwargs)
    t = options_from_kwargs(LocTrainOptions, kwargs)
    if kwargs:
        raise ConfigError(f"unknown option(s) {sorted(kwargs)} for transferlab.localize")
    return run_localization(data, data_options=d, train_options=t, loc_options=lo, out=out)
