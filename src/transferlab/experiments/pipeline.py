"""What one strategy's training needs, built once: model, plan, transforms, activation store; inputs and
engines for any index set.

The single run (train/val), each cross-validation fold (:mod:`transferlab.experiments.cvfit`) and
every refit use the same :class:`RunSetup`, so they train the same model from the same initial
weights through the same frozen-prefix cache.

Example:
    >>> setup = RunSetup.build(spec=get_task("classify"), prepared=prepared, split=split, data_options=d,
    ...                        train_options=t, task_options=None, ctx=init_distributed("cpu"))  # doctest: +SKIP
    >>> engine = setup.engine(train_idx=split.train)  # doctest: +SKIP
    >>> engine.fit(setup.plan, train=setup.inputs("train", split.train, training=True),
    ...            val=setup.inputs("val", split.val), run_dir=None)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from transferlab.data import NormStats, Split, batch_augmentation, compute_norm_stats
from transferlab.engine import ActivationStore, DistContext, Engine, EngineOptions, SplitInputs, concat_inputs
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies import Plan, PlanOptions, build_plan, check_cut, load_plan
from transferlab.zoo import Backbone, create_backbone

log = logging.getLogger("transferlab")


def plan_options(t: TrainOptions) -> PlanOptions:
    names = PlanOptions.__dataclass_fields__
    return PlanOptions(**{k: v for k, v in asdict(t).items() if k in names})


def make_plan(t: TrainOptions, stage_names: list[str]) -> Plan:
    if t.plan:
        return load_plan(t.plan)
    return build_plan(t.strategy, stage_names=stage_names, options=plan_options(t))


def cache_fingerprint(backbone: Backbone, norm: NormStats) -> dict[str, Any] | None:
    """What pretrained activations depend on (besides the boundary and the images)."""
    if not backbone.weights.pretrained or backbone.weights.sha256 is None:
        return None
    return {"backbone": backbone.name, "weights_sha256": backbone.weights.sha256,
            "preprocessing": backbone.preprocessing.to_dict(), "normalization": norm.to_dict()}


def feature_cache(t: TrainOptions) -> FeatureCache | None:
    if t.feature_cache == "off":
        return None
    from pathlib import Path

    root = None if t.feature_cache == "auto" else Path(t.feature_cache)
    return FeatureCache(root, max_bytes=int(t.feature_cache_gb * (1 << 30)))


@dataclass
class RunSetup:
    """The model of a run (pretrained or random as its plan says), its plan, transforms and activation store."""

    spec: Any
    prepared: Any
    split: Split
    d: DataOptions
    t: TrainOptions
    to: Any
    ctx: DistContext
    backbone: Backbone
    kept: list[str]
    plan: Plan
    model: Any
    classes: list[str]
    norm: NormStats
    eval_tf: Any
    train_tf: Any
    store: ActivationStore
    objective: Any
    weights: tuple[float, ...] | None  # --class-weights auto: from the train split
    initial: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, *, spec: Any, prepared: Any, split: Split, data_options: DataOptions,
              train_options: TrainOptions, task_options: Any, ctx: DistContext, store: ActivationStore | None = None,
              norm_idx: np.ndarray | None = None) -> "RunSetup":
        """Backbone -> plan -> model -> normalisation (on ``norm_idx``, default the train split) -> store.

        ``store`` shares cached activations with other runs (see ``run_training``).
        """
        d, t, to, source = data_options, train_options, task_options, prepared.source
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
        norm = compute_norm_stats(d.normalize, source=source, indices=split.train if norm_idx is None else norm_idx,
                                  preprocessing=pre)
        eval_tf, train_tf = spec.transforms(pre, norm, data_options=d, options=to)
        store = _store_for(store, model=model, backbone=backbone, norm=norm, plan=plan, ctx=ctx, d=d, t=t)
        store.pristine_upto = len(kept)  # before any phase runs, nothing has trained
        weights = class_weights(t, source.labels[split.train], len(classes))
        objective = spec.objective(train_options=t, class_weights=weights, options=to, device=ctx.device,
                                   num_classes=len(classes))
        return cls(spec=spec, prepared=prepared, split=split, d=d, t=t, to=to, ctx=ctx, backbone=backbone, kept=kept,
                   plan=plan, model=model, classes=classes, norm=norm, eval_tf=eval_tf, train_tf=train_tf,
                   store=store, objective=objective, weights=weights)

    @property
    def source(self) -> Any:
        return self.prepared.source

    @property
    def boundary(self) -> int:
        """The lowest stage any phase trains (pretrained plans): activations below it never change."""
        return self.plan.lowest_trainable_stage(self.kept) if self.plan.pretrained else 0

    def inputs(self, name: str, idx: np.ndarray, *, training: bool = False) -> SplitInputs:
        """Items ``idx`` of the dataset as the engine reads them (``training``: with the augmented view)."""
        got = self.spec.inputs(self.prepared, idx, training=training, eval_tf=self.eval_tf, train_tf=self.train_tf,
                               preprocessing=self.model.preprocessing, data_options=self.d, train_options=self.t,
                               options=self.to)
        return SplitInputs(name=name + got.name_suffix, labels=got.labels, eval_dataset=got.eval_dataset,
                           train_dataset=got.train_dataset, items=got.items)

    def engine(self, *, train_labels: np.ndarray | None = None,
               callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), quiet: bool | None = None) -> Engine:
        """An engine over this setup's model and store. ``train_labels``: the training items' labels when they
        are not the train split's (a fold): ``--class-weights auto`` is then computed from them."""
        d, t = self.d, self.t
        weights, objective = self.weights, self.objective
        if train_labels is not None and t.class_weights == "auto":
            weights = class_weights(t, train_labels, len(self.classes))
            objective = self.spec.objective(train_options=t, class_weights=weights, options=self.to,
                                            device=self.ctx.device, num_classes=len(self.classes))
        self.store.model = self.model
        return Engine(
            self.model, ctx=self.ctx,
            options=EngineOptions(batch_size=t.batch_size, seed=d.seed, patience=t.patience,
                                  label_smoothing=t.label_smoothing, class_weights=weights,
                                  balanced_sampler=t.balanced_sampler, precision=t.precision,
                                  num_workers=d.num_workers, cache=t.cache, quiet=d.quiet if quiet is None else quiet,
                                  monitor=t.monitor),
            store=self.store,
            cacheable_train=self.spec.cacheable_train(data_options=d, train_options=t, options=self.to),
            batch_augment=batch_augmentation(None if d.batch_augment == "none" else d.batch_augment,
                                             num_classes=len(self.classes)),
            callbacks=callbacks, task=objective,
        )

    def snapshot(self) -> None:
        """Remember the current (initial) weights, for :meth:`reset` (each fold and refit starts from them)."""
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def reset(self) -> None:
        """The initial weights back, and the training seed (a fold trains as a fresh run would)."""
        if self.initial is None:
            raise RuntimeError("RunSetup.reset before snapshot")
        self.model.load_state_dict(self.initial)
        torch.manual_seed(self.d.seed)

    def refit(self, engine: Engine, *, train: SplitInputs, val: SplitInputs, epochs: list[int]) -> dict[str, Any]:
        """Train the plan again from the initial weights on ``train`` for ``epochs`` per phase (no early stop).

        ``val`` is only logged (it is part of ``train`` in every refit: no selection happens here).
        """
        self.reset()
        result = engine.fit(self.plan, train=train, val=val, run_dir=None, replay=epochs)
        log.info("refit on %s (%d items): %s epochs per phase", train.name, len(train), epochs)
        return {"on": train.name, "items": len(train), "epochs_per_phase": epochs, "train_s": round(result.train_s, 3)}

    def refit_train_val(self, engine: Engine, fit: Any, train_in: SplitInputs, val_in: SplitInputs) -> dict[str, Any]:
        """``--refit``: the held-out run's epochs (per phase, those that led to the best one) on train+val."""
        replay = [sum(1 for h in fit.history if h["phase_index"] == pi and h["epoch"] <= (fit.best_epoch or 0))
                  for pi in range(len(self.plan.phases))]
        both = concat_inputs(train_in, self.inputs("val", self.split.val, training=True))
        return self.refit(engine, train=both, val=val_in, epochs=replay)


