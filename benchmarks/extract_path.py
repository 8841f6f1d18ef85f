"""Where the default extraction path spends its time, step by step from the previous default (A/B, one process).

Per backbone (random weights: speed only), the same images through the same decode worker and loop
as ``ActivationStore`` (``loader``: batch 32, one worker), with the frozen prefix in ONNX Runtime:

* ``before``: the previous default: Pillow resize in the eval transform, ONNX Runtime threads
  spinning, whole batches of 32.
* ``tensor-resize``: the eval transform resizes the uint8 tensor (``EvalTransform``).
* ``no-spin``: + ONNX Runtime threads sleep between ops (``session_options``).
* ``now``: + chunks of ``ORT_CHUNK`` images for small prefixes (``chunked``): the default path today.

Each records img/s, CPU ms per image of the main process (the model) and of the decode worker, and
the fraction of the wall time the main process waited for a batch. Interleaved: repeat r of every
variant runs before repeat r+1 of any. ``cpu_share`` as in ``extract.py``.

Example:
    PYTHONPATH=src python benchmarks/extract_path.py --data ../shared/datasets/flowers17 --json benchmarks/results/extract_path.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from common import write_json
from extract import cpu_share, evenly, load_average

from transferlab.data import ImageDataset, NormStats, build_transform, open_dataset
from transferlab.data.geometry import eval_geometry
from transferlab.engine import ActivationStore, runtimes
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone

VARIANTS = ("before", "tensor-resize", "no-spin", "now")


def session_run(blob: bytes, *, spin: bool, chunk: int | None) -> Callable[[torch.Tensor], Any]:
    """An ONNX Runtime session over ``blob`` with the engine's options, spinning or not, in chunks or whole."""
    import onnxruntime as ort

    session = ort.InferenceSession(blob, runtimes.session_options(spinning=spin), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> list[np.ndarray]:
        a = x.contiguous().numpy()
        step = chunk or len(a)
        return [session.run(None, {"x": a[i : i + step]})[0] for i in range(0, len(a), step)]

    return run


def one_pass(loader: Any, run: Callable[[torch.Tensor], Any]) -> dict[str, float]:
    """img/s, main and worker CPU ms per image, and the fraction of wall time spent waiting for batches."""
    own0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start, waited, n = time.perf_counter(), 0.0, 0
    batches = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            x, _ = next(batches)
        except StopIteration:
            break
        waited += time.perf_counter() - t
        run(x)
        n += len(x)
    del batches  # the worker is joined: its CPU time is in RUSAGE_CHILDREN
    wall = time.perf_counter() - start
    own1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    worker = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
    return {"img_s": n / wall, "main_cpu_ms_per_img": 1e3 * main / n, "worker_cpu_ms_per_img": 1e3 * worker / n,
            "wait_fraction": waited / wall}


def backbone_variants(name: str, data: Path, indices: np.ndarray, *, batch_size: int) -> dict[str, tuple[Any, Any]]:
    """(loader, runner) per variant for backbone ``name``."""
    torch.manual_seed(0)
    model = TransferModel(backbone=create_backbone(name, pretrained=False), num_classes=17, head=HeadConfig()).eval()
    pre = model.preprocessing
    norm = NormStats("pretrained", pre.mean, pre.std)
    source = open_dataset(str(data), quiet=True)
    pillow = v2.Compose([*eval_geometry(pre).transforms, v2.Normalize(list(pre.mean), list(pre.std))])
    store = ActivationStore(model, device=torch.device("cpu"), batch_size=batch_size)

    def loader(tf: Callable[..., torch.Tensor]) -> Any:
        return store.loader(ImageDataset(source, indices, tf, draft_size=pre.resize_size))

    boundary = len(model.stage_names)
    blob = runtimes.export_prefix(model, boundary)
    chunk = runtimes.ORT_CHUNK if runtimes.chunked(model, boundary) else None
    spin, sleep = session_run(blob, spin=True, chunk=None), session_run(blob, spin=False, chunk=None)
    now = runtimes.onnx_prefix(model, boundary, digest=runtimes.prefix_digest(model, boundary))
    fast = build_transform(pre, norm=norm)
    x = torch.zeros(batch_size, 3, pre.input_size, pre.input_size)
    for run in (spin, sleep, now):
        run(x)  # warm-up
    return {"before": (lambda: loader(pillow), spin), "tensor-resize": (lambda: loader(fast), spin),
            "no-spin": (lambda: loader(fast), sleep), "now": (lambda: loader(fast), now), "_chunk": (chunk, None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers17"))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--backbones", default="efficientnet_lite0,mobilenet_v2,resnet50")
    p.add_argument("--images", type=int, default=160, help="images per run, spread over the classes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    indices = evenly(len(open_dataset(str(a.data), quiet=True)), a.images)
    results: dict[str, Any] = {"data": str(a.data), "images": int(len(indices)), "batch_size": a.batch_size,
                               "repeats": a.repeats, "torch": torch.__version__, "backbones": {}}
    for name in a.backbones.split(","):
        variants = backbone_variants(name, a.data, indices, batch_size=a.batch_size)
        chunk = variants.pop("_chunk")[0]
        entry: dict[str, Any] = {"load_avg_1m_before": load_average(), "cpu_share_before": cpu_share(),
                                 "chunk": chunk, "variants": {}}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
        for _ in range(a.repeats):
            for label in VARIANTS:
                make_loader, run = variants[label]
                runs[label].append(one_pass(make_loader(), run))
        for label in VARIANTS:
            med = {k: round(statistics.median(r[k] for r in runs[label]), 3) for k in runs[label][0]}
            entry["variants"][label] = {**med, "runs_img_s": [round(r["img_s"], 2) for r in runs[label]]}
        entry["load_avg_1m_after"], entry["cpu_share_after"] = load_average(), cpu_share()
        results["backbones"][name] = entry
        write_json(a.json, results)
        print(f"{name} (load {entry['load_avg_1m_before']}-{entry['load_avg_1m_after']}, cpu share "
              f"{entry['cpu_share_before']}-{entry['cpu_share_after']}, chunk {chunk})")
        base = entry["variants"]["before"]
        for label in VARIANTS:
            v = entry["variants"][label]
            print(f"  {label:<14} {v['img_s']:7.2f} img/s ({v['img_s'] / base['img_s']:.2f}x)  main "
                  f"{v['main_cpu_ms_per_img']:6.2f} + worker {v['worker_cpu_ms_per_img']:5.2f} CPU ms/img  "
                  f"waiting {100 * v['wait_fraction']:4.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
