"""The training engine: one loop for every plan, caching, checkpoints, metrics, DDP."""

from transferlab.engine.activations import (
    ActivationStore,
    SplitInputs,
    concat_inputs,
    mirrored_inputs,
    subset_inputs,
)
from transferlab.engine.distributed import DistContext, init_distributed, shutdown_distributed
from transferlab.engine.metrics import classification_metrics
from transferlab.engine.schedules import make_scheduler, stlr_factor
from transferlab.engine.tasks import ClassificationTask, Task
from transferlab.engine.trainer import (
    CHECKPOINT,
    Engine,
    EngineOptions,
    FitResult,
    configure_trainable,
    param_groups,
)

__all__ = [
    "CHECKPOINT",
    "ActivationStore",
    "ClassificationTask",
    "DistContext",
    "Engine",
    "EngineOptions",
    "FitResult",
    "SplitInputs",
    "Task",
    "classification_metrics",
    "concat_inputs",
    "configure_trainable",
    "init_distributed",
    "make_scheduler",
    "mirrored_inputs",
    "param_groups",
    "shutdown_distributed",
    "stlr_factor",
    "subset_inputs",
]
