"""``transferlab demo`` (``make demo``): compare strategies on small-data Fashion-MNIST, write a report.

Setting: Debian's Fashion-MNIST, 20 training images per class (seeded), a fixed seeded stratified
subset of 200 validation and 2000 test images, one seed. Transfer: efficientnet_lite0's ImageNet
features, linear-probe and feature-extraction. Baselines that are not strawmen: ``hog-svm``
(hand-crafted HOG + linear SVM, C on val) and scratch on an architecture sized for the data
(``small_cnn``, 136k parameters, at the images' native 28 px) trained until val loss stops
improving (up to 60 epochs, patience 10) instead of 3 epochs of a 4.7M-parameter network at 224 px.
The report's "Budgets" table states what each side had. Sized for a few minutes on 2 CPU cores.

Example:
    >>> from transferlab.experiments.demo import run_demo
    >>> run_demo(out="demo")  # doctest: +SKIP
    0
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transferlab.options import DataOptions, TrainOptions

DEMO_STRATEGIES = ("scratch:backbone=small_cnn", "hog-svm", "linear-probe", "feature-extraction")
DEMO_TRAIN_PER_CLASS = 20
DEMO_VAL = 200
DEMO_TEST = 2000


def demo_options(*, quiet: bool) -> tuple[DataOptions, TrainOptions]:
    """The demo's data and training options.

    Example:
        >>> d, t = demo_options(quiet=True)
        >>> t.backbone, d.train_per_class
        ('efficientnet_lite0', 20)
    """
    d = DataOptions(train_per_class=DEMO_TRAIN_PER_CLASS, quiet=quiet, split_seed=0)
    t = TrainOptions(backbone="efficientnet_lite0", epochs=15, scratch_epochs=60, patience=10)
    return d, t


def run_demo(*, out: str | os.PathLike[str] = "demo", quiet: bool = False) -> int:
    """Run the demo compare into ``out`` and print where the report is (returns the exit status)."""
    from transferlab.data import open_dataset
    from transferlab.experiments.compare import compare
    from transferlab.report import build_report, report_summary

    d, t = demo_options(quiet=quiet)
    t0 = time.perf_counter()
    if not quiet:
        print(f"transferlab demo: {', '.join(DEMO_STRATEGIES)} on Fashion-MNIST, {DEMO_TRAIN_PER_CLASS} training "
              f"images per class, {DEMO_TEST} test images, transfer from efficientnet_lite0 -> {out}/", flush=True)
    source = open_dataset("fashion-mnist", quiet=quiet)
    compare("fashion-mnist", strategies=list(DEMO_STRATEGIES), seeds=1, out=out, data_options=d, train_options=t,
            val_subset=DEMO_VAL, test_subset=DEMO_TEST, source=source,
            overwrite=(Path(out) / "results.json").is_file())  # a demo again replaces the earlier demo
    path = build_report(out, source=source)
    print("\n".join(report_summary(out)))
    print(f"demo finished in {time.perf_counter() - t0:.0f}s; report: {Path(path).resolve()}")
    return 0
