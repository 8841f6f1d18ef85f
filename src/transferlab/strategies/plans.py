"""Strategies as declarative plans: a list of phases, each saying what trains, how fast, how long.

One engine runs any plan (``transferlab.engine.fit``); users can write their own plan as a
YAML/JSON file (``--plan FILE``) with the same fields as :class:`Phase`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from transferlab.errors import ConfigError

SCHEDULES = ("constant", "stlr", "onecycle", "cosine")
OPTIMIZERS = ("adamw", "sgd")
BN_POLICIES = ("frozen", "train")
#: Which phases of a built-in plan see the run's augmentation. ``auto``: all but the head-only warm-up
#: that precedes phases training featurizer stages (it trains on clean inputs, whose activations are
#: cached: an epoch in well under a second); ``all``: every phase.
AUGMENT_PHASES = ("auto", "all")
STRATEGIES = (
    "linear-probe",
    "feature-extraction",
    "fine-tune",
    "full",
    "chain-thaw",
    "gradual-unfreeze",
    "scratch",
    "hog-svm",
)
#: Strategies without a network: hand-crafted features and a classifier (``transferlab.strategies.hog_svm``).
FEATURE_BASELINES = ("hog-svm",)


@dataclass(frozen=True)
class Phase:
    """One phase of a plan.

    ``trainable`` lists ``"head"`` and/or stage names; everything else is frozen (no gradient,
    eval mode). Learning rates are discriminative: the head gets ``lr``, the deepest trainable
    stage ``lr / lr_decay``, the next one down ``lr / lr_decay**2``, ... ``augment=False``: the
    phase trains on the clean inputs even when the run augments (their activations are cached).

    Example:
        >>> Phase(name="head", trainable=("head",), epochs=5, lr=3e-3)
        ... # doctest: +ELLIPSIS
        Phase(name='head', trainable=('head',), epochs=5, lr=0.003, ...)
    """

    name: str
    trainable: tuple[str, ...]
    epochs: int
    lr: float
    lr_decay: float = 1.0
    schedule: str = "cosine"
    warmup: float = 0.0  # fraction of the phase's steps with linear warm-up (constant/cosine)
    cut_frac: float = 0.1  # STLR
    ratio: float = 32.0  # STLR
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    momentum: float = 0.9  # SGD
    bn: str = "frozen"
    augment: bool = True  # train on the run's --augment/--batch-augment inputs; False: clean, cacheable ones

    def __post_init__(self) -> None:
        if not self.trainable:
            raise ConfigError(f"phase {self.name!r}: trainable is empty")
        if self.epochs < 1:
            raise ConfigError(f"phase {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"phase {self.name!r}: lr must be > 0, got {self.lr}")
        if self.lr_decay < 1.0:
            raise ConfigError(f"phase {self.name!r}: lr_decay must be >= 1, got {self.lr_decay}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"phase {self.name!r}: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"phase {self.name!r}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.bn not in BN_POLICIES:
            raise ConfigError(f"phase {self.name!r}: bn must be one of {BN_POLICIES}, got {self.bn!r}")
        if not 0.0 <= self.warmup < 1.0 or not 0.0 < self.cut_frac < 1.0 or self.ratio < 1:
            raise ConfigError(f"phase {self.name!r}: need 0<=warmup<1, 0<cut_frac<1, ratio>=1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable"] = list(self.trainable)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Phase":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown phase fields {sorted(unknown)}; expected some of {sorted(known)}")
        d = dict(d)
        trainable = d.get("trainable")
        d["trainable"] = (trainable,) if isinstance(trainable, str) else tuple(trainable or ())
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """A strategy: its phases, and whether it starts from pretrained weights."""

    strategy: str
    phases: tuple[Phase, ...] = field(default_factory=tuple)
    pretrained: bool = True

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def lowest_trainable_stage(self, stage_names: list[str]) -> int:
        """Index of the shallowest stage any phase trains (len(stage_names) if only the head)."""
        idx = [stage_names.index(t) for p in self.phases for t in p.trainable if t != "head"]
        return min(idx, default=len(stage_names))

    def validate(self, stage_names: list[str]) -> None:
        for p in self.phases:
            for t in p.trainable:
                if t != "head" and t not in stage_names:
                    raise ConfigError(
                        f"phase {p.name!r} trains {t!r}, which is not a kept stage; "
                        f"expected 'head' or one of {stage_names}"
                    )

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "pretrained": self.pretrained,
                "phases": [p.to_dict() for p in self.phases]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        phases = d.get("phases")
        if not phases:
            raise ConfigError("a plan needs a non-empty 'phases' list")
        return cls(strategy=str(d.get("strategy", "custom")),
                   phases=tuple(Phase.from_dict(p) for p in phases),
                   pretrained=bool(d.get("pretrained", True)))


def load_plan(path: str | Path) -> Plan:
    """Read a user plan from YAML or JSON (``{"strategy": ..., "phases": [{...}, ...]}``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--plan file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise their own error types
        raise ConfigError(f"--plan {p}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--plan {p}: expected a mapping with 'phases', got {type(data).__name__}")
    return Plan.from_dict(data)


@dataclass(frozen=True)
class PlanOptions:
    """The knobs the built-in strategies read (CLI flags of the same names)."""

    epochs: int = 30  # head / feature-extraction epochs (cheap on cached features)
    finetune_epochs: int = 8  # epochs of each later phase that trains stages
    thaw_epochs: int = 1  # chain-thaw: epochs per single stage
    unfreeze: int = 3  # fine-tune / chain-thaw / gradual-unfreeze depth (stages from the top)
    lr: float = 3e-3  # head learning rate
    finetune_lr: float = 1e-3  # learning rate of the top trainable group when stages train
    lr_decay: float = 2.6
    schedule: str = "cosine"
    finetune_schedule: str = "stlr"
    warmup: float = 0.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    bn: str = "frozen"
    scratch_epochs: int = 30
    scratch_lr: float = 3e-3
    augment_phases: str = "auto"  # see AUGMENT_PHASES


def build_plan(strategy: str, *, stage_names: list[str], options: PlanOptions) -> Plan:
    """The plan of a built-in strategy for a model whose kept stages are ``stage_names``.

    Example:
        >>> plan = build_plan("fine-tune", stage_names=["stem", "s1", "s2", "s3"],
        ...                   options=PlanOptions(unfreeze=2))
        >>> [p.trainable for p in plan.phases]
        [('head',), ('s2', 's3', 'head')]
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    n = len(stage_names)
    o = options
    uses_depth = strategy in ("fine-tune", "chain-thaw", "gradual-unfreeze")
    if uses_depth and not 1 <= o.unfreeze <= n:
        raise ConfigError(f"--unfreeze must be between 1 and {n} (the model's stages: "
                          f"{', '.join(stage_names)}), got {o.unfreeze}")
    if o.augment_phases not in AUGMENT_PHASES:
        raise ConfigError(f"--augment-phases must be one of {', '.join(AUGMENT_PHASES)}, got {o.augment_phases!r}")
    common = dict(optimizer=o.optimizer, weight_decay=o.weight_decay, bn=o.bn, warmup=o.warmup)
    head = Phase(name="head", trainable=("head",), epochs=o.epochs, lr=o.lr, schedule=o.schedule, **common)
    warmup_head = replace(head, augment=o.augment_phases == "all")  # before phases that train stages
    top = tuple(stage_names[n - o.unfreeze:]) if uses_depth else tuple(stage_names)

    def tuned(name: str, groups: tuple[str, ...], epochs: int, decay: float) -> Phase:
        return Phase(name=name, trainable=groups + ("head",), epochs=epochs, lr=o.finetune_lr,
                     lr_decay=decay, schedule=o.finetune_schedule, **common)

    if strategy == "linear-probe":
        return Plan(strategy=strategy, phases=())
    if strategy in FEATURE_BASELINES:  # no network, no pretrained knowledge: fit in closed form
        return Plan(strategy=strategy, phases=(), pretrained=False)
    if strategy == "feature-extraction":
        return Plan(strategy=strategy, phases=(head,))
    if strategy == "fine-tune":
        return Plan(strategy=strategy, phases=(warmup_head, tuned("fine-tune", top, o.finetune_epochs, o.lr_decay)))
    if strategy == "full":
        return Plan(strategy=strategy, phases=(warmup_head, tuned("full", top, o.finetune_epochs, o.lr_decay)))
    if strategy == "chain-thaw":
        # each stage alone, first to last, at its discriminative rate (as in the final phase)
        singles = tuple(
            Phase(name=f"thaw-{s}", trainable=(s,), epochs=o.thaw_epochs,
                  lr=o.finetune_lr / o.lr_decay ** (len(top) - i), schedule=o.finetune_schedule, **common)
            for i, s in enumerate(top)
        )
        return Plan(strategy=strategy,
                    phases=(warmup_head, *singles, tuned("thaw-all", top, o.finetune_epochs, o.lr_decay)))
    if strategy == "gradual-unfreeze":
        steps = tuple(
            tuned(f"unfreeze-{k}", top[len(top) - k:], 1, o.lr_decay) for k in range(1, len(top) + 1)
        )
        return Plan(strategy=strategy, phases=(replace(warmup_head, epochs=1), *steps))
    # scratch: same architecture, random init, every layer and BN statistics trained
    return Plan(
        strategy=strategy,
        pretrained=False,
        phases=(Phase(name="scratch", trainable=tuple(stage_names) + ("head",), epochs=o.scratch_epochs,
                      lr=o.scratch_lr, schedule="onecycle", optimizer=o.optimizer,
                      weight_decay=o.weight_decay, bn="train"),),
    )
