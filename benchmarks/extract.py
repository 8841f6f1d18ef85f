"""End-to-end feature extraction from JPEG files: transferlab against the naive PyTorch loop.

Contenders, side by side in one process, per backbone (random weights: speed only):

* ``naive``: torchvision ``ImageFolder`` + v1 transforms (Resize, CenterCrop, ToTensor, Normalize),
  the default ``DataLoader`` (batch 32, no workers), an NCHW fp32 model in ``torch.no_grad``.
* ``transferlab``: the default path, no flags: ``ActivationStore`` with ``runtime="auto"`` (JPEG draft
  decoding, the eval transform resizing uint8 tensors, one decode worker overlapping the model; on the
  CPU ONNX Runtime after its parity check on the first batch, its threads sleeping rather than spinning,
  small prefixes in chunks of 4 images; PyTorch on CUDA). That one-time step per backbone and weights
  (remembered on disk for pretrained weights) runs before the timed runs and is reported apart as
  ``first_use_s``.
* ``transferlab-torch``: the same path with the frozen prefix forced to PyTorch (channels-last,
  ``inference_mode``).

Every contender produces pooled features (global average of the last stage) for the same images.
``model_only`` is the transferlab model (PyTorch) on a pre-decoded batch, reported as img/s and as a
fraction of the machine's fp32 peak (``--peak-gflops``, FLOPs counted by ``FlopCounterMode``);
``model_only_onnx`` the same for the ONNX Runtime prefix (as the default path runs it). ``decode_only``
is img/s of decoding + transforms alone, in one process: transferlab's (JPEG draft, uint8 tensor
resize), the same without draft, the same with the former Pillow resize, and naive's.

Every contender also records ``cpu_ms_per_img``: CPU time of the process and its decode workers per
image (less sensitive to other load than img/s). ``cpu_share`` is the fraction of one core a busy
loop in this process got for 0.5 s, before and after each backbone: 1.0 on an idle machine; below
that, other processes took the cores (the load average counts waiting idle-priority tasks too, this
does not), and img/s ratios are not what a quiet machine gives.

Example:
    PYTHONPATH=src python benchmarks/extract.py --data ../shared/datasets/flowers17 --json benchmarks/results/extract.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms
from torchvision.transforms import v2

from common import write_json

from transferlab.data import ImageDataset, build_transform, compute_norm_stats, open_dataset
from transferlab.data.geometry import eval_geometry
from transferlab.engine import ActivationStore, SplitInputs
from transferlab.engine import runtimes
from transferlab.engine.runtimes import onnx_prefix, prefix_digest
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone

BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "resnet50")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_share(seconds: float = 0.5) -> float:
    """Fraction of one core a busy loop in this process gets for ``seconds`` (1.0: nothing else wants the CPU)."""
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        pass
    return round((time.process_time() - cpu) / (time.perf_counter() - wall), 3)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the decode workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def evenly(n_total: int, n: int) -> np.ndarray:
    """``n`` indices spread over ``0..n_total-1`` (every class of a sorted folder is represented)."""
    return np.unique(np.linspace(0, n_total - 1, num=min(n, n_total)).round().astype(np.int64))


def timed(fn: Callable[[], int], *, repeats: int, cpu: list[float] | None = None) -> tuple[float, list[float]]:
    """Median img/s of ``repeats`` calls of ``fn`` (which returns how many images it processed).

    CPU ms per image of each call (process + joined children) is appended to ``cpu`` when given.
    """
    rates = []
    for _ in range(repeats):
        t, c = time.perf_counter(), cpu_seconds()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
        if cpu is not None:
            cpu.append(round(1e3 * (cpu_seconds() - c) / n, 2))
    return statistics.median(rates), [round(r, 2) for r in rates]


def naive(data: Path, indices: np.ndarray, model: TransferModel, *, batch_size: int) -> Callable[[], int]:
    pre = model.preprocessing
    tf = transforms.Compose([transforms.Resize(pre.resize_size), transforms.CenterCrop(pre.input_size),
                             transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    ds = Subset(datasets.ImageFolder(str(data), transform=tf), indices.tolist())
    net = model.stages

    def run() -> int:
        model.to(memory_format=torch.contiguous_format).eval()
        n = 0
        with torch.no_grad():
            for x, _ in DataLoader(ds, batch_size=batch_size):
                net(x).mean(dim=(2, 3))
                n += len(x)
        return n

    return run


def transferlab(data: Path, indices: np.ndarray, model: TransferModel, *, batch_size: int,
                runtime: str) -> Callable[[], int]:
    source = open_dataset(str(data), quiet=True)
    pre = model.preprocessing
    tf = build_transform(pre, norm=compute_norm_stats("pretrained", source=source, indices=indices, preprocessing=pre))
    split = SplitInputs(name="bench", labels=torch.zeros(len(indices), dtype=torch.long),
                        eval_dataset=ImageDataset(source, indices, tf, draft_size=pre.resize_size))
    boundary = len(model.stage_names)

    def run() -> int:
        model.to(memory_format=torch.channels_last)
        store = ActivationStore(model, device=torch.device("cpu"), batch_size=batch_size, runtime=runtime)
        store.get(split, boundary).mean(dim=(2, 3))
        return store.forward_images

    def first_use() -> float:
        """The one-time cost per backbone and weights (ONNX export + parity check on the first batch;
        remembered on disk for pretrained weights), taken before the timed runs and reported apart."""
        t = time.perf_counter()
        ActivationStore(model, device=torch.device("cpu"), batch_size=batch_size, runtime=runtime).runtime_for(
            split, boundary)
        return round(time.perf_counter() - t, 2)

    run.first_use = first_use  # type: ignore[attr-defined]
    return run


def decode_only(data: Path, indices: np.ndarray, model: TransferModel, *, repeats: int) -> dict[str, Any]:
    """img/s of decoding + transforms alone (one process, no model): draft JPEG, full decode, Pillow resize, naive."""
    source = open_dataset(str(data), quiet=True)
    pre = model.preprocessing
    norm = compute_norm_stats("pretrained", source=source, indices=indices, preprocessing=pre)
    tf = build_transform(pre, norm=norm)
    pillow_tf = v2.Compose([*eval_geometry(pre).transforms, v2.Normalize(list(norm.mean), list(norm.std))])
    naive_tf = transforms.Compose([transforms.Resize(pre.resize_size), transforms.CenterCrop(pre.input_size),
                                   transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    folder = Subset(datasets.ImageFolder(str(data), transform=naive_tf), indices.tolist())
    sets = {"transferlab": ImageDataset(source, indices, tf, draft_size=pre.resize_size),
            "transferlab_no_draft": ImageDataset(source, indices, tf),
            "transferlab_pillow_resize": ImageDataset(source, indices, pillow_tf, draft_size=pre.resize_size),
            "naive": folder}
    out = {}
    for label, ds in sets.items():
        def run(ds: Any = ds) -> int:
            for i in range(len(ds)):
                ds[i]
            return len(ds)

        out[label] = timed(run, repeats=repeats)[0]
    return {k: round(v, 2) for k, v in out.items()}


def model_only_onnx(model: TransferModel, *, batch_size: int, repeats: int) -> dict[str, Any]:
    boundary = len(model.stage_names)
    run_prefix = onnx_prefix(model, boundary, digest=prefix_digest(model, boundary))
    size = model.preprocessing.input_size
    x = torch.randn(batch_size, 3, size, size)
    run_prefix(x)  # warm-up

    def run() -> int:
        run_prefix(x)
        return batch_size

    rate, rates = timed(run, repeats=repeats)
    return {"img_s": round(rate, 2), "runs_img_s": rates}


def model_only(model: TransferModel, *, batch_size: int, repeats: int, peak_gflops: float) -> dict[str, Any]:
    size = model.preprocessing.input_size
    model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.stages(x[:1])
    flops = counter.get_total_flops()  # one multiply-add = 2 FLOPs
    with torch.inference_mode():
        model.stages(x)  # warm-up: oneDNN primitive creation

        def run() -> int:
            with torch.inference_mode():
                model.stages(x)
            return batch_size

        rate, rates = timed(run, repeats=repeats)
    gflops = rate * flops / 1e9
    return {"img_s": round(rate, 2), "runs_img_s": rates, "gflop_per_img": round(flops / 1e9, 3),
            "gflop_s": round(gflops, 2), "fraction_of_peak": round(gflops / peak_gflops, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers17"))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--images", type=int, default=256, help="images per run, spread over the classes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runtimes", default="auto,torch", help="transferlab runtimes to include (auto: the default)")
    p.add_argument("--peak-gflops", type=float, default=157.0, help="fp32 peak of this machine")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. how loaded the machine was)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    folder = datasets.ImageFolder(str(a.data))
    indices = evenly(len(folder), a.images)
    results: dict[str, Any] = {
        "data": str(a.data), "images": int(len(indices)), "batch_size": a.batch_size, "repeats": a.repeats,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "peak_gflops": a.peak_gflops,
        "torch": torch.__version__, "load_avg_1m_before": load_average(), "cpu_share_before": cpu_share(),
        "onnx_runtime": {"threads": runtimes.machine_threads(), "allow_spinning": "0", "chunk": runtimes.ORT_CHUNK,
                         "chunk_max_weight_bytes": runtimes.ORT_CHUNK_MAX_WEIGHT_BYTES},
        "backbones": {}, "note": a.note,
    }
    rows = []
    for name in a.backbones.split(","):
        model = TransferModel(backbone=create_backbone(name, pretrained=False), num_classes=17, head=HeadConfig())
        model.eval()
        contenders = {"naive": naive(a.data, indices, model, batch_size=a.batch_size)}
        for runtime in a.runtimes.split(","):
            label = "transferlab" if runtime == "auto" else f"transferlab-{runtime}"
            contenders[label] = transferlab(a.data, indices, model, batch_size=a.batch_size, runtime=runtime)
        entry: dict[str, Any] = {"contenders": {}, "load_avg_1m_before": load_average(), "cpu_share_before": cpu_share(),
                                 "onnx_chunked": runtimes.chunked(model, len(model.stage_names))}
        entry["first_use_s"] = {label: fn.first_use() for label, fn in contenders.items() if hasattr(fn, "first_use")}
        # interleaved: repeat r of every contender runs before repeat r+1 of any (load drifts equally)
        runs: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(a.repeats):
            for label, fn in contenders.items():
                runs[label] += timed(fn, repeats=1, cpu=cpu[label])[1]
        for label in contenders:
            entry["contenders"][label] = {"img_s": round(statistics.median(runs[label]), 2), "runs_img_s": runs[label],
                                          "cpu_ms_per_img": statistics.median(cpu[label]),
                                          "runs_cpu_ms_per_img": cpu[label]}
        base = entry["contenders"]["naive"]["img_s"]
        entry["speedup_vs_naive"] = {k: round(v["img_s"] / base, 2) for k, v in entry["contenders"].items()
                                     if k != "naive"}
        entry["model_only"] = model_only(model, batch_size=a.batch_size, repeats=a.repeats, peak_gflops=a.peak_gflops)
        entry["model_only_onnx"] = model_only_onnx(model, batch_size=a.batch_size, repeats=a.repeats)
        entry["model_only_onnx"]["fraction_of_peak"] = round(
            entry["model_only_onnx"]["img_s"] * entry["model_only"]["gflop_per_img"] / a.peak_gflops, 4)
        entry["decode_only"] = decode_only(a.data, indices, model, repeats=a.repeats)
        entry["load_avg_1m_after"] = load_average()
        entry["cpu_share_after"] = cpu_share()
        results["backbones"][name] = entry
        write_json(a.json, results)  # after each backbone: a partial run still leaves its numbers
        for label, v in entry["contenders"].items():
            rows.append((name, label, v["img_s"], entry["speedup_vs_naive"].get(label, 1.0), v["cpu_ms_per_img"]))
        mo = entry["model_only"]
        rows.append((name, "model-only (torch)", mo["img_s"], None, None, mo["gflop_s"], mo["fraction_of_peak"]))
        mx = entry["model_only_onnx"]
        rows.append((name, "model-only (onnx)", mx["img_s"], None, None, mx["img_s"] * mo["gflop_per_img"],
                     mx["fraction_of_peak"]))
        for label, rate in entry["decode_only"].items():
            rows.append((name, f"decode-only {label}", rate, None, None))
        print(f"done {name} (load {load_average()}, cpu share {entry['cpu_share_after']})", file=sys.stderr)
    results["load_avg_1m_after"] = load_average()
    results["cpu_share_after"] = cpu_share()
    print(f"{'backbone':<20} {'contender':<32} {'img/s':>8} {'vs naive':>9} {'CPU ms/img':>11} {'GFLOP/s':>8} "
          f"{'of peak':>8}")
    for row in rows:
        name, label, rate, speedup, cpu_ms = row[:5]
        extra = f" {row[5]:>8.1f} {100 * row[6]:>7.1f}%" if len(row) > 5 else ""
        sp = f"{speedup:>8.2f}x" if speedup is not None else f"{'':>9}"
        cm = f"{cpu_ms:>11.1f}" if cpu_ms is not None else f"{'':>11}"
        print(f"{name:<20} {label:<32} {rate:>8.1f} {sp} {cm}{extra}")
    print(f"images={results['images']} repeats={a.repeats} load average 1m: before {results['load_avg_1m_before']}, "
          f"after {results['load_avg_1m_after']}; cpu share of one core: before {results['cpu_share_before']}, "
          f"after {results['cpu_share_after']}")
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
