"""transferlab: transfer learning on small image datasets.

Importing the package is cheap: ``train``, ``Run``, ``create_backbone`` ... load torch, timm and
scikit-learn on first use (PEP 562 ``__getattr__``), so ``import transferlab.errors`` and
``transferlab --help`` do not pay for them.

Example:
    >>> import transferlab
    >>> run = transferlab.train("flowers17/", backbone="efficientnet_lite0", strategy="fine-tune",
    ...                         out="runs/ft")  # doctest: +SKIP
"""

from __future__ import annotations

from transferlab._lazy import lazy_attributes

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY = {
    "Run": "transferlab.experiments.train",
    "resume_training": "transferlab.experiments.train",
    "train": "transferlab.experiments.train",
    "TrainedModel": "transferlab.api",
    "load": "transferlab.api",
    "create_backbone": "transferlab.zoo",
    "list_backbones": "transferlab.zoo",
}

__all__ = ["Run", "TrainedModel", "__version__", "create_backbone", "list_backbones", "load", "resume_training",
           "train"]


__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
