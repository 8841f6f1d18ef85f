"""Multi-label classification: any number of classes per image, sigmoid head, binary cross-entropy.

Data: a CSV with the header ``path,labels`` whose ``labels`` lists the image's classes separated
by ``;`` (relative paths resolved against the CSV's folder). Metrics: macro mAP (scikit-learn's
average precision per class, averaged), and micro / macro F1 at per-class thresholds chosen on the
validation split (the F1-best threshold of each class on val, applied to test; kept in
``model.json`` for predict and serve). ``train --task multilabel``.

Labels of a multi-label photo may sit anywhere in the frame (two flowers side by side, a defect in a
corner, an X-ray finding near the edge), so the input is the whole image resized to the network's
input size (no centre crop), and the head scores each label on the whole feature map and on a 2 x 2
grid of overlapping windows of it, keeping the label's highest logit (``--regions``): one object
is not averaged away by the rest of the frame. The default strategy is fine-tune (README).

Example:
    >>> TASK.name, TASK.score_name
    ('multilabel', 'f1')
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score
from torch import nn
from torch.utils.data import Dataset

from torchvision.transforms import v2

from transferlab.data import FixedViews, ImageSource, atomic_write_text, build_transform
from transferlab.data.geometry import interpolation_mode
from transferlab.data.transforms import PerImageStandardize
from transferlab.errors import BadFileError, ConfigError, DataError
from transferlab.options import TrainOptions, check_options, opt
from transferlab.strategies.model import HeadConfig, TransferModel
from transferlab.strategies.plans import STRATEGIES
from transferlab.tasks.base import Inputs, Prepared, item_keys
from transferlab.tasks.classify import TASK as CLASSIFY, head_config

__all__ = ["TASK", "MultiLabel", "MultiLabelDataset", "MultiLabelModel", "MultiLabelObjective", "MultilabelOptions",
           "MultilabelTrainOptions", "choose_thresholds", "multilabel_metrics", "read_multilabel_csv",
           "region_features", "whole_image_transform"]

#: separator of the labels in the CSV's ``labels`` column
SEPARATOR = ";"
#: values of the optional ``split`` column (the CSV's own split is kept, as for other layouts)
SPLIT_VALUES = ("train", "val", "test", "trainval")


@dataclass(frozen=True)
class MultilabelOptions:
    """The label set of a multi-label CSV (``train --task multilabel``)."""

    labels: str | None = opt(None, "multilabel: the allowed labels, comma-separated (a CSV label outside them "
                                   "is an error); default: every label the CSV uses")
    regions: int = opt(2, "multilabel: G >= 2 scores each label on the whole feature map and on a G x G grid of "
                          "overlapping windows, keeping the highest (an object anywhere in the frame); 1: the "
                          "whole map's average only", lo=1, hi=4)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class MultilabelTrainOptions(TrainOptions):
    """``TrainOptions`` with the defaults chosen for multi-label on a validation split (README)."""

    strategy: str = opt("fine-tune", "transfer strategy",
                        choices=tuple(s for s in STRATEGIES if s not in ("hog-svm", "linear-probe")))


def whole_image_transform(preprocessing: Any, *, norm: Any) -> Any:
    """The whole image resized to ``input_size`` squared (no centre crop: a label may sit at the edge).

    Example:
        >>> from transferlab.data.norm import NormStats
        >>> from transferlab.zoo import Preprocessing
        >>> pp = Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3)
        >>> whole_image_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std))(Image.new("RGB", (80, 40))).shape
        torch.Size([3, 32, 32])
    """
    size = preprocessing.input_size
    normalise = PerImageStandardize() if norm.kind == "sample" else v2.Normalize(mean=list(norm.mean), std=list(norm.std))
    return v2.Compose([v2.Resize((size, size), interpolation=interpolation_mode(preprocessing), antialias=True),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), normalise])


def _starts(n: int, grid: int) -> tuple[int, list[int]]:
    """Window length and start positions of ``grid`` overlapping windows along a side of ``n`` cells."""
    k = min(n, n // grid + 1)
    return k, [round(i * (n - k) / (grid - 1)) for i in range(grid)]


def region_features(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 1 + grid², C)``: the whole map's average, then the average of each of a
    ``grid`` x ``grid`` set of overlapping windows (side ``n // grid + 1`` cells: 4 of 7 for ``grid`` 2).

    Example:
        >>> region_features(torch.arange(49.0).reshape(1, 1, 7, 7), 2)[0, :, 0].tolist()
        [24.0, 12.0, 15.0, 33.0, 36.0]
    """
    feats = [x.mean((2, 3))]
    if grid > 1:
        kh, rows = _starts(x.shape[2], grid)
        kw, cols = _starts(x.shape[3], grid)
        feats += [x[:, :, r:r + kh, c:c + kw].mean((2, 3)) for r in rows for c in cols]
    return torch.stack(feats, 1)


