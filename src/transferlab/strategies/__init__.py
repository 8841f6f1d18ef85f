"""Strategies: the new head on a cut featurizer, and plans of phases for every classic strategy."""

from transferlab.strategies.linear_probe import ProbeResult, fit_linear_probe
from transferlab.strategies.model import HeadConfig, TransferModel, build_head
from transferlab.strategies.plans import (
    STRATEGIES,
    Phase,
    Plan,
    PlanOptions,
    build_plan,
    load_plan,
)

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
    "fit_linear_probe",
    "load_plan",
]
