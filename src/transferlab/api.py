"""The Python API around a trained run: ``transferlab.load(RUN_DIR)``, and how runs and compare results
show themselves (a few lines for ``print``, a table in Jupyter via ``_repr_html_``).

Example:
    >>> import transferlab
    >>> model = transferlab.load("runs/ft")  # doctest: +SKIP
    >>> model.predict(["rose.jpg"], top=1)  # doctest: +SKIP
    [{'image': 'rose.jpg', 'top': [{'index': 7, 'label': '08_tulip', 'probability': 0.93}]}]
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from transferlab.errors import ConfigError

ImageLike = str | os.PathLike[str] | Image.Image


class TrainedModel:
    """A run directory's model (``model.safetensors`` + ``model.json``), ready to use from Python.

    Example:
        >>> model = load("runs/ft")  # doctest: +SKIP
        >>> model.evaluate("flowers17/", subset="test")["accuracy"]  # doctest: +SKIP
        0.95
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        from transferlab.experiments.artifacts import load_model

        self.run_dir = Path(run_dir)
        self._loaded = load_model(self.run_dir)
        self.classes: list[str] = list(self._loaded.classes)
        self.module: torch.nn.Module = self._loaded.model
        self._transform = self._loaded.transform()

    def predict(self, images: ImageLike | Sequence[ImageLike], *, top: int = 5) -> list[dict[str, Any]]:
        """Top-``top`` classes with probabilities for each image (paths or PIL images), one dict each."""
        from transferlab.data import load_image

        items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) else list(images)
        if not items:
            raise ConfigError("predict: expected at least one image, got none")
        batch = torch.stack([self._transform(
            img.convert("RGB") if isinstance(img, Image.Image)
            else load_image(img, draft_size=self._loaded.preprocessing.resize_size)) for img in items])
        self.module.eval()
        with torch.inference_mode():
            probs = self.module(batch).softmax(1)
        k = min(top, len(self.classes))
        out = []
        for img, row in zip(items, probs):
            values, idx = row.topk(k)
            name = "<PIL image>" if isinstance(img, Image.Image) else str(img)
            out.append({"image": name, "top": [{"index": int(i), "label": self.classes[int(i)],
                                                 "probability": round(float(v), 6)} for v, i in zip(values, idx)]})
        return out

    def evaluate(self, data: str, *, subset: str = "all", device: str = "auto") -> dict[str, Any]:
        """Accuracy, macro F1, per-class metrics... on DATA (every image, or the run's own split list)."""
        from transferlab.experiments.inference import evaluate_run

        return evaluate_run(self.run_dir, data, subset=subset, device=device)

    def export(self, format: str = "onnx", **options: Any) -> Any:
        """``format='onnx'`` or ``'torchscript'``: write the file next to the model and parity-check it."""
        if format == "onnx":
            from transferlab.export import export_onnx

            return export_onnx(self.run_dir, **options)
        if format == "torchscript":
            from transferlab.export.torchscript import export_torchscript

            return export_torchscript(self.run_dir, **options)
        raise ConfigError(f"export format must be onnx or torchscript, got {format!r}")

    def __repr__(self) -> str:
        return f"TrainedModel({str(self.run_dir)!r}: {self._loaded.meta.get('backbone', '?')}, " \
               f"{len(self.classes)} classes)"


def load(run_dir: str | os.PathLike[str]) -> TrainedModel:
    """The trained model of ``run_dir`` (what ``transferlab train --out RUN_DIR`` wrote)."""
    return TrainedModel(run_dir)


# ----------------------------------------------------------------------------- how runs show themselves

def _acc(m: dict[str, Any], split: str) -> str:
    v = m.get(split, {}).get("accuracy")
    return "-" if v is None else f"{v:.4f}"