class MultiLabelModel(TransferModel):
    """A :class:`TransferModel` whose head scores every label on regions of the last feature map and
    keeps each label's highest logit (``regions`` = grid side; 1: the whole map's average only).

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> m = MultiLabelModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=5,
        ...                     head=HeadConfig(), regions=2)
        >>> m(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 5])
    """

    def __init__(self, *, backbone: Any, num_classes: int, head: HeadConfig, cut: int | None = None,
                 regions: int = 1) -> None:
        super().__init__(backbone=backbone, num_classes=num_classes, head=head, cut=cut)
        if regions > 1 and (head.pool != "avg" or backbone.token_pool is not None):
            raise ConfigError(f"--regions {regions} scores windows of a convolutional feature map; "
                              f"{backbone.name} with --pool {head.pool} gives no such map: use --regions 1")
        self.regions = regions

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        for stage in list(self.stages)[start:]:
            x = stage(x)
        if self.regions == 1:
            return self.head(self.pool(x))
        return self.head(region_features(x, self.regions)).amax(1)


def read_multilabel_csv(path: str | os.PathLike[str], *, allowed: list[str] | None = None) -> tuple[ImageSource, torch.Tensor]:
    """The images of a ``path,labels`` CSV as a source, and their ``N x C`` multi-hot targets.

    The source's ``labels`` (used to stratify the split) are each image's first label; an optional
    ``split`` column (train/val/test/trainval) is kept as the source's given split. Bad rows are
    one-line errors naming the line: an empty label list, a label outside ``allowed``, a missing file.

    Example:
        >>> src, y = read_multilabel_csv("tags.csv")  # doctest: +SKIP
        >>> y.shape  # doctest: +SKIP
        torch.Size([120, 5])
    """
    p = Path(path)
    if p.suffix.lower() != ".csv" or not p.is_file():
        raise DataError(f"{p}: multilabel data must be a CSV file with the header path,labels")
    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if "path" not in header or "labels" not in header:
            raise DataError(f"{p}: expected a header with columns path,labels, got {','.join(header) or 'nothing'}")
        ip, il = header.index("path"), header.index("labels")
        isp = header.index("split") if "split" in header else None
        rows: list[tuple[int, str, list[str]]] = []
        parts: list[str] = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            line = reader.line_num
            labels = [s.strip() for s in row[il].split(SEPARATOR)] if len(row) > il else []
            labels = [s for s in labels if s]
            if len(row) <= max(ip, il) or not row[ip].strip():
                raise DataError(f"{p}:{line}: expected a path and a labels list, got {','.join(row)!r}")
            if not labels:
                raise DataError(f"{p}:{line}: empty label list for {row[ip].strip()} (expected labels separated "
                                f"by '{SEPARATOR}')")
            rows.append((line, row[ip].strip(), labels))
            if isp is not None:
                part = row[isp].strip() if len(row) > isp else ""
                if part not in SPLIT_VALUES:
                    raise DataError(f"{p}:{line}: split must be one of {', '.join(SPLIT_VALUES)}, got {part!r}")
                parts.append(part)
    if not rows:
        raise DataError(f"{p}: CSV has a header but no rows")
    used = sorted({lab for _, _, labs in rows for lab in labs})
    classes = list(allowed) if allowed else used
    for line, _, labs in rows:
        unknown = [lab for lab in labs if lab not in classes]
        if unknown:
            raise DataError(f"{p}:{line}: unknown label {unknown[0]!r}; expected one of {', '.join(classes)}")
    if len(classes) < 2:
        raise DataError(f"{p}: need at least 2 labels, got {classes}")
    paths = [os.path.abspath(p.parent / rel) for _, rel, _ in rows]
    for (line, rel, _), full in zip(rows, paths):
        if not os.path.isfile(full):
            raise DataError(f"{p}:{line}: {rel}: file not found")
    y = torch.zeros(len(rows), len(classes))
    for k, (_, _, labs) in enumerate(rows):
        y[k, [classes.index(lab) for lab in labs]] = 1.0
    first = np.array([classes.index(labs[0]) for _, _, labs in rows], dtype=np.int64)
    given = ({name: np.flatnonzero(np.array(parts) == name) for name in sorted(set(parts))} if parts else None)
    return ImageSource.from_files(paths, first, classes=classes, name=p.stem, root=str(p), given_split=given), y


