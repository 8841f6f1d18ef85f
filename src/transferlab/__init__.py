"""transferlab: transfer learning on small image datasets.

Example:
    >>> import transferlab
    >>> run = transferlab.train("flowers17/", backbone="efficientnet_lite0", strategy="fine-tune",
    ...                         out="runs/ft")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from transferlab.api import TrainedModel, load  # noqa: E402
from transferlab.experiments.train import Run, resume_training, train  # noqa: E402
from transferlab.zoo import create_backbone, list_backbones  # noqa: E402

__all__ = ["Run", "TrainedModel", "__version__", "create_backbone", "list_backbones", "load", "resume_training",
           "train"]
