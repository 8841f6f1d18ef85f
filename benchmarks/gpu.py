"""Frozen-prefix extraction and suffix training on a CUDA GPU: fp32 vs bf16 autocast, NCHW vs channels-last.

For a lent GPU; on a machine without CUDA it says so and exits 2 (nothing measured). Under
``torchrun --nproc-per-node N`` the extraction runs through ``ActivationStore`` sharded across the
ranks (nccl) and gathered, as ``transferlab train`` does.

Example:
    PYTHONPATH=src python benchmarks/gpu.py --json benchmarks/results/gpu.json
    PYTHONPATH=src torchrun --nproc-per-node 2 benchmarks/gpu.py --json benchmarks/results/gpu_ddp.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from common import write_json

from transferlab.engine import ActivationStore, SplitInputs, init_distributed, shutdown_distributed
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone

BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "resnet50")


def rate(fn: Any, *, images: int, repeats: int) -> float:
    """Median img/s of ``repeats`` synchronised calls of ``fn``."""
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(images / (time.perf_counter() - t))
    return round(statistics.median(out), 1)


def model_only(model: TransferModel, *, batch: int, dtype: torch.dtype | None, channels_last: bool,
               repeats: int) -> float:
    size = model.preprocessing.input_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = model.stages.to(memory_format=fmt).eval()
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=fmt)

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            net(x)

    run()
    return rate(run, images=batch, repeats=repeats)


def store_extraction(model: TransferModel, ctx: Any, *, n: int, batch: int) -> dict[str, Any]:
    """``ActivationStore`` over ``n`` pre-made images (sharded under torchrun), the engine's own path."""
    size = model.preprocessing.input_size
    ds = TensorDataset(torch.randn(n, 3, size, size), torch.zeros(n, dtype=torch.long))
    split = SplitInputs(name="bench", labels=torch.zeros(n, dtype=torch.long), eval_dataset=ds)
    store = ActivationStore(model, device=ctx.device, batch_size=batch)
    torch.cuda.synchronize()
    t = time.perf_counter()
    store.get(split, len(model.stage_names))
    torch.cuda.synchronize()
    return {"img_s": round(n / (time.perf_counter() - t), 1), "runtime": store.runtime_for(split, 1),
            "forward_images_this_rank": store.forward_images, "world_size": ctx.world_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=2048, help="images through the ActivationStore path")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device on this machine; nothing measured (run it where a GPU is lent)",
              file=sys.stderr)
        return 2
    ctx = init_distributed("cuda")
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(ctx.device), "torch": torch.__version__,
                               "world_size": ctx.world_size, "backend": "nccl" if ctx.distributed else None,
                               "batch_size": a.batch_size, "backbones": {}}
    for name in a.backbones.split(","):
        model = TransferModel(backbone=create_backbone(name, pretrained=False), num_classes=17,
                              head=HeadConfig()).to(ctx.device)
        entry = {f"{prec}_{fmt}": model_only(model, batch=a.batch_size, repeats=a.repeats,
                                             dtype=torch.bfloat16 if prec == "bf16" else None,
                                             channels_last=fmt == "channels_last")
                 for prec in ("fp32", "bf16") for fmt in ("nchw", "channels_last")}
        entry = {"model_only_img_s": entry, "store": store_extraction(model, ctx, n=a.images, batch=a.batch_size)}
        results["backbones"][name] = entry
        if ctx.is_main:
            print(name, entry, file=sys.stderr)
    if ctx.is_main:
        write_json(a.json, results)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