class MultiLabelDataset(Dataset):
    """``(image tensor, multi-hot target (C,))`` for ``indices`` of a source."""

    def __init__(self, source: ImageSource, targets: torch.Tensor, indices: np.ndarray, transform: Any, *,
                 draft_size: int | None = None) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.targets = targets[torch.as_tensor(self.indices)]
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transformed(k, self.transform)

    def transformed(self, k: int, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.source.load(int(self.indices[k]), draft_size=self.draft_size)
        return transform(image), self.targets[k]

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels[self.indices]


def _sample_f1(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample F1 of the labels above 0.5 (1 when both prediction and truth are empty)."""
    pred = probs > 0.5
    true = target > 0.5
    tp = (pred & true).sum(1).float()
    denom = pred.sum(1).float() + true.sum(1).float()
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(tp))


@dataclass
class MultiLabelObjective:
    """Binary cross-entropy on the logits; score = per-sample F1 at 0.5 (the same on train and val).

    Example:
        >>> obj = MultiLabelObjective()
        >>> round(obj.evaluate(torch.tensor([[9.0, -9.0]]), torch.tensor([[1.0, 0.0]]))[1], 3)
        1.0
    """

    score_name: str = "f1"

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs.float(), target.float())

    def batch_score(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        return float(_sample_f1(outputs.sigmoid(), target).sum())

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            return float(self.loss(outputs, targets)), float(_sample_f1(outputs.sigmoid(), targets).mean())


def choose_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the lowest threshold (among the scores and 0.5) with the best F1 on these items (val).

    Example:
        >>> choose_thresholds(np.array([[0.9, 0.2], [0.6, 0.4], [0.7, 0.1]]), np.array([[1, 0], [0, 1], [1, 0]]))
        [0.7, 0.4]
    """
    out = []
    for c in range(probs.shape[1]):
        cands = np.unique(np.append(probs[:, c], 0.5))
        f1s = [f1_score(targets[:, c], probs[:, c] >= t, zero_division=0) for t in cands]
        out.append(round(float(cands[int(np.argmax(f1s))]), 6))
    return out


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, *, classes: list[str],
                       thresholds: list[float] | None = None, loss: float | None = None) -> dict[str, Any]:
    """macro mAP, micro/macro F1 at ``thresholds`` (0.5 each when None), per-class AP/F1/support.

    Example:
        >>> m = multilabel_metrics(torch.tensor([[4.0, -4.0], [-4.0, 4.0]]), torch.eye(2), classes=["a", "b"])
        >>> m["map"], m["micro_f1"]
        (1.0, 1.0)
    """
    probs = logits.float().sigmoid().numpy()
    y = targets.numpy().astype(np.int64)
    th = np.array(thresholds if thresholds is not None else [0.5] * len(classes))
    pred = probs >= th
    present = [c for c in range(len(classes)) if y[:, c].any()]
    ap = {c: float(average_precision_score(y[:, c], probs[:, c])) for c in present}
    f1 = f1_score(y, pred, average=None, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "map": float(np.mean(list(ap.values()))) if ap else 0.0,
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "exact_match": float((pred == y.astype(bool)).all(1).mean()) if len(y) else 0.0,
        "thresholds": [float(t) for t in th],
        "per_class": {c: {"ap": ap.get(i), "f1": float(f1[i]), "support": int(y[:, i].sum())}
                      for i, c in enumerate(classes)},
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


class MultiLabel:
    """The multi-label task for the run pipeline, the loader and the deploy tools."""

    name = "multilabel"
    score_name = "f1"
    options_class = MultilabelOptions
    train_options_class = MultilabelTrainOptions
    supports_linear_probe = False

    def read(self, data: str, *, options: MultilabelOptions, quiet: bool) -> Prepared:
        """Read a ``path,labels`` CSV (see :func:`read_multilabel_csv`)."""
        allowed = [s.strip() for s in options.labels.split(",") if s.strip()] if options.labels else None
        source, targets = read_multilabel_csv(data, allowed=allowed)
        counts = targets.sum(0)
        return Prepared(source=source, targets=targets,
                        summary={"labels_per_image": round(float(targets.sum(1).mean()), 4),
                                 "label_counts": {c: int(n) for c, n in zip(source.classes, counts.tolist())}})

    def eval_options(self, classes: list[str]) -> MultilabelOptions:
        """Options that read an evaluation CSV against a trained model's labels."""
        return MultilabelOptions(labels=",".join(classes))

    # ---- training
    def check(self, *, data_options: Any, train_options: Any, options: MultilabelOptions) -> None:
        t, d = train_options, data_options  # --strategy linear-probe (single-label) is outside the choices
        if d.batch_augment != "none":
            raise ConfigError(f"--batch-augment {d.batch_augment} mixes single labels; --task multilabel takes none")
        if t.views < 0 or (t.views > 0 and d.augment == "none"):
            raise ConfigError(f"--views must be 0, or > 0 together with an --augment preset; got --views {t.views} "
                              f"with --augment {d.augment}")

    def cacheable_train(self, *, data_options: Any, train_options: Any, options: Any) -> bool:
        return data_options.augment == "none" or train_options.views > 0

    def prepare(self, source: ImageSource, *, options: Any) -> Prepared:
        raise DataError(f"{source.root}: --task multilabel reads a CSV with the header path,labels (labels "
                        f"separated by '{SEPARATOR}'), not an opened single-label dataset")

    def build_model(self, backbone: Any, *, train_options: Any, options: MultilabelOptions,
                    num_classes: int) -> MultiLabelModel:
        return MultiLabelModel(backbone=backbone, num_classes=num_classes, head=head_config(train_options),
                               cut=train_options.cut, regions=options.regions)

    def transforms(self, preprocessing: Any, norm: Any, *, data_options: Any, options: Any) -> tuple[Any, Any]:
        """Eval: the whole image (no centre crop); training presets crop from the whole image as well."""
        ev = whole_image_transform(preprocessing, norm=norm)
        return ev, (ev if data_options.augment == "none" else
                    build_transform(preprocessing, norm=norm, train=True, augment=data_options.augment))

    def inputs(self, prepared: Prepared, idx: np.ndarray, *, training: bool, eval_tf: Any, train_tf: Any,
               preprocessing: Any, data_options: Any, train_options: Any, options: Any) -> Inputs:
        source, y, d, views = prepared.source, prepared.targets, data_options, train_options.views
        ev = MultiLabelDataset(source, y, idx, eval_tf, draft_size=preprocessing.resize_size)
        if training and views > 0:
            fixed = FixedViews(ev, train_tf, views=views, seed=d.split_seed)
            return Inputs(labels=ev.targets.repeat_interleave(views + 1, dim=0), eval_dataset=fixed,
                          train_dataset=fixed, name_suffix=f"+views{views}")
        return Inputs(labels=ev.targets, eval_dataset=ev, items=[k + "#multilabel-whole" for k in item_keys(source, idx)],
                      train_dataset=MultiLabelDataset(source, y, idx, train_tf, draft_size=preprocessing.resize_size)
                      if training else None)

    def objective(self, *, train_options: Any, class_weights: Any, options: Any, device: torch.device,
                  num_classes: int) -> MultiLabelObjective:
        return MultiLabelObjective()

    def after_fit(self, model: Any, val_outputs: torch.Tensor, val_labels: torch.Tensor) -> None:
        """Choose each class's threshold on val (kept on the model, saved in model.json)."""
        model.thresholds = choose_thresholds(val_outputs.float().sigmoid().numpy(), val_labels.numpy())

    def split_metrics(self, outputs: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
                      objective: Any = None, model: Any = None) -> dict[str, Any]:
        loss = float(nn.functional.binary_cross_entropy_with_logits(outputs.float(), labels.float()))
        return multilabel_metrics(outputs, labels, classes=classes, thresholds=getattr(model, "thresholds", None),
                                  loss=loss)

    def run_metrics(self, *, prepared: Prepared, options: Any) -> dict[str, Any]:
        return dict(prepared.summary)

    def write_outputs(self, run_dir: Path, *, prepared: Prepared, indices: np.ndarray, outputs: torch.Tensor,
                      labels: torch.Tensor, classes: list[str], save_predictions: bool = True,
                      model: Any = None) -> None:
        """``predictions_test.csv``: identity, true labels, predicted labels, probability per class."""
        probs = outputs.float().sigmoid().numpy()
        th = np.array(getattr(model, "thresholds", None) or [0.5] * len(classes))
        rows = ["identity,true,predicted," + ",".join(f"p_{c}" for c in classes)]
        for i, y, p in zip(indices, labels.numpy(), probs):
            true = SEPARATOR.join(c for c, v in zip(classes, y) if v > 0.5)
            pred = SEPARATOR.join(c for c, v, t in zip(classes, p, th) if v >= t)
            rows.append(f"{json.dumps(prepared.source.identity(int(i)))},{true},{pred}," +
                        ",".join(f"{v:.6f}" for v in p))
        atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")

    def headline(self, metrics: dict[str, Any]) -> float:
        return float(metrics["test"]["map"])

    def summary_line(self, metrics: dict[str, Any]) -> str:
        t = metrics["test"]
        return f"test mAP {t['map']:.4f}, micro F1 {t['micro_f1']:.4f}, macro F1 {t['macro_f1']:.4f}"

    # ---- a saved model
    def model_meta(self, model: MultiLabelModel) -> dict[str, Any]:
        """The classification head's description, the region grid and the per-label thresholds chosen on val."""
        return {**CLASSIFY.model_meta(model), "regions": model.regions, "geometry": "whole",
                "thresholds": getattr(model, "thresholds", None)}

    def model_from_meta(self, meta: dict[str, Any], backbone: Any) -> MultiLabelModel:
        """A saved model; files written before regions and the whole-image geometry existed are refused."""
        if meta.get("geometry") != "whole":
            raise BadFileError("model.json", "a multilabel model without 'geometry': 'whole' predates the "
                               "whole-image input and the region head", "train it again with this version")
        model = MultiLabelModel(backbone=backbone, num_classes=int(meta["num_classes"]),
                                head=HeadConfig.from_dict(meta["head"]), cut=int(meta["cut"]),
                                regions=int(meta["regions"]))
        model.thresholds = meta.get("thresholds")
        return model

    def image_transform(self, preprocessing: Any, norm: Any) -> Any:
        return whole_image_transform(preprocessing, norm=norm)

    def draft_size(self, preprocessing: Any) -> int:
        return preprocessing.resize_size

    def format_predictions(self, outputs: np.ndarray, images: list[Any], *, classes: list[str], top: int = 5,
                           meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"labels": [...above their threshold], "probabilities": {label: p}}`` per image."""
        probs = 1.0 / (1.0 + np.exp(-outputs.astype(np.float64)))
        th = (meta or {}).get("thresholds") or [0.5] * len(classes)
        return [{"labels": [c for c, p, t in zip(classes, row, th) if p >= t],
                 "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row)}} for row in probs]

    def onnx_output_spec(self, meta: dict[str, Any]) -> str:
        return (f"float32 [batch, {len(meta['classes'])}] logits in the order of 'classes' (sigmoid for each "
                "label's probability; model.json 'thresholds' per label)")

    def parity_problem(self, onnx_out: np.ndarray, torch_out: np.ndarray) -> str | None:
        if not np.array_equal(onnx_out > 0, torch_out > 0):
            return "ONNX Runtime and PyTorch disagree on which labels are above 0.5 on the check images"
        return None


TASK = MultiLabel()
