"""Test-time augmentation on a trained run's test split: accuracy, ECE and inference cost per mode.

    PYTHONPATH=src nice -n 10 python benchmarks/tta.py --run runs/flowers-cal \
        --out benchmarks/results/tta_flowers17.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_json  # noqa: E402

from transferlab.calibration import expected_calibration_error  # noqa: E402
from transferlab.data import load_split, open_dataset  # noqa: E402
from transferlab.experiments.artifacts import load_model  # noqa: E402
from transferlab.experiments.inference import split_logits  # noqa: E402
from transferlab.tta import TTA_MODES, TTA_VIEWS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained run directory")
    ap.add_argument("--modes", default=",".join(TTA_MODES), help="comma-separated TTA modes (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    args = ap.parse_args()
    run = Path(args.run)
    data = json.loads((run / "config.json").read_text())["data"]
    source = open_dataset(data, quiet=True)
    test = load_split(run, source).test
    y = torch.as_tensor(source.labels[test])
    lm = load_model(run)
    results = {"benchmark": "test-time augmentation", "run": str(run), "data": data, "n_test": len(test),
               "temperature": lm.temperature, "machine_start": machine(), "modes": {}}
    rows = []
    for mode in args.modes.split(","):
        logits, secs = split_logits(lm, source, test, tta=mode, device="cpu")
        acc = float((logits.argmax(1) == y).float().mean())
        ece = expected_calibration_error(logits.softmax(1), y)
        results["modes"][mode] = {"views": TTA_VIEWS[mode], "accuracy": acc, "ece": ece, "seconds": round(secs, 2),
                                  "ms_per_image": round(1000 * secs / len(test), 1), "load_avg_1m": machine()["load_avg_1m"]}
        rows.append([mode, TTA_VIEWS[mode], acc, ece, round(secs, 1), results["modes"][mode]["load_avg_1m"]])
        print(table(["TTA", "views", "test accuracy", "ECE", "s", "load"], rows[-1:]), flush=True)
        write_json(args.out, results)  # after each mode: a slow flip+crops leaves the others on disk
    base = results["modes"].get("none")
    if base:
        for mode, r in results["modes"].items():
            r["accuracy_change"] = round(r["accuracy"] - base["accuracy"], 6)
            r["cost_ratio"] = round(r["seconds"] / base["seconds"], 2)
    results["machine_end"] = machine()
    print(table(["TTA", "views", "test accuracy", "ECE", "s", "load"], rows))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
