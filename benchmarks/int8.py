"""int8 vs fp32 ONNX Runtime on trained runs: accuracy, top-1 agreement, latency (batch 1), throughput (batch 32).

For each run directory (a fine-tuned flowers17 run, say): the fp32 ``model.onnx`` (exported if
missing) and several int8 variants (QDQ / QOperator, per-channel or per-tensor weights, minmax /
entropy / percentile calibration on training images) are measured side by side in one process.
The variant is chosen on the validation split (agreement with fp32, then accuracy, then
throughput), never on test; ``export --quantize int8`` with the chosen settings then writes the
run's ``model.int8.onnx`` and its parity report on test.

Example:
    PYTHONPATH=src python benchmarks/int8.py --runs runs/ft_mobilenet_v2 runs/ft_lite0 --json benchmarks/results/int8.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import write_json

from transferlab.engine.runtimes import machine_threads
from transferlab.export import export_onnx, quantize_int8
from transferlab.export.onnx_export import ONNX_FILE
from transferlab.export.quantize import _logits, _split_images, quantize_bytes, session

VARIANTS = ("qdq/per-channel/minmax", "qoperator/per-channel/minmax", "qdq/per-tensor/minmax",
            "qdq/per-channel/percentile", "qdq/per-channel/entropy")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def speed(sess: Any, x: np.ndarray, *, repeats: int) -> dict[str, float]:
    """Median latency of one image (ms) and throughput at batch 32 (img/s)."""
    one, batch = x[:1], x[:32]
    sess.run(None, {"input": batch})  # warm-up
    lat = []
    for i in range(repeats * 5):
        t = time.perf_counter()
        sess.run(None, {"input": x[i % len(x) : i % len(x) + 1] if len(x) else one})
        lat.append((time.perf_counter() - t) * 1000)
    thr = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"input": batch})
        thr.append(len(batch) / (time.perf_counter() - t))
    return {"latency_b1_ms": round(statistics.median(lat), 2), "throughput_b32_img_s": round(statistics.median(thr), 2)}


def scores(logits: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = logits.argmax(1)
    return {"accuracy": round(float((pred == y).mean()), 4), "top1_agreement": round(float((pred == ref).mean()), 4)}


def bench_run(run: Path, *, variants: list[str], n_cal: int, repeats: int) -> dict[str, Any]:
    if not (run / ONNX_FILE).is_file():
        export_onnx(run)
    x_cal, _ = _split_images(run, "train", n_cal)
    x_val, y_val = _split_images(run, "val", None)
    x_test, y_test = _split_images(run, "test", None)
    threads = machine_threads()
    fp32 = session(run / ONNX_FILE, threads=threads)
    ref_val, ref_test = _logits(fp32, x_val).argmax(1), _logits(fp32, x_test).argmax(1)
    out: dict[str, Any] = {"threads": threads, "calibration_images": int(len(x_cal)), "val_images": int(len(y_val)),
                           "test_images": int(len(y_test)), "load_avg_1m_before": load(), "variants": {}}
    out["fp32"] = {"val": scores(_logits(fp32, x_val), ref_val, y_val),
                   "test": scores(_logits(fp32, x_test), ref_test, y_test), **speed(fp32, x_test, repeats=repeats)}
    for name in variants:
        fmt, granularity, method = name.split("/")
        t0 = time.perf_counter()
        blob = quantize_bytes(run / ONNX_FILE, x_cal, fmt=fmt, per_channel=granularity == "per-channel", method=method)
        quant_s = time.perf_counter() - t0
        q = session(blob, threads=threads)
        entry = {"val": scores(_logits(q, x_val), ref_val, y_val), "test": scores(_logits(q, x_test), ref_test, y_test),
                 "quantize_s": round(quant_s, 2), "bytes": len(blob), **speed(q, x_test, repeats=repeats)}
        f32 = speed(fp32, x_test, repeats=repeats)  # fp32 again, right beside it: load drifts
        entry["fp32_beside"] = f32
        entry["throughput_vs_fp32"] = round(entry["throughput_b32_img_s"] / f32["throughput_b32_img_s"], 3)
        entry["latency_vs_fp32"] = round(entry["latency_b1_ms"] / f32["latency_b1_ms"], 3)
        out["variants"][name] = entry
        print(f"{run.name} {name}: val agree {entry['val']['top1_agreement']:.3f} test acc {entry['test']['accuracy']:.4f} "
              f"(fp32 {out['fp32']['test']['accuracy']:.4f}) throughput x{entry['throughput_vs_fp32']} "
              f"latency x{entry['latency_vs_fp32']} (load {load()})", file=sys.stderr)
    chosen = max(out["variants"], key=lambda k: (out["variants"][k]["val"]["top1_agreement"],
                                                  out["variants"][k]["val"]["accuracy"],
                                                  out["variants"][k]["throughput_vs_fp32"]))
    fmt, granularity, method = chosen.split("/")
    try:
        r = quantize_int8(run, fmt=fmt, per_channel=granularity == "per-channel", calibration=method,
                          n_calibration=n_cal)
        out["export"] = {"chosen_on_val": chosen, **r.to_dict()}
    except Exception as exc:  # the parity bar refused it: recorded as measured
        out["export"] = {"chosen_on_val": chosen, "error": f"{type(exc).__name__}: {exc}"}
    c = out["variants"][chosen]
    out["acceptance"] = {"throughput_vs_fp32": c["throughput_vs_fp32"], "target_throughput": 1.5,
                         "accuracy_drop_points": round(100 * (out["fp32"]["test"]["accuracy"] - c["test"]["accuracy"]), 2),
                         "target_drop_points": 0.5, "top1_agreement": c["test"]["top1_agreement"], "target_agreement": 0.99}
    out["load_avg_1m_after"] = load()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run directories")
    p.add_argument("--variants", default=",".join(VARIANTS), help="FORMAT/GRANULARITY/CALIBRATION, comma-separated")
    p.add_argument("--calibration-images", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. the machine's load)")
    a = p.parse_args(argv)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "note": a.note, "runs": {}}
    for run in a.runs:
        results["runs"][str(run)] = bench_run(run, variants=a.variants.split(","), n_cal=a.calibration_images,
                                              repeats=a.repeats)
        write_json(a.json, results)
    for run, r in results["runs"].items():
        acc = r["acceptance"]
        print(f"{run}: chosen {r['export']['chosen_on_val']}: throughput x{acc['throughput_vs_fp32']} (>= 1.5), "
              f"accuracy drop {acc['accuracy_drop_points']} points (<= 0.5), agreement {acc['top1_agreement']} (>= 0.99)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