def run_lines(run: Any) -> list[str]:
    """A few lines about a Run: what was trained, val/test accuracy, best epoch, timings, where.

    Example:
        >>> from types import SimpleNamespace
        >>> r = SimpleNamespace(run_dir=None, classes=["a", "b"], metrics={"strategy": "fine-tune",
        ...     "backbone": "resnet18", "val": {"accuracy": 0.9}, "test": {"accuracy": 0.85, "macro_f1": 0.84},
        ...     "best_epoch": 3, "timing": {"total_s": 12.0, "extract_s": 2.0, "train_s": 9.0, "other_s": 1.0}})
        >>> print("\\n".join(run_lines(r)))
        Run fine-tune on resnet18, 2 classes (not saved)
          val accuracy 0.9000 | test accuracy 0.8500, macro F1 0.8400 | best epoch 3
          12.0s = extraction 2.0s + training 9.0s + other 1.0s
    """
    m = run.metrics
    t = m.get("timing", {})
    where = f"-> {run.run_dir}" if run.run_dir is not None else "(not saved)"
    f1 = m.get("test", {}).get("macro_f1")
    lines = [f"Run {m.get('strategy')} on {m.get('backbone')}, {len(run.classes)} classes {where}",
             f"  val accuracy {_acc(m, 'val')} | test accuracy {_acc(m, 'test')}"
             + (f", macro F1 {f1:.4f}" if f1 is not None else "") + f" | best epoch {m.get('best_epoch')}"]
    if t:
        lines.append(f"  {t['total_s']:.1f}s = extraction {t.get('extract_s', 0):.1f}s + training "
                     f"{t.get('train_s', 0):.1f}s + other {t.get('other_s', 0):.1f}s")
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def run_html(run: Any) -> str:
    """The Run as an HTML table (Jupyter)."""
    m = run.metrics
    t = m.get("timing", {})
    rows = [("strategy", m.get("strategy")), ("backbone", m.get("backbone")), ("classes", len(run.classes)),
            ("val accuracy", _acc(m, "val")), ("test accuracy", _acc(m, "test")),
            ("test macro F1", f"{m.get('test', {}).get('macro_f1', float('nan')):.4f}"),
            ("best epoch", m.get("best_epoch")),
            ("seconds (total = extraction + training + other)",
             f"{t.get('total_s', 0):.1f} = {t.get('extract_s', 0):.1f} + {t.get('train_s', 0):.1f} + "
             f"{t.get('other_s', 0):.1f}"),
            ("run directory", run.run_dir)]
    return _table(("", ""), rows)


def compare_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(strategy, val mean ± std, test mean ± std, wall) per strategy of a compare's results; with ``--cv``
    the second column is the CV mean ± std across folds."""
    def fmt(s: dict[str, Any], key: str) -> str:
        mean, std = s.get(f"{key}_mean"), s.get(f"{key}_std")
        return "failed" if mean is None else f"{mean:.4f} ± {std:.4f}"

    chosen = "cv" if results.get("cv") else "val_accuracy"
    return [(name, fmt(s, chosen), fmt(s, "test_accuracy"), f"{s.get('wall_s', 0):.0f}s")
            for name, s in results.get("strategies", {}).items()]


def _chosen_on(results: dict[str, Any]) -> str:
    return f"{results['cv']['k']}-fold CV" if results.get("cv") else "val"


class CompareResults(dict):  # type: ignore[type-arg]
    """``compare()``'s results (a plain dict, as in results.json) that print as a short table.

    Example:
        >>> r = CompareResults({"backbone": "resnet18", "seeds": 2, "strategies": {"fine-tune": {
        ...     "val_accuracy_mean": 0.9, "val_accuracy_std": 0.01, "test_accuracy_mean": 0.88,
        ...     "test_accuracy_std": 0.02, "wall_s": 30.0}}})
        >>> print(repr(r))
        compare on resnet18, 2 seeds per strategy (val / test accuracy, wall):
          fine-tune            0.9000 ± 0.0100  0.8800 ± 0.0200  30s
    """

    def __repr__(self) -> str:
        lines = [f"compare on {self.get('backbone')}, {self.get('seeds')} seeds per strategy "
                 f"({_chosen_on(self)} / test accuracy, wall):"]
        lines += [f"  {n:<20} {v}  {t}  {w}" for n, v, t, w in compare_rows(self)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return _table(("strategy", f"{_chosen_on(self)} accuracy", "test accuracy", "wall"), compare_rows(self))


__all__ = ["CompareResults", "TrainedModel", "load", "run_html", "run_lines"]
