"""What the tasks whose target moves with the image share: localize (a box), segment (a mask), keypoints.

One transform (torchvision ``v2`` steps applied to the image and its ``tv_tensors`` target together,
then to float and normalised), one dataset (items of a source, each with its target), one set of
option checks (``--augment`` / ``--views`` / ``--crop-scale``, the classification-only options
refused), and one task base (:class:`PairedTask`: the checks, the transforms and a split's inputs,
fixed seeded views of the augmentation so that a frozen encoder's activations stay cacheable).
Each task module says only what differs: how its target is wrapped for torchvision and read back,
where it comes from, and its defaults.

Example:
    >>> src = ImageSource.from_files(["/d/a.jpg", "/d/b.jpg"], [0, 1], classes=["x", "y"], name="d")
    >>> sub = sub_source(src, np.array([1]))
    >>> sub.identity(0), sub.labels.tolist()
    ('/d/b.jpg', [1])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from transferlab.data import FixedViews, ImageDataset, ImageSource, NormStats
from transferlab.data.transforms import PerImageStandardize
from transferlab.errors import ConfigError
from transferlab.options import check_options, opt
from transferlab.strategies.plans import STRATEGIES
from transferlab.tasks.base import Inputs

__all__ = ["TRAIN_SKIP", "PairedDataset", "PairedTask", "PairedTransform", "check_paired_options", "crop_scale_opt",
           "normaliser", "strategy_opt", "sub_source", "views_opt"]


def normaliser(norm: NormStats) -> Callable[[torch.Tensor], torch.Tensor]:
    """The last step of a transform: per-image standardisation (``--normalize sample``) or mean / std.

    Example:
        >>> type(normaliser(NormStats("sample", (0.5,) * 3, (0.5,) * 3))).__name__
        'PerImageStandardize'
    """
    if not isinstance(norm, NormStats):
        raise ConfigError(f"norm: expected a NormStats, got {type(norm).__name__}")
    return PerImageStandardize() if norm.kind == "sample" else v2.Normalize(mean=list(norm.mean), std=list(norm.std))


class PairedTransform(ABC):
    """``(PIL image, target) -> (float32 C x S x S tensor, the target moved with the image)``.

    ``steps`` are torchvision ``v2`` transforms; a subclass says how its target becomes a
    ``tv_tensors`` object (:meth:`wrap`) and how the moved one is read back (:meth:`unwrap`).
    """

    def __init__(self, steps: list[Any], *, size: int, normalise: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.pipeline, self.size, self.normalise = v2.Compose(steps), size, normalise

    @abstractmethod
    def wrap(self, image: Image.Image, target: Any) -> Any:
        """``target`` as the ``tv_tensors`` type torchvision moves with the image."""

    @abstractmethod
    def unwrap(self, moved: torch.Tensor, target: Any) -> torch.Tensor:
        """The moved target (a plain tensor) as the task's target; ``target`` is the one given."""

    def __call__(self, image: Image.Image, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
        img, moved = self.pipeline(tv_tensors.Image(TF.pil_to_tensor(image)), self.wrap(image, target))
        x = TF.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor)
        return self.normalise(x), self.unwrap(moved.as_subclass(torch.Tensor), target)


