"""Extraction time and peak memory against dataset size (Fashion-MNIST: 1k, 5k, 20k, 60k images).

Each size runs in a fresh subprocess (honest peak RSS): ``ActivationStore`` streams the features
of ``n`` training images into an on-disk ``FeatureCache`` entry (rows written as they come, never
all in memory). The model is the first ``--stages`` stages of mobilenet_v2 (random weights) at
``--size`` pixels, so that 60k images fit in minutes on 2 cores; memory is what this is about. Peak RSS is reported
for the main process and for its decode worker (``ru_maxrss`` of self and of children; it counts
the resident pages of the memory-mapped output file too).

Example:
    PYTHONPATH=src python benchmarks/scale.py --json benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import write_json

SIZES = (1000, 5000, 20000, 60000)


def child(n: int, *, size: int, backbone: str, stages: int) -> dict[str, Any]:
    """Extract features of the first ``n`` Fashion-MNIST training images into a fresh disk cache."""
    import numpy as np
    import torch

    from transferlab.data import ImageDataset, build_transform, compute_norm_stats, open_dataset
    from transferlab.engine import ActivationStore, SplitInputs
    from transferlab.engine.feature_cache import FeatureCache
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.zoo import create_backbone

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = open_dataset("fashion-mnist", quiet=True)
    idx = np.arange(n)
    model = TransferModel(backbone=create_backbone(backbone, pretrained=False), num_classes=10, head=HeadConfig())
    model.preprocessing = replace(model.preprocessing, input_size=size, resize_size=size)
    model.to(memory_format=torch.channels_last)
    pre = model.preprocessing
    tf = build_transform(pre, norm=compute_norm_stats("pretrained", source=source, indices=idx, preprocessing=pre))
    split = SplitInputs(name="train", labels=torch.as_tensor(source.labels[idx]),
                        eval_dataset=ImageDataset(source, idx, tf),
                        items=[source.identity(int(i)) for i in idx])
    with tempfile.TemporaryDirectory() as root:
        store = ActivationStore(model, device=torch.device("cpu"), batch_size=64,
                                disk=FeatureCache(Path(root)), fingerprint={"backbone": backbone, "size": size, "stages": stages})
        boundary = min(stages, len(model.stage_names))
        store.pristine_upto = boundary
        t = time.perf_counter()
        feats = store.get(split, boundary)
        seconds = time.perf_counter() - t
        shape = list(feats.shape)
        cache_mb = store.disk.size_bytes() / 2**20 if store.disk is not None else 0.0
    return {"n": n, "seconds": round(seconds, 2), "img_s": round(n / seconds, 1), "features_shape": shape,
            "cache_mb": round(cache_mb, 1), "rss_before_mb": round(rss_start / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    p.add_argument("--size", type=int, default=32, help="input pixels (Fashion-MNIST is 28x28)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--stages", type=int, default=3, help="frozen stages to run (the boundary cached on disk)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(a.child, size=a.size, backbone=a.backbone, stages=a.stages)))
        return 0

    results: dict[str, Any] = {"backbone": a.backbone, "stages": a.stages, "input_size": a.size, "repeats": a.repeats,
                               "cpus": os.cpu_count(), "load_avg_1m_before": round(os.getloadavg()[0], 2), "sizes": []}
    for n in (int(s) for s in a.sizes.split(",")):
        runs = []
        for _ in range(a.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--size", str(a.size),
                                  "--backbone", a.backbone, "--stages", str(a.stages)], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {"n": n, "seconds": statistics.median(r["seconds"] for r in runs),
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
               "peak_rss_worker_mb": statistics.median(r["peak_rss_worker_mb"] for r in runs),
               "cache_mb": runs[0]["cache_mb"], "load_avg_1m": round(os.getloadavg()[0], 2), "runs": runs}
        row["us_per_img"] = round(1e6 * row["seconds"] / n, 1)
        results["sizes"].append(row)
        print(f"n={n}: {row['seconds']} s, peak RSS {row['peak_rss_mb']} MB (load {row['load_avg_1m']})",
              file=sys.stderr)
        write_json(a.json, results)  # after every size: a long run that is stopped keeps what it measured
    results["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(f"{'images':>8} {'seconds':>8} {'us/img':>8} {'peak RSS MB':>12} {'worker MB':>10} {'cache MB':>9}")
    for r in results["sizes"]:
        print(f"{r['n']:>8} {r['seconds']:>8.1f} {r['us_per_img']:>8.1f} {r['peak_rss_mb']:>12.1f} "
              f"{r['peak_rss_worker_mb']:>10.1f} {r['cache_mb']:>9.1f}")
    print(f"{a.backbone} stages 0..{a.stages - 1} at {a.size}px, repeats={a.repeats}, load average 1m: before {results['load_avg_1m_before']}, "
          f"after {results['load_avg_1m_after']}")
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
