"""Learning-rate schedules per step: STLR (exact ULMFiT formula), one-cycle, cosine, constant."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from transferlab.strategies.plans import Phase


def stlr_factor(step: int, *, total: int, cut_frac: float, ratio: float) -> float:
    """Slanted triangular LR multiplier (Howard & Ruder 2018, eq. 3), ``lr_t = lr_max * factor``.

    cut = floor(T * cut_frac); p = t/cut if t < cut else 1 - (t - cut) / (cut * (1/cut_frac - 1));
    factor = (1 + p * (ratio - 1)) / ratio.

    Example:
        >>> stlr_factor(0, total=100, cut_frac=0.1, ratio=32)
        0.03125
        >>> stlr_factor(10, total=100, cut_frac=0.1, ratio=32)
        1.0
    """
    cut = max(1, math.floor(total * cut_frac))
    if step < cut:
        p = step / cut
    else:
        p = 1 - (step - cut) / (cut * (1 / cut_frac - 1))
    p = max(p, 0.0)
    return (1 + p * (ratio - 1)) / ratio


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def make_scheduler(optimizer: Optimizer, phase: Phase, *, total_steps: int) -> LRScheduler:
    """A per-step scheduler for ``phase`` spanning ``total_steps`` optimizer steps."""
    total = max(1, total_steps)
    warm = int(phase.warmup * total)
    if phase.schedule == "onecycle":
        # torch's OneCycleLR divides by (pct_start * steps - 1): keep >= 2 warm-up steps, and give
        # it a 4-step cycle at least (a phase shorter than that runs the cycle's first steps only)
        cycle = max(total, 4)
        return OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=cycle,
            pct_start=min(0.5, max(phase.warmup, 0.25, 2.0 / cycle)),
            cycle_momentum=phase.optimizer == "sgd",
        )
    if phase.schedule == "stlr":
        return LambdaLR(optimizer, lambda t: stlr_factor(t, total=total, cut_frac=phase.cut_frac, ratio=phase.ratio))
    if phase.schedule == "cosine":
        def cosine(t: int) -> float:
            if t < warm:
                return _warmup(t, warm)
            progress = (t - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return LambdaLR(optimizer, cosine)
    return LambdaLR(optimizer, lambda t: _warmup(t, warm))
