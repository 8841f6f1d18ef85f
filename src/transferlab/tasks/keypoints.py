"""Keypoints (pose estimation): a heatmap per keypoint from the segmentation task's dense decoder.

Data: a CSV with the header ``path,NAME_x,NAME_y,...`` (pixel coordinates of each named keypoint
in the image; both cells empty: not visible; relative paths resolved against the CSV's folder).
The model is :class:`transferlab.tasks.segment.DenseModel` with one output map per keypoint at the
decoder's stride (no upsampling); the loss is the cross-entropy between each visible keypoint's
spatial softmax and a Gaussian around its true position; the prediction is each map's argmax.
Metrics: PCK@0.05 and PCK@0.1 (share of visible keypoints within that fraction of the input size),
mean pixel error (pixels of the network input), per-keypoint PCK@0.1. ``train --task keypoints``.
No keypoint set is available offline here: the task is tested on synthetic data only.

Example:
    >>> TASK.name, TASK.score_name
    ('keypoints', 'pck')
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
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferlab.data import ImageSource, NormStats, atomic_write_bytes, atomic_write_text
from transferlab.data.geometry import interpolation_mode
from transferlab.errors import ConfigError, DataError
from transferlab.options import opt
from transferlab.tasks.base import Prepared
from transferlab.tasks.paired import (PairedDataset, PairedTransform, check_paired_options, crop_scale_opt, normaliser,
                                      views_opt)
from transferlab.tasks.segment import PALETTE, DenseModel, SegTrainOptions, Segmentation, grid_png
from transferlab.zoo import Preprocessing

__all__ = ["KP_AUGMENTS", "TASK", "KeypointDataset", "KeypointObjective", "KeypointOptions", "Keypoints",
           "decode_heatmaps", "keypoint_metrics", "keypoint_transform", "read_keypoint_csv"]

KP_AUGMENTS: tuple[str, ...] = ("none", "scale")
#: the decoder's stride: heatmaps are input_size / 4 squared
STRIDE = 4


@dataclass(frozen=True)
class KeypointOptions:
    """The heatmap head and the keypoint-aware augmentation (``train --task keypoints``)."""

    kp_augment: str = opt("none", "keypoint-aware training augmentation: scale (a random crop; points that "
                                  "leave it become not visible); no flip, which would swap left and right names",
                          choices=KP_AUGMENTS, flag="--augment")
    crop_scale: float = crop_scale_opt(0.6, "scale")
    views: int | None = views_opt(3)
    sigma: float = opt(1.5, "Gaussian of the heatmap targets, in heatmap pixels (input pixels / 4)", lo=0.0,
                       lo_open=True)
    decoder_width: int = opt(64, "channels of the FPN decoder", lo=8)

    def __post_init__(self) -> None:
        check_paired_options(self, augment=self.kp_augment, augments=KP_AUGMENTS, default_views=3)


def read_keypoint_csv(path: str | os.PathLike[str]) -> tuple[ImageSource, list[str], np.ndarray]:
    """The CSV's images as a source, the keypoint names and ``N x K x 3`` (x, y in pixels, visible).

    Example:
        >>> src, names, pts = read_keypoint_csv("points.csv")  # doctest: +SKIP
        >>> names, pts.shape  # doctest: +SKIP
        (['nose', 'tail'], (40, 2, 3))
    """
    p = Path(path)
    if p.suffix.lower() != ".csv" or not p.is_file():
        raise DataError(f"{p}: --task keypoints reads a CSV file with the header path,NAME_x,NAME_y,...")
    with p.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in (rows[0] if rows else [])]
    names = [h[:-2] for h in header[1::2] if h.endswith("_x")]
    if not header or header[0] != "path" or header[1:] != [f"{n}_{a}" for n in names for a in "xy"] or not names:
        raise DataError(f"{p}: expected the header path,NAME_x,NAME_y,... got {','.join(header) or 'nothing'}")
    paths, points = [], []
    for line, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{p}:{line}: expected {len(header)} cells, got {len(row)}")
        pts = []
        for k in range(len(names)):
            x, y = row[1 + 2 * k].strip(), row[2 + 2 * k].strip()
            if bool(x) != bool(y):
                raise DataError(f"{p}:{line}: {names[k]} has one coordinate; expected both or neither")
            try:
                pts.append((float(x), float(y), 1.0) if x else (0.0, 0.0, 0.0))
            except ValueError:
                raise DataError(f"{p}:{line}: {names[k]}: expected numbers, got {x!r}, {y!r}") from None
        full = os.path.abspath(p.parent / row[0].strip())
        if not os.path.isfile(full):
            raise DataError(f"{p}:{line}: {row[0].strip()}: file not found")
        paths.append(full)
        points.append(pts)
    if not paths:
        raise DataError(f"{p}: CSV has a header but no rows")
    source = ImageSource.from_files(paths, np.zeros(len(paths), dtype=np.int64), classes=["images"], name=p.stem,
                                    root=str(p))
    return source, names, np.asarray(points, dtype=np.float32)


class KeypointTransform(PairedTransform):
    """``(PIL image, K x 3 pixel points) -> (C x S x S tensor, K x 3 points normalised to the output)``;
    a point moved out of the image becomes not visible."""

    def wrap(self, image: Image.Image, target: torch.Tensor) -> tv_tensors.KeyPoints:
        return tv_tensors.KeyPoints(target[:, :2].float(), canvas_size=(image.height, image.width))

    def unwrap(self, moved: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        xy = moved / self.size
        inside = ((xy >= 0) & (xy < 1)).all(1).float()
        return torch.cat([xy.clamp(0, 1), (target[:, 2] * inside)[:, None]], dim=1)


def keypoint_transform(preprocessing: Preprocessing, *, norm: NormStats, augment: str = "none",
                       scale: tuple[float, float] = (0.6, 1.0)) -> KeypointTransform:
    """Whole image resized to ``input_size`` squared; ``scale``: a random crop of ``scale`` x the area first.

    Example:
        >>> pp = Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3)
        >>> tf = keypoint_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std))
        >>> tf(Image.new("RGB", (64, 48)), torch.tensor([[32.0, 12.0, 1.0]]))[1].tolist()
        [[0.5, 0.25, 1.0]]
    """
    if augment not in KP_AUGMENTS:
        raise ConfigError(f"--augment must be one of {', '.join(KP_AUGMENTS)}, got {augment!r}")
    size, mode = preprocessing.input_size, interpolation_mode(preprocessing)
    step = (v2.RandomResizedCrop((size, size), scale=scale, interpolation=mode, antialias=True) if augment == "scale"
            else v2.Resize((size, size), interpolation=mode, antialias=True))
    return KeypointTransform([step], size=size, normalise=normaliser(norm))


class KeypointDataset(PairedDataset):
    """Items ``indices`` as ``(image tensor, K x 3 normalised points)``."""

    def __init__(self, source: ImageSource, points: np.ndarray, indices: np.ndarray, transform: KeypointTransform) -> None:
        super().__init__(source, indices, transform)
        self.points = torch.as_tensor(points)

    def target(self, k: int) -> torch.Tensor:
        return self.points[int(self.indices[k])]


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``N x K x H x W`` -> (``N x K x 2`` points normalised to [0, 1] at the argmax cells' centres,
    ``N x K`` softmax peak scores).

    Example:
        >>> h = torch.zeros(1, 1, 4, 4); h[0, 0, 1, 3] = 9.0
        >>> decode_heatmaps(h)[0].tolist()
        [[[0.875, 0.375]]]
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.float().reshape(n, k, h * w)
    score, idx = flat.softmax(-1).max(-1)
    xy = torch.stack([(idx % w).float() + 0.5, (idx // w).float() + 0.5], dim=-1) / torch.tensor([w, h])
    return xy, score


def _gaussian_targets(points: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """``N x K x (H*W)`` distributions: a Gaussian (in heatmap pixels) around each point, summing to 1."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    px, py = points[..., 0:1, None] * w, points[..., 1:2, None] * h  # N x K x 1 x 1
    g = torch.exp(-((xs.view(1, 1, 1, w) - px) ** 2 + (ys.view(1, 1, h, 1) - py) ** 2) / (2 * sigma ** 2))
    g = g.reshape(*points.shape[:2], h * w)
    return g / g.sum(-1, keepdim=True).clamp(min=1e-12)


