"""Class-activation heatmaps with pytorch-grad-cam: Grad-CAM, Grad-CAM++, Score-CAM.

The map is taken at the last kept stage of the featurizer (the deepest feature map, the one the
head pools) and upsampled to the model's input crop; the overlay is drawn on that same crop
(resize + centre crop of the eval transform), so heatmap and picture line up pixel for pixel.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from transferlab.data import atomic_write_bytes, load_image
from transferlab.data.geometry import eval_geometry
from transferlab.errors import ConfigError

__all__ = ["METHODS", "Explainer", "Explanation", "explain_files", "overlay", "parse_target"]

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam")


def _cam_class(method: str) -> Any:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}
    if method not in classes:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return classes[method]


def parse_target(target: str | int | None, classes: Sequence[str]) -> int | None:
    """The class index of ``--target`` (a class name, or its 0-based index), None for the prediction.

    Example:
        >>> parse_target("cat", ["cat", "dog"]), parse_target("1", ["cat", "dog"]), parse_target(None, ["a", "b"])
        (0, 1, None)
        >>> parse_target("bird", ["cat", "dog"])
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: --target 'bird' is not a class of the model; expected one of cat, dog (or an index 0..1)
    """
    if target is None:
        return None
    text = str(target)
    if text in classes:
        return list(classes).index(text)
    if re.fullmatch(r"\d+", text) and int(text) < len(classes):
        return int(text)
    shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
    raise ConfigError(f"--target {text!r} is not a class of the model; expected one of {shown} "
                      f"(or an index 0..{len(classes) - 1})")


def overlay(rgb: np.ndarray, cam: np.ndarray, *, image_weight: float = 0.5) -> np.ndarray:
    """``H x W x 3`` float RGB in [0, 1] + ``H x W`` map in [0, 1] -> uint8 RGB with a jet heatmap.

    Example:
        >>> overlay(np.zeros((4, 4, 3), np.float32), np.ones((4, 4), np.float32)).shape
        (4, 4, 3)
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb.astype(np.float32), cam.astype(np.float32), use_rgb=True, image_weight=image_weight)


@dataclass
class Explanation:
    """One image's map: ``cam`` (S x S in [0, 1]), the crop it was computed on, and the classes."""

    cam: np.ndarray
    rgb: np.ndarray  # S x S x 3 float32 in [0, 1]: the model's input crop before normalisation
    target: int
    predicted: int
    probability: float  # of the predicted class (calibrated if the run is)
    target_probability: float

    def overlay(self) -> np.ndarray:
        return overlay(self.rgb, self.cam)

    def png(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.overlay()).save(buf, "PNG")
        return buf.getvalue()