def class_weights(t: TrainOptions, labels: np.ndarray, num_classes: int) -> tuple[float, ...] | None:
    """``--class-weights auto``: inverse class frequency of ``labels`` (the training items), else None.

    Example:
        >>> class_weights(TrainOptions(class_weights="auto"), np.array([0, 0, 0, 1]), 2)
        (0.6666666666666666, 2.0)
    """
    if t.class_weights != "auto":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return tuple(float(x) for x in counts.sum() / (len(counts) * np.maximum(counts, 1)))


def _store_for(store: ActivationStore | None, *, model: Any, backbone: Backbone, norm: NormStats, plan: Plan,
               ctx: DistContext, d: DataOptions, t: TrainOptions) -> ActivationStore:
    """A new store for this run, or the caller's shared one keyed with this run's weights and normalisation."""
    fingerprint = cache_fingerprint(backbone, norm) if plan.pretrained else None
    if store is None:
        return ActivationStore(model, device=ctx.device, batch_size=max(t.batch_size, 64), num_workers=d.num_workers,
                               progress=not d.quiet and ctx.is_main, disk=feature_cache(t), fingerprint=fingerprint,
                               runtime=t.runtime)
    if store.runtime != t.runtime:
        raise ConfigError(f"--runtime {t.runtime}: the shared activation store runs {store.runtime}")
    store.fingerprint = fingerprint  # a shared store (compare) keys its disk entries with this run's weights
    store.model = model
    return store


@dataclass
class Outcome:
    """What a fit leaves for ``metrics.json`` and the saved model (the single run's, or cross-validation's)."""

    model: Any
    val_out: torch.Tensor  # val logits (cross-validation: the out-of-fold logits of the pool)
    val_labels: torch.Tensor
    test_out: torch.Tensor
    test_labels: torch.Tensor
    history: list[dict[str, Any]]
    best_epoch: int | None
    train_s: float
    extract_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    val_what: str | None = None  # what "val" is when it is not the val split