@dataclass
class KeypointObjective:
    """Cross-entropy of each visible keypoint's spatial softmax against a Gaussian target; score = PCK@0.1."""

    sigma: float = 1.5
    score_name: str = "pck"

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, k, h, w = outputs.shape
        logp = outputs.float().reshape(n, k, h * w).log_softmax(-1)
        ce = -(_gaussian_targets(target.to(logp.device), h, w, self.sigma) * logp).sum(-1)  # N x K
        vis = target[..., 2].to(ce)
        return (ce * vis).sum() / vis.sum().clamp(min=1)

    def batch_score(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        xy, _ = decode_heatmaps(outputs)
        hit = ((xy - target[..., :2].to(xy)).norm(dim=-1) < 0.1).float()
        vis = target[..., 2].to(hit)
        return float(((hit * vis).sum(1) / vis.sum(1).clamp(min=1)).sum())

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            return float(self.loss(outputs, targets)), self.batch_score(outputs, targets) / max(len(targets), 1)


def keypoint_metrics(outputs: torch.Tensor, targets: torch.Tensor, *, names: list[str], input_size: int,
                     loss: float | None = None) -> dict[str, Any]:
    """PCK@0.05 / @0.1 over visible keypoints, mean pixel error (input pixels), per-keypoint PCK@0.1.

    Example:
        >>> h = torch.zeros(1, 1, 4, 4); h[0, 0, 1, 3] = 9.0
        >>> m = keypoint_metrics(h, torch.tensor([[[0.875, 0.375, 1.0]]]), names=["a"], input_size=16)
        >>> m["pck"], m["mean_pixel_error"]
        (1.0, 0.0)
    """
    xy, _ = decode_heatmaps(outputs)
    dist = (xy - targets[..., :2]).norm(dim=-1)
    vis = targets[..., 2] > 0.5
    d = dist[vis]
    out: dict[str, Any] = {
        "n": int(len(targets)), "visible": int(vis.sum()),
        "pck": float((d < 0.1).float().mean()) if len(d) else 0.0,
        "pck_at_0.05": float((d < 0.05).float().mean()) if len(d) else 0.0,
        "mean_pixel_error": float(d.mean() * input_size) if len(d) else 0.0,
        "per_keypoint": {n: {"pck": float((dist[:, k][vis[:, k]] < 0.1).float().mean()) if bool(vis[:, k].any())
                             else None, "visible": int(vis[:, k].sum())} for k, n in enumerate(names)},
        "pck_threshold": "0.1 x the input size (pck), 0.05 (pck_at_0.05)",
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def draw_points(image: Image.Image, points: np.ndarray, *, true: np.ndarray | None = None) -> Image.Image:
    """``image`` with predicted points (filled discs, a colour per keypoint) and true ones (rings)."""
    img = image.convert("RGB").copy()
    d = ImageDraw.Draw(img)
    r = max(2, min(img.size) // 40)
    for k, (x, y) in enumerate(points):
        d.ellipse((x - r, y - r, x + r, y + r), fill=PALETTE[k % len(PALETTE)])
        if true is not None and true[k, 2] > 0.5:
            tx, ty = true[k, 0], true[k, 1]
            d.ellipse((tx - 2 * r, ty - 2 * r, tx + 2 * r, ty + 2 * r), outline=PALETTE[k % len(PALETTE)], width=2)
    return img


class Keypoints(Segmentation):
    """The keypoint task: the segmentation task's dense model and deploy paths, with heatmap targets."""

    name = "keypoints"
    verb = "keypoints"
    augments = KP_AUGMENTS
    score_name = "pck"
    options_class = KeypointOptions
    train_options_class = SegTrainOptions

    def augment_of(self, options: KeypointOptions) -> str:
        return options.kp_augment

    def read(self, data: str, *, options: KeypointOptions, quiet: bool) -> Prepared:
        source, names, points = read_keypoint_csv(data)
        return Prepared(source=source, targets=points, classes=names,
                        summary={"keypoints": names, "visible": int(points[..., 2].sum())})

    def prepare(self, source: ImageSource, *, options: Any) -> Prepared:
        return self.read(str(source.root), options=options, quiet=True)

    def build_model(self, backbone: Any, *, train_options: Any, options: KeypointOptions, num_classes: int) -> DenseModel:
        return DenseModel(backbone=backbone, out_channels=num_classes, width=options.decoder_width,
                          cut=train_options.cut, min_stride=STRIDE, upsample=False)

    def paired_transform(self, preprocessing: Any, norm: Any, *, augment: str, options: KeypointOptions) -> Any:
        return keypoint_transform(preprocessing, norm=norm, augment=augment, scale=(options.crop_scale, 1.0))

    def dataset(self, prepared: Prepared, idx: np.ndarray, transform: Any, *, preprocessing: Any) -> KeypointDataset:
        return KeypointDataset(prepared.source, prepared.targets, idx, transform)

    def objective(self, *, train_options: Any, class_weights: Any, options: Any, device: torch.device,
                  num_classes: int) -> KeypointObjective:
        return KeypointObjective(sigma=options.sigma if options is not None else KeypointOptions.sigma)

    def split_metrics(self, outputs: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
                      objective: Any = None, model: Any = None) -> dict[str, Any]:
        obj = objective or KeypointObjective()
        size = model.input_size if model is not None else outputs.shape[-1] * STRIDE
        return keypoint_metrics(outputs, labels, names=classes, input_size=size, loss=obj.evaluate(outputs, labels)[0])

    def run_metrics(self, *, prepared: Prepared, options: KeypointOptions) -> dict[str, Any]:
        return {"augment": options.kp_augment, "views": options.views, **prepared.summary}

    def write_outputs(self, run_dir: Path, *, prepared: Prepared, indices: np.ndarray, outputs: torch.Tensor,
                      labels: torch.Tensor, classes: list[str], save_predictions: bool = True,
                      model: Any = None, n_draw: int = 12) -> None:
        """``predictions_test.csv`` (true and predicted points, normalised) and ``predictions_test.png``."""
        xy, _ = decode_heatmaps(outputs)
        cols = [f"{n}_{w}_{a}" for n in classes for w in ("true", "pred") for a in "xy"]
        rows = ["identity," + ",".join(cols)]
        for k, i in enumerate(indices):
            cells = [f"{v:.4f}" for n in range(len(classes)) for v in (*labels[k, n, :2].tolist(), *xy[k, n].tolist())]
            rows.append(f"{json.dumps(prepared.source.identity(int(i)))}," + ",".join(cells))
        atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
        tiles = []
        for k in range(min(n_draw, len(indices))):
            img = prepared.source.load(int(indices[k]))
            scale = np.array([img.width, img.height], dtype=np.float32)
            true = labels[k].numpy().copy()
            true[:, :2] *= scale
            tiles.append([draw_points(img, xy[k].numpy() * scale, true=true)])
        if tiles:
            atomic_write_bytes(run_dir / "predictions_test.png", grid_png([sum(tiles[r:r + 4], []) for r in
                                                                          range(0, len(tiles), 4)]))

    def headline(self, metrics: dict[str, Any]) -> float:
        return float(metrics["test"]["pck"])

    def summary_line(self, metrics: dict[str, Any]) -> str:
        t = metrics["test"]
        return (f"test PCK@0.1 {t['pck']:.4f}, PCK@0.05 {t['pck_at_0.05']:.4f}, mean error "
                f"{t['mean_pixel_error']:.2f} px (of the input)")

    def model_meta(self, model: DenseModel) -> dict[str, Any]:
        return {**super().model_meta(model),
                "geometry": "whole image resized to input_size x input_size; one heatmap per keypoint at "
                            f"1/{STRIDE} of it"}

    def image_transform(self, preprocessing: Any, norm: Any) -> Any:
        tf = keypoint_transform(preprocessing, norm=norm)
        return lambda image: tf(image, torch.zeros(1, 3))[0]

    def format_predictions(self, outputs: np.ndarray, images: list[Any], *, classes: list[str], top: int = 5,
                           meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"keypoints": {name: {"x", "y" (pixels of the image), "score"}}}`` per image."""
        xy, score = decode_heatmaps(torch.as_tensor(outputs, dtype=torch.float32))
        return [{"keypoints": {n: {"x": round(float(xy[k, j, 0]) * im.width, 1),
                                   "y": round(float(xy[k, j, 1]) * im.height, 1),
                                   "score": round(float(score[k, j]), 6)} for j, n in enumerate(classes)}}
                for k, im in enumerate(images)]

    def annotate(self, results: list[dict[str, Any]], images: list[Any], paths: list[str], *,
                 draw: str | None = None) -> None:
        """``draw`` (OUT.png): the images with their predicted points, in a grid."""
        if draw is None:
            return
        tiles = [draw_points(img, np.array([[p["x"], p["y"]] for p in r["keypoints"].values()]))
                 for r, img in zip(results, images)]
        if tiles:
            atomic_write_bytes(draw, grid_png([tiles[i:i + 4] for i in range(0, len(tiles), 4)], size=200))

    def onnx_output_spec(self, meta: dict[str, Any]) -> str:
        s = int(meta["preprocessing"]["input_size"]) // STRIDE
        return (f"float32 [batch, {len(meta['classes'])}, {s}, {s}]: one heatmap (logits) per keypoint in the order "
                "of 'classes'; the argmax cell's centre / the map size = the point, normalised to the input")

    def parity_problem(self, onnx_out: np.ndarray, torch_out: np.ndarray) -> str | None:
        a = decode_heatmaps(torch.as_tensor(onnx_out))[0]
        b = decode_heatmaps(torch.as_tensor(torch_out))[0]
        if not torch.equal(a, b):
            return "ONNX Runtime and PyTorch put keypoints in different heatmap cells on the check images"
        return None


TASK = Keypoints()
