"""The engine's view of a task: its objective (loss and score). Defined in :mod:`transferlab.tasks`.

The engine is task-agnostic: it calls ``task.loss`` for training, ``task.batch_score`` for the
running training score and ``task.evaluate`` on whole validation outputs; classification's
objective is the default.
"""

from transferlab.tasks.base import Objective, Task
from transferlab.tasks.classify import ClassificationTask

__all__ = ["ClassificationTask", "Objective", "Task"]
