"""Strategies: the new head on a cut featurizer, and plans of phases for every classic strategy.

``plans`` is pure Python (the CLI reads its choices); the model and the linear probe load torch and
scikit-learn on first access.
"""

from __future__ import annotations

from transferlab._lazy import lazy_attributes
from transferlab.strategies.plans import (
    STRATEGIES,
    Phase,
    Plan,
    PlanOptions,
    build_plan,
    load_plan,
)

_LAZY = {
    "ProbeResult": "transferlab.strategies.linear_probe",
    "fit_linear_probe": "transferlab.strategies.linear_probe",
    "HeadConfig": "transferlab.strategies.model",
    "TransferModel": "transferlab.strategies.model",
    "build_head": "transferlab.strategies.model",
    "check_cut": "transferlab.strategies.model",
}

__all__ = [
    "STRATEGIES",
    "HeadConfig",
    "Phase",
    "Plan",
    "PlanOptions",
    "ProbeResult",
    "TransferModel",
    "build_head",
    "build_plan",
    "check_cut",
    "fit_linear_probe",
    "load_plan",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
