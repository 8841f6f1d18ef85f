"""Classification metrics from logits (defined with the task in :mod:`transferlab.tasks.classify`)."""

from transferlab.tasks.classify import classification_metrics

__all__ = ["classification_metrics"]
