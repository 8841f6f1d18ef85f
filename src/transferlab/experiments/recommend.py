"""``transferlab recommend``: measure a dataset, place it in the lectures' table, name a strategy.

Measurements:
    * size: training images per class ``n``: the smallest class of the training split that
      ``train`` would use (``--split``, a layout's own split, ``--train-per-class``); "large" when
      ``n >= LARGE_PER_CLASS`` (100).
    * balance: largest / smallest class count.
    * image sizes: min / median / max width and height of a seeded sample.
    * similarity to the source domain, from the pretrained network itself: for every batch-norm
      layer ``l`` with running statistics ``(mu_s, var_s)`` (the source data's), measure the target
      sample's per-channel statistics ``(mu_t, var_t)`` of that layer's input and take the
      Gaussian KL divergence per channel
      ``KL_c = 0.5 * (log(var_s / var_t) + (var_t + (mu_t - mu_s)^2) / var_s - 1)``;
      ``D = mean over layers of (mean over channels of KL_c)`` and ``similarity = exp(-D)``
      (1 = the source's statistics exactly). "similar" when ``similarity >= SIMILAR_AT``.
      The source classifier's normalised prediction entropy ``H / log(K)`` is reported alongside.

Table (the lectures' quadrants; the strategies are those ``benchmarks/recommend.py`` measured):
small+different -> linear probe on the full network's pooled features (the lectures' earlier cut
lost 2.4 points on Fashion-MNIST at 20 per class, a head trained by backprop 4); small+similar ->
fine-tune the top third of the stages after a head phase (on flowers17 it beat the frozen network
on val by 0.9 points, where the lectures' table says "train only the classifier", and tied the top
half at less cost); large (similar or different) -> fine-tune the top half.

Without ``--backbone`` the backbones with weights here are ranked by LogME (and with ``--cv K`` also by
the K-fold CV accuracy of their linear probes, which then names the backbone; see
:func:`transferlab.experiments.backbones.choose_backbone`).

Example:
    >>> from transferlab.experiments.recommend import recommend
    >>> recommend("flowers17/", backbone="efficientnet_lite0")["compare_entry"]  # doctest: +SKIP
    'fine-tune:unfreeze=3'
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.data import (
    ImageDataset,
    ImageSource,
    NormStats,
    build_transform,
    make_split,
    open_dataset,
    parse_fractions,
)
from transferlab.errors import ConfigError
from transferlab.experiments.compare import stratified_subset
from transferlab.zoo import create_backbone

LARGE_PER_CLASS = 100
# Set between flowers17 (0.91, natural photos) and Fashion-MNIST (0.71, grey clothes on black),
# both measured with efficientnet_lite0's ImageNet weights on a 64-image sample.
SIMILAR_AT = 0.8


def gaussian_kl(mu_t: torch.Tensor, var_t: torch.Tensor, mu_s: torch.Tensor, var_s: torch.Tensor,
                *, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel KL(N(mu_t, var_t) || N(mu_s, var_s)).

    Example:
        >>> z, o = torch.zeros(2), torch.ones(2)
        >>> gaussian_kl(z, o, z, o).tolist()
        [0.0, 0.0]
    """
    vt, vs = var_t + eps, var_s + eps
    return 0.5 * (torch.log(vs / vt) + (vt + (mu_t - mu_s) ** 2) / vs - 1.0)