class PairedDataset(ImageDataset, ABC):
    """Items ``indices`` of ``source`` as ``(image tensor, target)`` through a :class:`PairedTransform`.

    A subclass gives :meth:`target` (the untransformed target of item ``k``);
    ``target_dtype`` is how :meth:`targets` stores them (e.g. uint8 masks).
    """

    target_dtype: torch.dtype | None = None

    @abstractmethod
    def target(self, k: int) -> Any:
        """The target of item ``k`` as the transform takes it."""

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transformed(k, self.transform)

    def transformed(self, k: int, transform: Callable[..., Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``k`` through another paired transform (``data.FixedViews`` draws its views with it)."""
        return transform(self.source.load(int(self.indices[k]), draft_size=self.draft_size), self.target(k))

    def targets(self) -> torch.Tensor:
        """The eval-transformed target of every item, stacked (decodes every image once)."""
        return compact([self[k][1] for k in range(len(self))], self.target_dtype)


def compact(rows: list[torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
    """``rows`` stacked (as ``dtype`` when given); an empty list gives an empty tensor."""
    if not rows:
        return torch.empty(0) if dtype is None else torch.empty(0, dtype=dtype)
    return torch.stack([torch.as_tensor(r) if dtype is None else torch.as_tensor(r).to(dtype) for r in rows])


#: ``TrainOptions`` that a paired task does not take (the CLI leaves them out): the classification head,
#: per-image class weighting, the classification search, calibration and pseudo-labels; ``views``
#: and ``pool`` have the task's own (target-aware) versions
TRAIN_SKIP: tuple[str, ...] = ("classifier", "head", "pool", "label_smoothing", "class_weights", "balanced_sampler",
                               "views", "cv", "ensemble", "time_budget", "calibrate", "unlabeled",
                               "unlabeled_method", "unlabeled_threshold")


def strategy_opt() -> Any:
    """The ``--strategy`` option of a paired task: fine-tune by default, every network strategy (no hog-svm)."""
    return opt("fine-tune", "transfer strategy", choices=tuple(s for s in STRATEGIES if s != "hog-svm"))


def views_opt(default: int) -> Any:
    """The ``--views`` option of a paired task (None: ``default`` with an ``--augment``, 0 with none)."""
    return opt(None, f"K > 0: K fixed, seeded --augment views per training image (a frozen encoder's activations "
                     f"are cached); 0: fresh augmentation every epoch (no cache); default {default} with an "
                     f"--augment, 0 with none", lo=0)


def crop_scale_opt(default: float, where: str) -> Any:
    """The ``--crop-scale`` option of a paired task (``where``: the augmentation that crops)."""
    return opt(default, f"{where}: smallest crop area (fraction of the image)", lo=0.0, lo_open=True, hi=1.0)


def check_paired_options(options: Any, *, augment: str, augments: tuple[str, ...], default_views: int) -> None:
    """The shared ``__post_init__`` of the paired tasks' options (a frozen dataclass with ``views`` and
    ``crop_scale``): ranges and choices checked, ``views`` None becomes ``default_views`` with an
    ``--augment`` and 0 with none, and views without augmentation refused."""
    if options.views is None:
        object.__setattr__(options, "views", 0 if augment == "none" else default_views)
    check_options(options)
    if options.views > 0 and augment == "none":
        raise ConfigError(f"--views must be 0, or > 0 together with --augment "
                          f"{'|'.join(a for a in augments if a != 'none')}; got --views {options.views} "
                          f"with --augment {augment}")


class PairedTask(ABC):
    """What the run pipeline asks of a paired task and is the same for all of them: the checks, the
    train / eval transforms and a split's inputs. A subclass gives ``verb`` (its ``--task`` word),
    ``augments``, :meth:`augment_of`, :meth:`paired_transform` and :meth:`dataset`."""

    verb: str = ""
    augments: tuple[str, ...] = ("none",)
    supports_linear_probe = False
    data_skip: tuple[str, ...] = ("augment", "batch_augment")
    train_skip: tuple[str, ...] = TRAIN_SKIP

    @abstractmethod
    def augment_of(self, options: Any) -> str:
        """The task's ``--augment`` value in ``options``."""

    @abstractmethod
    def paired_transform(self, preprocessing: Any, norm: Any, *, augment: str, options: Any) -> PairedTransform:
        """The transform with ``augment`` (``"none"``: the eval transform)."""

    @abstractmethod
    def dataset(self, prepared: Any, idx: np.ndarray, transform: Any, *, preprocessing: Any) -> PairedDataset:
        """Items ``idx`` of the prepared data through ``transform``."""

    def check(self, *, data_options: Any, train_options: Any, options: Any) -> None:
        """Refuse image-only augmentation (the target would not move), the linear probe (a classifier)
        and the options that weigh whole images by class."""
        d, t = data_options, train_options
        if d.augment != "none" or d.batch_augment != "none":
            raise ConfigError(f"--task {self.verb} needs augmentation that moves its target with the image: use "
                              f"--augment {'|'.join(self.augments)}, got data augment {d.augment!r} / batch augment "
                              f"{d.batch_augment!r}")
        if t.strategy == "linear-probe" and not t.plan:
            raise ConfigError(f"--strategy linear-probe fits a classifier; for --task {self.verb} use "
                              "feature-extraction, fine-tune, chain-thaw, gradual-unfreeze, full or scratch")
        if t.class_weights != "none" or t.balanced_sampler or t.label_smoothing:
            raise ConfigError(f"--class-weights, --balanced-sampler and --label-smoothing weigh whole images by "
                              f"class; --task {self.verb} takes none")

    def cacheable_train(self, *, data_options: Any, train_options: Any, options: Any) -> bool:
        return self.augment_of(options) == "none" or options.views > 0

    def transforms(self, preprocessing: Any, norm: Any, *, data_options: Any, options: Any) -> tuple[Any, Any]:
        """(eval, train) transforms."""
        return (self.paired_transform(preprocessing, norm, augment="none", options=options),
                self.paired_transform(preprocessing, norm, augment=self.augment_of(options), options=options))

    def inputs(self, prepared: Any, idx: np.ndarray, *, training: bool, eval_tf: Any, train_tf: Any,
               preprocessing: Any, data_options: Any, train_options: Any, options: Any) -> Inputs:
        """One split's inputs: the items under the eval transform, and for training either ``--views``
        fixed seeded augmented views of each (deterministic, so a frozen prefix's activations are
        cached) or fresh augmentation every epoch (``--views 0``)."""
        ev = self.dataset(prepared, idx, eval_tf, preprocessing=preprocessing)
        if training and options.views > 0:
            fixed = FixedViews(ev, train_tf, views=options.views, seed=data_options.split_seed)
            labels = compact([fixed[k][1] for k in range(len(fixed))], ev.target_dtype)
            return Inputs(labels=labels, eval_dataset=fixed, train_dataset=fixed, name_suffix=f"+views{options.views}")
        tr = self.dataset(prepared, idx, train_tf, preprocessing=preprocessing) if training else None
        return Inputs(labels=ev.targets(), eval_dataset=ev, train_dataset=tr)


def sub_source(source: ImageSource, keep: np.ndarray, *, keep_given_split: bool = True) -> ImageSource:
    """Items ``keep`` of ``source`` as their own source (same identities and classes); its given split
    (e.g. the official trainval / test lists) restricted to them, or dropped."""
    new = {int(i): k for k, i in enumerate(keep)}
    given = ({name: np.asarray([new[int(i)] for i in idx if int(i) in new], dtype=np.int64)
              for name, idx in source.given_split.items()} if source.given_split and keep_given_split else None)
    return ImageSource.from_files([source.identity(int(i)) for i in keep], source.labels[np.asarray(keep, np.int64)],
                                  classes=source.classes, name=source.name, root=source.root, given_split=given)