class Explainer:
    """Heatmaps of a classifier whose last featurizer stage is ``target_layer``.

    ``model`` maps a normalised batch to logits; ``normalise`` maps the [0, 1] crop to the model's
    input; ``temperature`` only rescales the reported probabilities.

    Example:
        >>> from transferlab.experiments.artifacts import load_model  # doctest: +SKIP
        >>> ex = Explainer.from_run(load_model("runs/pets"), method="gradcam")  # doctest: +SKIP
        >>> ex.explain([Image.open("cat.jpg").convert("RGB")])[0].cam.shape  # doctest: +SKIP
        (224, 224)
    """

    def __init__(self, *, model: nn.Module, target_layer: nn.Module, preprocessing: Any, normalise: Any,
                 classes: Sequence[str], method: str = "gradcam", temperature: float | None = None,
                 batch_size: int = 16) -> None:
        self.model = model.eval()
        self.target_layer = target_layer
        self.preprocessing = preprocessing
        self.geometry = eval_geometry(preprocessing)
        self.normalise = normalise
        self.classes = list(classes)
        self.method = method
        self.temperature = temperature or 1.0
        self.batch_size = batch_size
        self._cam_cls = _cam_class(method)

    @classmethod
    def from_run(cls, lm: Any, *, method: str = "gradcam") -> "Explainer":
        """From a :class:`transferlab.experiments.artifacts.LoadedModel`."""
        from transferlab.data.transforms import build_transform

        # on the input crop, the eval resize and centre crop are identities: only the normalisation acts
        crop_pre = replace(lm.preprocessing, resize_size=lm.preprocessing.input_size)
        return cls(model=lm.model, target_layer=target_layer(lm.model), preprocessing=lm.preprocessing,
                   normalise=build_transform(crop_pre, norm=lm.norm), classes=lm.classes, method=method,
                   temperature=lm.temperature)

    def crop(self, image: Image.Image) -> np.ndarray:
        """The model's input crop of ``image``, ``S x S x 3`` float32 in [0, 1]."""
        return self.geometry(image).permute(1, 2, 0).numpy()

    def explain(self, images: Sequence[Image.Image], *,
                target: int | Sequence[int] | None = None) -> list[Explanation]:
        """One :class:`Explanation` per image, for class ``target`` (one for all, or one per image)
        or each image's predicted class."""
        targets = [target] * len(images) if target is None or isinstance(target, int) else list(target)
        if len(targets) != len(images):
            raise ConfigError(f"target: expected one class per image ({len(images)}), got {len(targets)}")
        for t in targets:
            if t is not None and not 0 <= t < len(self.classes):
                raise ConfigError(f"target: expected a class index 0..{len(self.classes) - 1}, got {t}")
        out: list[Explanation] = []
        for start in range(0, len(images), self.batch_size):
            crops = [self.crop(im) for im in images[start : start + self.batch_size]]
            x = torch.stack([self.normalise(Image.fromarray((c * 255).round().astype(np.uint8))) for c in crops])
            out += self._explain_batch(x, crops, targets[start : start + self.batch_size])
        return out

    def _explain_batch(self, x: torch.Tensor, crops: list[np.ndarray],
                       wanted: list[int | None]) -> list[Explanation]:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with torch.no_grad():
            probs = (self.model(x) / self.temperature).softmax(1)
        predicted = probs.argmax(1).tolist()
        targets = [w if w is not None else p for w, p in zip(wanted, predicted)]
        with self._cam_cls(model=self.model, target_layers=[self.target_layer]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        return [Explanation(cam=maps[i], rgb=crops[i], target=targets[i], predicted=predicted[i],
                            probability=float(probs[i, predicted[i]]), target_probability=float(probs[i, targets[i]]))
                for i in range(len(crops))]


def explain_files(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                  method: str = "gradcam", target: str | None = None,
                  out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Write ``OUT/<image stem>.<method>.png`` (heatmap overlay) per image; return what each shows.

    Example:
        >>> explain_files(["cat.jpg"], model_dir="runs/pets", out="cams")  # doctest: +SKIP
        [{'image': 'cat.jpg', 'overlay': 'cams/cat.gradcam.png', 'target': 'Abyssinian', ...}]
    """
    from transferlab.experiments.artifacts import load_model

    lm = load_model(model_dir)
    target_idx = parse_target(target, lm.classes)
    ex = Explainer.from_run(lm, method=method)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [load_image(p, draft_size=lm.preprocessing.resize_size) for p in images]
    results = []
    used: set[str] = set()
    for path, e in zip(images, ex.explain(loaded, target=target_idx)):
        stem = Path(path).stem
        name = stem if stem not in used else f"{stem}-{len(used)}"
        used.add(name)
        dest = atomic_write_bytes(out_dir / f"{name}.{method}.png", e.png())
        results.append({"image": str(path), "overlay": str(dest), "method": method,
                        "target": lm.classes[e.target], "target_probability": round(e.target_probability, 6),
                        "predicted": lm.classes[e.predicted], "probability": round(e.probability, 6)})
    return results


def target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the model's last kept stage; for a saved ensemble (``MultiModel``, e.g. a
    ``--cv`` linear probe) that of its only member, if it has one and no flip view.

    Example:
        >>> from transferlab.strategies import HeadConfig, TransferModel
        >>> from transferlab.zoo import create_backbone
        >>> m = TransferModel(backbone=create_backbone("small_cnn", pretrained=False), num_classes=2, head=HeadConfig())
        >>> target_layer(m) is list(m.stages)[-1]
        True
    """
    if hasattr(model, "stages"):
        return list(model.stages)[-1]
    members = list(getattr(model, "members", []))
    if len(members) == 1 and not getattr(model, "flip", False):
        return list(members[0].stages)[-1]
    raise ConfigError(f"Grad-CAM explains one network at a time; this model averages {len(members)} backbone(s)"
                      f"{' and the flipped image' if getattr(model, 'flip', False) else ''}")


def overlays_for_run(run_dir: str | os.PathLike[str], images: Sequence[Image.Image], *,
                     targets: Sequence[int], method: str = "gradcam") -> list[np.ndarray]:
    """Heatmap overlays (uint8 RGB crops) of ``targets`` (e.g. the predicted classes) for a run's model.

    Example:
        >>> overlays_for_run("runs/pets", [Image.open("cat.jpg")], targets=[1])[0].shape  # doctest: +SKIP
        (224, 224, 3)
    """
    from transferlab.experiments.artifacts import load_model

    ex = Explainer.from_run(load_model(run_dir), method=method)
    return [e.overlay() for e in ex.explain(list(images), target=list(targets))]
