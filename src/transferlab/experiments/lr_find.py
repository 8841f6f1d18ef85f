"""``transferlab lr-find``: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training
Neural Networks", section 3.3) on the trainable groups of a strategy's first phase.

The rate grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` mini-batches (all groups
keep the phase's discriminative ratios). While it runs, the training loss is smoothed causally
(exponential moving average, bias-corrected) and the test stops when that exceeds ``4 x`` its minimum.
The suggestion reads the recorded raw losses afterwards, smoothed without lag (a centred
Savitzky-Golay filter): the rate where the loss falls fastest per decade, before its minimum (Smith's
"the loss starts to fall fastest"; fastai's ``steep``), capped at a tenth of the rate at the minimum.
The minimum alone misleads on small sets: a head on a few hundred cached feature vectors separates
its training set, so its training loss keeps falling up to very large rates and never diverges.
Frozen prefixes run once: the range test trains on the cached activations entering the phase's lowest
trainable stage.

Example:
    >>> res = lr_find("flowers17/", backbone="efficientnet_lite0", out="lrf")  # doctest: +SKIP
    >>> res["suggested_lr"]  # doctest: +SKIP
    0.0063
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.data import (
    ImageDataset,
    atomic_write_text,
    build_transform,
    compute_norm_stats,
    make_split,
    open_dataset,
    parse_fractions,
)
from transferlab.engine import ActivationStore, SplitInputs, init_distributed
from transferlab.engine.trainer import build_optimizer, configure_trainable, param_groups, stage_index
from transferlab.errors import ConfigError
from transferlab.experiments.train import head_config, item_keys, make_plan, setup_logging
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies import TransferModel
from transferlab.zoo import check_backbone_name, create_backbone

log = logging.getLogger("transferlab")
RESULT_JSON, FIGURE_PNG = "lr_find.json", "lr_find.png"


def smooth(losses: list[float]) -> np.ndarray:
    """The raw losses through a centred Savitzky-Golay filter (quadratic, a window of ~1/10 of the points).

    Example:
        >>> [round(float(v), 3) for v in smooth([0, 1, 4, 9, 16, 25, 36])]  # a quadratic passes unchanged
        [0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0]
    """
    from scipy.signal import savgol_filter

    y = np.asarray(losses, dtype=float)
    window = max(5, (len(y) // 10) | 1)
    if len(y) < window:
        return y
    return savgol_filter(y, window_length=window, polyorder=2, mode="interp")


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """The steepest fall of the lag-free smoothed loss before its minimum, capped at the minimum's rate / 10.

    ``lrs`` grow geometrically (equal steps in log rate); ``losses`` are the raw per-step losses.

    Example:
        >>> lrs = [10 ** (-6 + k / 4) for k in range(25)]
        >>> losses = [3.0 - 2.0 / (1 + np.exp(-(np.log10(lr) + 3) * 3)) for lr in lrs]
        >>> res = suggest(lrs, losses)
        >>> round(res["steepest_lr"], 4), res["min_loss_lr"] > 0.1, round(res["suggested_lr"], 4)
        (0.001, True, 0.001)
    """
    if len(lrs) != len(losses) or not lrs:
        raise ValueError(f"suggest: expected as many losses as rates (> 0), got {len(losses)} and {len(lrs)}")
    y = smooth(losses)
    finite = np.where(np.isfinite(y), y, np.inf)
    lowest = int(np.argmin(finite))
    slope = np.gradient(y[: lowest + 1]) if lowest >= 2 else np.zeros(1)
    steepest = lrs[int(np.argmin(slope))]
    cap = lrs[lowest] / 10
    return {"suggested_lr": float(min(steepest, cap)), "steepest_lr": float(steepest), "min_loss_lr": float(lrs[lowest])}


def range_test(model: TransferModel, loader: DataLoader, *, phase: Any, start: int, start_lr: float, end_lr: float,
               steps: int, beta: float = 0.98) -> tuple[list[float], list[float]]:
    """(rates, raw losses) of the exponential range test; ``model`` is changed (train on a copy).

    It stops early when the causally smoothed loss (EMA, ``beta``) exceeds 4x its minimum or is not finite.
    """
    groups = param_groups(configure_trainable(model, phase), phase)
    base = [g["lr"] / phase.lr for g in groups]  # the discriminative ratios, top group 1.0
    optimizer = build_optimizer(groups, phase)
    loss_fn = torch.nn.CrossEntropyLoss()
    lrs, losses = [], []
    avg, best, step = 0.0, math.inf, 0
    while step < steps:
        for x, y in loader:
            lr = start_lr * (end_lr / start_lr) ** (step / max(steps - 1, 1))
            for g, ratio in zip(optimizer.param_groups, base):
                g["lr"] = lr * ratio
            loss = loss_fn(model.forward_from(x, start), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            raw = float(loss.detach())
            avg = beta * avg + (1 - beta) * raw
            ema = avg / (1 - beta ** (step + 1))
            lrs.append(lr)
            losses.append(raw)
            best = min(best, ema)
            step += 1
            if step >= steps or not math.isfinite(ema) or ema > 4 * best:
                return lrs, losses
    return lrs, losses


def _figure(lrs: list[float], losses: list[float], found: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(lrs, losses, color="#bbb", lw=0.8, label="per batch")
    y = smooth(losses)
    ax.plot(lrs, y, color="#1f77b4", label="smoothed (centred)")
    ax.axvline(found["suggested_lr"], color="#c33", ls="--", label=f"suggested {found['suggested_lr']:.2g}")
    ax.axvline(found["min_loss_lr"], color="#888", ls=":", label=f"lowest loss {found['min_loss_lr']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (top group)")
    ax.set_ylabel("training loss")
    finite = [v for v in y if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite[: max(1, len(finite) // 10)])  # from the lowest to the starting loss
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def lr_find(data: str, *, out: str | os.PathLike[str], data_options: DataOptions | None = None,
            train_options: TrainOptions | None = None, start_lr: float = 1e-6, end_lr: float = 1.0,
            steps: int = 100) -> dict[str, Any]:
    """Run the range test for ``train_options.strategy``'s first phase; write lr_find.json and lr_find.png."""
    d, t = data_options or DataOptions(), train_options or TrainOptions()
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr must be > 0 and below --end-lr, got {start_lr} and {end_lr}")
    if steps < 5:
        raise ConfigError(f"--steps must be >= 5, got {steps}")
    check_backbone_name(t.backbone)
    t0 = time.perf_counter()
    setup_logging(quiet=d.quiet)
    ctx = init_distributed(d.device)
    source = open_dataset(data, quiet=d.quiet)
    split = make_split(source, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed,
                       train_per_class=d.train_per_class)
    torch.manual_seed(d.seed)
    stage_names = create_backbone(t.backbone, pretrained=False).stage_names
    kept = stage_names[: t.cut] if t.cut else stage_names
    plan = make_plan(t, kept)
    if not plan.phases:
        raise ConfigError(f"--strategy {plan.strategy} has no trained phase (a closed-form fit): nothing to range-test")
    phase = plan.phases[0]
    backbone = create_backbone(t.backbone, pretrained=plan.pretrained, weights=t.weights)
    model = TransferModel(backbone=backbone, num_classes=len(source.classes), head=head_config(t), cut=t.cut)
    pre = model.preprocessing
    norm = compute_norm_stats(d.normalize, source=source, indices=split.train, preprocessing=pre)
    idx = split.train
    train_in = SplitInputs(name="train", labels=torch.as_tensor(source.labels[idx], dtype=torch.long),
                           eval_dataset=ImageDataset(source, idx, build_transform(pre, norm=norm),
                                                     draft_size=pre.resize_size), items=item_keys(source, idx))
    start = min(stage_index(model, g) for g in phase.trainable)
    if start > 0:
        from transferlab.experiments.train import cache_fingerprint, feature_cache

        store = ActivationStore(model, device=ctx.device, batch_size=max(t.batch_size, 64), num_workers=d.num_workers,
                                progress=not d.quiet, disk=feature_cache(t),
                                fingerprint=cache_fingerprint(backbone, norm) if plan.pretrained else None)
        store.pristine_upto = start
        acts = store.get(train_in, start)
        dataset: Any = TensorDataset(acts, train_in.labels) if acts is not None else train_in.eval_dataset
        start = start if acts is not None else 0
    else:
        dataset = train_in.eval_dataset
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, generator=torch.Generator().manual_seed(d.seed))
    lrs, losses = range_test(model, loader, phase=phase, start=start, start_lr=start_lr, end_lr=end_lr, steps=steps)
    found = suggest(lrs, losses)
    suggested = found["suggested_lr"]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _figure(lrs, losses, found, out_dir / FIGURE_PNG)
    flag = "--scratch-lr" if plan.strategy == "scratch" else "--lr" if list(phase.trainable) == ["head"] \
        else "--finetune-lr"
    result = {"data": str(data), "backbone": t.backbone, "strategy": plan.strategy, "phase": phase.name, "flag": flag,
              "trainable": list(phase.trainable), "optimizer": phase.optimizer, "batch_size": t.batch_size,
              "train_images": len(train_in), "start_lr": start_lr, "end_lr": end_lr, "steps_run": len(lrs),
              **found, "rule": "steepest fall of the centred-smoothed loss before its minimum, at most the "
                               "minimum's rate / 10",
              "curve": [{"lr": a, "loss": b} for a, b in zip(lrs, losses)],
              "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_text(out_dir / RESULT_JSON, json.dumps(result, indent=2))
    log.info("lr-find %s, phase %s (%s): %d steps from %.0e to %.2g; loss lowest at %.2g -> suggested %s %.2g",
             plan.strategy, phase.name, ", ".join(phase.trainable), len(lrs), start_lr, lrs[-1],
             result["min_loss_lr"], flag, suggested)
    return result
