"""Options shared by every command, defined once as dataclasses; the CLI is generated from them.

Each field's metadata holds its help text (and choices); ``add_options`` turns a dataclass into
argparse flags (``split_seed`` -> ``--split-seed``) and ``options_from_args`` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from transferlab.errors import ConfigError
from transferlab.strategies.plans import AUGMENT_PHASES, OPTIMIZERS, SCHEDULES, STRATEGIES

T = TypeVar("T")


def opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None,
        lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A dataclass field with its help text, choices and range (``lo <= v <= hi``; strict with ``*_open``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "lo": lo, "hi": hi,
                                            "lo_open": lo_open, "hi_open": hi_open})


def check_options(options: Any) -> None:
    """Raise ConfigError for the first field out of its range or choices (NaN and inf are never in range).

    Example:
        >>> TrainOptions(lr=float("nan"))
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --lr: expected a finite number > 0, got nan
    """
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        if value is None:
            continue
        if choices and value not in choices:
            raise ConfigError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        lo_open, hi_open = f.metadata.get("lo_open", False), f.metadata.get("hi_open", False)
        if lo is None and hi is None:
            continue
        tp, _ = _base_type(f.type)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
            raise ConfigError(f"{flag}: expected {tp.__name__}, got {value!r}")
        in_range = math.isfinite(value) and (lo is None or (value > lo if lo_open else value >= lo)) and (
            hi is None or (value < hi if hi_open else value <= hi))
        if not in_range:
            raise ConfigError(f"{flag}: expected {_range_text(tp, lo, hi, lo_open, hi_open)}, got {value!r}")


def _range_text(tp: type, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    what = "an integer" if tp is int else "a finite number"
    if lo is not None and hi is not None:
        return f"{what} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{what} {'>' if lo_open else '>='} {lo:g}"
    return f"{what} {'<' if hi_open else '<='} {hi:g}"


@dataclass(frozen=True)
class DataOptions:
    """Data and preprocessing options of every command that runs a model."""

    split: str = opt("0.5,0.25,0.25", "train,val,test fractions (stratified); a layout's own split is kept")
    split_seed: int = opt(0, "seed of the split (independent of --seed)", lo=0)
    train_per_class: int | None = opt(None, "subsample N training images per class (small-data studies)", lo=1)
    normalize: str = opt("pretrained", "input normalisation statistics",
                         choices=("pretrained", "dataset", "minmax", "sample"))
    augment: str = opt("none", "training augmentation preset (none keeps features cacheable)",
                       choices=("none", "basic", "randaugment", "trivialaugment", "augmix"))
    batch_augment: str = opt("none", "batch-level augmentation",
                             choices=("none", "mixup", "cutmix", "mixup-cutmix"))
    seed: int = opt(0, "training seed (weights init, shuffling, dropout)", lo=0)
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    workers: str = opt("auto", "DataLoader worker processes for image decoding: auto (one per usable core beyond the "
                               "first, shared among local torchrun ranks, at most 4) or a number >= 0")
    quiet: bool = opt(False, "no progress bars or per-epoch logs (for scripts)")

    def __post_init__(self) -> None:
        check_options(self)
        resolve_workers(self.workers)  # checked when the options are made

    @property
    def num_workers(self) -> int:
        """``workers`` as a number (``auto`` resolved for this machine)."""
        return resolve_workers(self.workers)


def resolve_workers(value: str | int) -> int:
    """``auto`` -> decode workers for this machine; ``"3"``/``3`` -> 3.

    Example:
        >>> resolve_workers("2"), resolve_workers("auto") >= 0
        (2, True)
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower()
    if text == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        per_rank = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
        return min(4, per_rank - 1)
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--workers must be auto or an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainOptions:
    """What to train and how (``transferlab train``, ``transferlab.train``)."""

    backbone: str = opt("efficientnet_lite0", "backbone from the zoo (see `transferlab models`), or timm:NAME for "
                                              "any timm model (`transferlab models --timm PATTERN`)")
    weights: str | None = opt(None, "explicit weights file (.pth/.safetensors) for the backbone")
    strategy: str = opt("auto", "transfer strategy; auto: candidates (backbones with weights here x linear probes, "
                                "cuts, flip view, concatenated and averaged backbones on cached features; then "
                                "fine-tune of the best backbones above their cached frozen prefix, each also with "
                                "flip TTA; the best fine-tune averaged with the best feature candidate) scored by --cv "
                                "on the same folds within --time-budget; chosen: their ensemble selection (weights "
                                "grown on out-of-fold log loss, cross-fitted), refit on all non-test images "
                                "(auto.json)",
                        choices=("auto", *STRATEGIES))
    plan: str | None = opt(None, "a custom plan (YAML/JSON list of phases) instead of --strategy's")
    classifier: str = opt("logreg", "linear-probe classifier", choices=("logreg", "svm"))
    head: str = opt("linear", "new head on the featurizer", choices=("linear", "dense"))
    hidden: str = opt("512", "dense head: hidden layer widths, comma-separated (e.g. 512,256)")
    dropout: float = opt(0.2, "dropout before/within the new head", lo=0, hi=1, hi_open=True)
    pool: str = opt("avg", "how the cut's feature map becomes a vector", choices=("avg", "flatten"))
    cut: int | None = opt(None, "keep the featurizer up to stage K (1-based; default: all stages)", lo=1)
    input_size: int | None = opt(None, "input resolution in px (default: the backbone's; hog-svm: min(128, the "
                                       "images' shorter side)); e.g. scratch on small_cnn at the data's resolution", lo=8, hi=4096)
    epochs: int = opt(30, "epochs of the head phase (feature-extraction, first phase of others; on cached "
                          "features an epoch takes well under a second)", lo=0)
    finetune_epochs: int = opt(8, "epochs of a phase that trains featurizer stages", lo=0)
    thaw_epochs: int = opt(1, "chain-thaw: epochs per single stage", lo=0)
    scratch_epochs: int = opt(30, "scratch: epochs", lo=0)
    unfreeze: int = opt(3, "fine-tune / chain-thaw / gradual-unfreeze: stages from the top that train", lo=0)
    lr: float = opt(3e-3, "learning rate of the new head", lo=0, lo_open=True)
    finetune_lr: float = opt(1e-3, "learning rate of the top group when featurizer stages train", lo=0, lo_open=True)
    scratch_lr: float = opt(3e-3, "scratch: peak learning rate (one-cycle)", lo=0, lo_open=True)
    augment_phases: str = opt("auto", "phases that see --augment/--batch-augment: auto (all but the head-only warm-up "
                                      "before phases that train featurizer stages: it trains on cached clean features, "
                                      "an epoch in well under a second), or all", choices=AUGMENT_PHASES)
    lr_decay: float = opt(2.6, "discriminative rates: divide the rate by this per stage going down", lo=0, lo_open=True)
    schedule: str = opt("cosine", "schedule of the head phase", choices=SCHEDULES)
    finetune_schedule: str = opt("stlr", "schedule of the phases that train stages", choices=SCHEDULES)
    warmup: float = opt(0.0, "fraction of a phase's steps with linear warm-up (constant/cosine)", lo=0, hi=1)
    optimizer: str = opt("adamw", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = opt(1e-2, "weight decay", lo=0)
    bn: str = opt("frozen", "batch norm: frozen (eval mode, running stats kept) or train",
                  choices=("frozen", "train"))
    batch_size: int = opt(32, "batch size (global, split across DDP ranks)", lo=1)
    patience: int = opt(5, "early stopping: epochs without val-loss improvement within a phase", lo=0)
    monitor: str = opt("val_loss", "the epoch whose weights are restored at the end: lowest val loss, or highest "
                                   "val accuracy (ties: lower val loss); --patience always watches val loss",
                       choices=("val_loss", "val_accuracy"))
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy", lo=0, hi=1, hi_open=True)
    class_weights: str = opt("none", "class weights of the loss", choices=("none", "auto"))
    balanced_sampler: bool = opt(False, "sample training images inversely to class frequency")
    precision: str = opt("fp32", "mixed precision on CUDA", choices=("fp32", "bf16", "fp16"))
    calibrate: str = opt("none", "fit one temperature on val after model selection (test ECE is reported before "
                                 "and after); predict, evaluate, serve and the ONNX graph then divide the logits "
                                 "by it", choices=("none", "temperature"))
    refit: bool = opt(False, "after early stopping has picked the epochs on val, train again from the same "
                             "initial weights on train+val for exactly those epochs; val metrics stay those of "
                             "the held-out selection run, test metrics and the saved model are the refit's")
    cv: int | None = opt(None, "K >= 2: stratified K-fold cross-validation over the non-test pool (train+val; "
                               "test is in no fold), for any strategy: each fold trains from the same initial weights with "
                               "its held-out part as val, the frozen prefix runs once for all folds; scores are "
                               "mean ± std over folds (cv.json), each fold read at the epochs the other folds chose; "
                               "the final model is refit on the whole pool for the epochs the folds chose (hog-svm: C "
                               "chosen by the folds; auto: default 5)")
    ensemble: bool = opt(False, "with --cv (or auto): keep the K fold models and average their probabilities "
                                "instead of one refit (one saved model; the shared frozen prefix runs once)")
    time_budget: float = opt(900.0, "--strategy auto: seconds for the whole search, fine-tune candidates and their "
                                    "refit included (a cost model from measured passes decides what still fits)")
    views: int = opt(0, "K > 0: K fixed, seeded --augment views of each training image, cached like plain "
                        "images (augmentation in feature space: frozen stages run once per view)", lo=0)
    runtime: str = opt("auto", "what runs the frozen prefix when activations are extracted: auto (ONNX Runtime on the "
                               "CPU when installed and within the parity tolerance on the first batch, checked once "
                               "per backbone/weights/boundary/preprocessing and remembered; PyTorch on CUDA), torch, "
                               "or onnx (CPU only; needs the export extra)", choices=("auto", "torch", "onnx"))
    cache: bool = opt(True, "cache frozen-prefix activations in memory when augmentation allows")
    feature_cache: str = opt("auto", "on-disk cache of pretrained activations: auto ($TRANSFERLAB_CACHE/"
                             "features), off, or a folder")
    feature_cache_gb: float = opt(20.0, "size limit of the on-disk feature cache (least recently used go first)",
                                  lo=0)
    unlabeled: str | None = opt(None, "folder of unlabelled images that linear-probe / feature-extraction also "
                                      "learn from (pseudo-labels on cached features, see --unlabeled-method)")
    unlabeled_method: str = opt("self-training", "how unlabelled images get labels: scikit-learn's "
                                "SelfTrainingClassifier or LabelSpreading", choices=("self-training", "label-spreading"))
    unlabeled_threshold: float = opt(0.75, "pseudo-labels below this confidence are not used", lo=0, hi=1)

    def __post_init__(self) -> None:
        check_options(self)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None``."""
    if isinstance(tp, str):
        tp = eval(tp, {"__builtins__": {}}, {"int": int, "float": float, "str": str, "bool": bool, "None": None})
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field of ``cls``."""
    group = parser.add_argument_group(cls.__name__.replace("Options", " options").lower())
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, _ = _base_type(f.type)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=tp, default=f.default, choices=f.metadata.get("choices"),
                               help=f"{help_text} (default: {f.default})")


