"""Benchmark: PyTorch vs ONNX Runtime on this CPU for a trained run (latency at batch 1, throughput at batch 32).

Times the model only (inputs are real photos of the run's test split, decoded and preprocessed once
beforehand), after warm-up, for each thread count. Prints a Markdown table and writes JSON.

Example:
    OMP_NUM_THREADS=1 python benchmarks/onnx_vs_torch.py --model runs/flowers --threads 1,2 \\
        --out benchmarks/results/onnx_vs_torch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import atomic_write_text, load_split, open_dataset
from transferlab.export import open_predictor


def _inputs(run: Path, n: int) -> np.ndarray:
    """``n`` preprocessed test photos of the run (repeated when the split is smaller)."""
    pred = open_predictor(run, runtime="torch")
    source = open_dataset(json.loads((run / "config.json").read_text())["data"], validate=False)
    test = load_split(run, source).test
    xs = [pred.preprocess(source.load(int(i), draft_size=pred.draft_size)) for i in test[:n]]
    while len(xs) < n:
        xs.append(xs[len(xs) % len(test)])
    return np.stack(xs).astype(np.float32)


def _time(fn: Any, *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench(run: Path, *, threads: list[int], batch: int, repeats_b1: int, repeats_batch: int) -> dict[str, Any]:
    """Latency (batch 1) and throughput (``batch``) per runtime and thread count, plus max |logit diff|."""
    x = _inputs(run, batch)
    rows = []
    for t in threads:
        logits = {}
        for runtime in ("torch", "onnx"):
            p = open_predictor(run, runtime=runtime, threads=t)
            one = x[:1].copy()
            lat = _time(lambda: p.logits(one), repeats=repeats_b1, warmup=5)
            thr = _time(lambda: p.logits(x), repeats=repeats_batch, warmup=1)
            logits[runtime] = p.logits(x)
            rows.append({
                "runtime": runtime, "threads": t,
                "latency_b1_ms_p50": round(1000 * statistics.median(lat), 2),
                "latency_b1_ms_p95": round(1000 * float(np.percentile(lat, 95)), 2),
                "throughput_b32_img_s": round(batch / statistics.median(thr), 1),
                "batch_s_p50": round(statistics.median(thr), 4),
            })
        rows[-1]["max_abs_logit_diff_vs_torch"] = float(np.abs(logits["onnx"] - logits["torch"]).max())
    meta = json.loads((run / "model.json").read_text())
    import onnxruntime

    return {
        "run_dir": str(run), "backbone": meta["backbone"], "cut": meta["cut"], "num_classes": meta["num_classes"],
        "input_size": meta["preprocessing"]["input_size"], "batch": batch,
        "repeats": {"batch1": repeats_b1, "batch": repeats_batch}, "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "load_avg_1m_at_start": os.getloadavg()[0], "python": sys.version.split()[0],
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }


def table(res: dict[str, Any]) -> str:
    lines = [f"{res['backbone']} (cut {res['cut']}, {res['num_classes']} classes, {res['input_size']}px), "
             f"model only, median of {res['repeats']['batch1']} / {res['repeats']['batch']} runs",
             "", "| runtime | threads | latency b=1 p50 (ms) | p95 (ms) | throughput b=32 (img/s) |",
             "|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['runtime']} | {r['threads']} | {r['latency_b1_ms_p50']:.1f} | {r['latency_b1_ms_p95']:.1f} "
                     f"| {r['throughput_b32_img_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, metavar="RUN_DIR", help="a trained and exported run directory")
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default: 1,2)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats-b1", type=int, default=50)
    ap.add_argument("--repeats-batch", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/onnx_vs_torch.json", help="JSON to write")
    args = ap.parse_args(argv)
    res = bench(Path(args.model), threads=[int(t) for t in args.threads.split(",")], batch=args.batch,
                repeats_b1=args.repeats_b1, repeats_batch=args.repeats_batch)
    atomic_write_text(args.out, json.dumps(res, indent=2))
    print(table(res))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