def bn_similarity(backbone: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """``exp(-mean KL)`` between the target's and the source's batch-norm input statistics."""
    kls: list[float] = []

    def hook(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0].float()
        mu = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        kls.append(float(gaussian_kl(mu, var, module.running_mean, module.running_var).mean()))

    handles = [m.register_forward_hook(hook) for m in backbone.modules()
               if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not handles:
        raise ConfigError("recommend: the backbone has no batch-norm layers to compare statistics with")
    backbone.eval()
    with torch.inference_mode():
        logits = backbone(images)
    for h in handles:
        h.remove()
    probs = logits.softmax(1)
    entropy = float((-(probs * probs.clamp_min(1e-12).log()).sum(1)).mean() / math.log(probs.shape[1]))
    divergence = float(np.mean(kls))
    return {"bn_divergence": round(divergence, 4), "similarity": round(math.exp(-divergence), 4),
            "source_entropy": round(entropy, 4), "bn_layers": len(kls)}


def recommend(data: str, *, backbone: str | None = "efficientnet_lite0", sample: int = 64,
              split: str = "0.5,0.25,0.25", train_per_class: int | None = None, seed: int = 0,
              source: ImageSource | None = None, weights: str | os.PathLike[str] | None = None,
              max_latency_ms: float | None = None, max_params: float | None = None,
              cv: int | None = None) -> dict[str, Any]:
    """Measure ``data`` and recommend a strategy (see the module docstring for the rules).

    ``backbone=None``: first rank the backbones with weights here by LogME on the training images,
    within the budgets ``max_latency_ms`` (batch 1, measured here) and ``max_params``, and use the best
    (``experiments.backbones.choose_backbone``). ``cv``: also score each of them by ``cv``-fold CV of a
    linear probe over the non-test pool (train+val, folds seeded by ``seed``) on the same cached pooled
    features, name the best by CV, and report LogME's pick and the Kendall tau between the two rankings
    (``backbone_cv``).

    Example:
        >>> rec = recommend("fashion-mnist", backbone="efficientnet_lite0", train_per_class=20)  # doctest: +SKIP
        >>> rec["quadrant"]  # doctest: +SKIP
        'small/different'
    """
    if sample < 2:
        raise ConfigError(f"--sample must be >= 2, got {sample}")
    src = source if source is not None else open_dataset(data, quiet=True)
    counts = src.class_counts()
    # the training images per class that train would really use (given splits and val carving included)
    if train_per_class is not None:
        per_class = int(train_per_class)
    else:
        train_idx = make_split(src, fractions=parse_fractions(split, option="--split"), seed=seed).train
        per_class = int(src.class_counts(train_idx).min())
    ranking: list[dict[str, Any]] | None = None
    cv_record: dict[str, Any] | None = None
    if backbone is None:  # LogME on the training images train would use (and with cv, CV over train+val)
        from transferlab.experiments.backbones import choose_backbone

        parts = make_split(src, fractions=parse_fractions(split, option="--split"), seed=seed,
                           train_per_class=train_per_class)
        backbone, ranking, backbone_reason, cv_record = choose_backbone(
            src, parts.train, max_latency_ms=max_latency_ms, max_params=max_params, cv=cv, val_idx=parts.val,
            seed=seed)
    elif max_latency_ms is not None or max_params is not None or cv is not None:
        raise ConfigError("--max-latency-ms/--max-params/--cv choose among the backbones; they need no --backbone "
                          f"(got --backbone {backbone})")
    idx = stratified_subset(src, np.arange(len(src)), sample, seed=seed)
    sizes = np.array([src.load(int(i)).size for i in idx])
    bb = create_backbone(backbone, pretrained=True, weights=weights)
    pre = bb.preprocessing
    tf = build_transform(pre, norm=NormStats(kind="pretrained", mean=pre.mean, std=pre.std))
    ds = ImageDataset(src, idx, tf, draft_size=pre.resize_size)
    images = torch.stack([ds[k][0] for k in range(len(ds))])
    sim = bn_similarity(bb, images)
    large = per_class >= LARGE_PER_CLASS
    similar = sim["similarity"] >= SIMILAR_AT
    n_stages = bb.num_stages
    half, third = max(2, n_stages // 2), max(1, n_stages // 3)
    if not large and not similar:
        strategy, unfreeze, cut = "linear-probe", 0, None
        why = ("little data from a different domain: a linear classifier (C chosen on val) on the full network's "
               "pooled features; on Fashion-MNIST at 20 images per class it beat a new head trained by backprop, "
               "fine-tuning, and a probe on an earlier cut (benchmarks/recommend.py)")
    elif not large:
        strategy, unfreeze, cut = "fine-tune", third, None
        why = (f"little data from a similar domain: a new head, then the top third ({third} stages) with small "
               "discriminative rates and early stopping; on flowers17 it beat the frozen network on val by 0.9 "
               "points and tied the top half at less cost (benchmarks/recommend.py)")
    elif similar:
        strategy, unfreeze, cut = "fine-tune", half, None
        why = f"enough data from a similar domain: adapt the top half ({half} stages) of the network"
    else:
        strategy, unfreeze, cut = "fine-tune", half, None
        why = (f"enough data from a different domain: re-train the top half ({half} stages) of the network; "
               "measured on Fashion-MNIST at 500 images per class (benchmarks/recommend.py)")
    quadrant = f"{'large' if large else 'small'}/{'similar' if similar else 'different'}"
    reasons = [
        f"{per_class} training images per class ({'>=' if large else '<'} {LARGE_PER_CLASS}: "
        f"{'large' if large else 'small'})",
        f"similarity {sim['similarity']:.3f} = exp(-{sim['bn_divergence']:.3f}) over {sim['bn_layers']} batch-norm "
        f"layers ({'>=' if similar else '<'} {SIMILAR_AT}: {'similar' if similar else 'different'}); source "
        f"classifier entropy {sim['source_entropy']:.3f} of its maximum",
        why,
    ] + ([backbone_reason] if ranking is not None else [])
    entry = strategy + (f":unfreeze={unfreeze}" if unfreeze else "") + (f":cut={cut}" if cut else "")
    return {
        "data": str(data), "backbone": backbone, "strategy": strategy, "unfreeze": unfreeze, "cut": cut,
        "compare_entry": entry, "quadrant": quadrant, "reasons": reasons,
        "measurements": {
            "classes": len(src.classes), "images": len(src), "train_images_per_class": per_class,
            "class_counts": {"min": int(counts.min()), "max": int(counts.max()),
                             "imbalance": round(float(counts.max() / max(counts.min(), 1)), 3)},
            "image_sizes": {"width": [int(sizes[:, 0].min()), int(np.median(sizes[:, 0])), int(sizes[:, 0].max())],
                            "height": [int(sizes[:, 1].min()), int(np.median(sizes[:, 1])), int(sizes[:, 1].max())],
                            "sampled": int(len(idx))},
            **sim,
        },
        "thresholds": {"large_per_class": LARGE_PER_CLASS, "similar_at": SIMILAR_AT},
        "backbone_ranking": ranking,
        "backbone_cv": cv_record,
    }