def options_from_args(cls: type[T], args: argparse.Namespace, *, skip: tuple[str, ...] = (), **overrides: Any) -> T:
    """``cls`` from the parsed flags; ``skip``: fields the command left out (another options class may own
    a flag of that name, e.g. localization's ``--head box``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name) and f.name not in skip}
    values.update(overrides)
    return cls(**values)


def options_from_kwargs(cls: type[T], kwargs: dict[str, Any]) -> T:
    """Pick ``cls``'s fields out of ``kwargs`` (removing them); unknown leftovers are the caller's."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})


def with_overrides(options: T, pairs: str, *, context: str) -> T:
    """``options`` with ``key=value`` pairs (``:``-separated, flag spelling) applied, typed per field.

    Example:
        >>> with_overrides(TrainOptions(), "unfreeze=2:finetune-lr=3e-4", context="fine-tune").unfreeze
        2
    """
    fields = {f.name: f for f in dataclasses.fields(options)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for pair in (p.strip() for p in pairs.split(":") if p.strip()):
        key, sep, raw = pair.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or name not in fields:
            raise ConfigError(f"{context}: expected OPTION=VALUE with OPTION one of "
                              f"{', '.join(f.replace('_', '-') for f in fields)}; got {pair!r}")
        tp, optional = _base_type(fields[name].type)
        raw = raw.strip()
        try:
            if optional and raw.lower() == "none":
                value: Any = None
            elif tp is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1", "yes")
            else:
                value = tp(raw)
        except ValueError:
            raise ConfigError(f"{context}: {key.strip()} expects {tp.__name__}, got {raw!r}") from None
        choices = fields[name].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{context}: {key.strip()} must be one of {', '.join(choices)}, got {raw!r}")
        values[name] = value
    return dataclasses.replace(options, **values)  # type: ignore[type-var]
