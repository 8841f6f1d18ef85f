"""How fast can the model alone run here? The ceiling under any loading path, per runtime and precision.

``benchmarks/extract.py`` compares whole extraction paths against the naive loop. This script asks
what no loading path can beat: the frozen network alone on a pre-decoded batch (random weights:
speed only), side by side in one process, repeats interleaved (repeat r of every runtime before
repeat r+1 of any), medians quoted. The naive loop is measured in the same process for the ratio.

Runtimes (fp32 unless named): ``torch-eager`` (NCHW, as the naive loop runs it), ``torch-channels-last``
(``--runtime torch``), ``torchscript-frozen`` (``torch.jit.freeze`` + ``optimize_for_inference``, oneDNN
fusions), ``onnxruntime`` (the default path's prefix: the project's ``onnx_prefix``), and
``torch-bf16`` (channels-last under CPU bf16 autocast: reduced precision, reported with the relative
difference of its pooled features from fp32's; not a candidate for the default path, which must
match PyTorch fp32 within its parity check).

Example:
    PYTHONPATH=src python benchmarks/model_ceiling.py --data ../shared/datasets/flowers17 \\
        --json benchmarks/results/model_ceiling.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets

from common import machine, table, write_json
from extract import cpu_share, evenly, naive

from transferlab.engine.runtimes import onnx_prefix, prefix_digest
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone


def runners(model: TransferModel, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Each runtime as a call that returns the pooled features of batch ``x``."""
    eager = model.stages.eval()  # NCHW, as the naive loop has it
    last = x.contiguous(memory_format=torch.channels_last)
    cl_net = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(cl_net, last)))
    boundary = len(model.stage_names)
    ort_prefix = onnx_prefix(model, boundary, digest=prefix_digest(model, boundary))

    def pooled(y: torch.Tensor) -> torch.Tensor:
        return y.float().mean(dim=(2, 3))

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return pooled(cl_net(last))

    return {"torch-eager": lambda: pooled(eager(x)), "torch-channels-last": lambda: pooled(cl_net(last)),
            "torchscript-frozen": lambda: pooled(frozen(last)), "onnxruntime": lambda: pooled(ort_prefix(x)),
            "torch-bf16": bf16}


def measure(name: str, *, data: Path, images: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """img/s of the model alone per runtime and of the naive loop, and each runtime's ratio to naive."""
    model = TransferModel(backbone=create_backbone(name, pretrained=False), num_classes=17, head=HeadConfig()).eval()
    size = model.preprocessing.input_size
    x = torch.randn(batch_size, 3, size, size)
    calls = runners(model, x)
    with torch.inference_mode():
        outs = {k: f() for k, f in calls.items()}  # warm-up, and the features each runtime gives
    ref = outs["torch-eager"]  # fp32 as the naive loop computes it
    folder = datasets.ImageFolder(str(data))
    loop = naive(data, evenly(len(folder), images), model, batch_size=batch_size)
    loop()  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in ["naive", *calls]}
    share = cpu_share()
    for _ in range(repeats):
        t = time.perf_counter()
        n = loop()
        rates["naive"].append(n / (time.perf_counter() - t))
        for k, f in calls.items():
            with torch.inference_mode():
                t = time.perf_counter()
                f()
                rates[k].append(batch_size / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    scale = ref.abs().max().item()
    return {"img_s": {k: round(v, 2) for k, v in med.items()},
            "runs_img_s": {k: [round(r, 2) for r in v] for k, v in rates.items()},
            "ratio_to_naive": {k: round(v / med["naive"], 3) for k, v in med.items() if k != "naive"},
            "max_abs_diff_vs_fp32_over_max": {k: float(f"{(o - ref).abs().max().item() / scale:.3g}")
                                              for k, o in outs.items()},
            "cpu_share_before": share, "cpu_share_after": cpu_share()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers17"))
    p.add_argument("--backbones", default="resnet50")
    p.add_argument("--images", type=int, default=256, help="images per naive run, spread over the classes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    res: dict[str, Any] = {"machine_start": machine(), "batch_size": a.batch_size, "repeats": a.repeats,
                           "torch_threads": torch.get_num_threads(), "backbones": {}}
    for name in a.backbones.split(","):
        res["backbones"][name] = measure(name, data=a.data, images=a.images, batch_size=a.batch_size,
                                         repeats=a.repeats)
    res["machine_end"] = machine()
    diff = lambda d: None if d is None else f"{d:.1e}"  # noqa: E731
    rows = [[f"{b} {k}", v, r["ratio_to_naive"].get(k), diff(r["max_abs_diff_vs_fp32_over_max"].get(k))]
            for b, r in res["backbones"].items() for k, v in r["img_s"].items()]
    print(table(["backbone runtime", "img/s (median)", "x naive", "|diff| / max vs fp32"], rows))
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
