"""Temperature scaling measured on a run's own split: val-fitted T, test ECE and accuracy before/after.

For a run trained with ``--calibrate temperature`` this reads ``metrics.json``; for any other run
it recomputes the val and test logits and does what ``--calibrate temperature`` does (fit T on val
by minimum cross-entropy; report test ECE before and after).

    PYTHONPATH=src nice -n 10 python benchmarks/calibration.py --run runs/flowers-cal \
        --out benchmarks/results/calibration_flowers17.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_json  # noqa: E402

from transferlab.calibration import calibrate_splits  # noqa: E402
from transferlab.data import load_split, open_dataset  # noqa: E402
from transferlab.experiments.artifacts import load_model  # noqa: E402
from transferlab.experiments.inference import split_logits  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained run directory")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--figure", type=Path, default=None, help="reliability diagram PNG (test, before and after)")
    args = ap.parse_args()
    run = Path(args.run)
    m = json.loads((run / "metrics.json").read_text())
    if "ece_uncalibrated" in m["test"]:
        how = "from metrics.json of a --calibrate temperature run"
        summary = {s: {k: m[s][k] for k in ("accuracy", "ece", "ece_uncalibrated", "temperature")}
                   for s in ("val", "test")}
    else:
        how = "recomputed: val/test logits of the run, temperature fitted on val as --calibrate temperature does"
        data = json.loads((run / "config.json").read_text())["data"]
        source = open_dataset(data, quiet=True)
        split = load_split(run, source)
        lm = load_model(run)
        pairs = {}
        for name in ("val", "test"):
            idx = getattr(split, name)
            logits, _ = split_logits(lm, source, idx, device="cpu")
            pairs[name] = (logits, torch.as_tensor(source.labels[idx]))
        _, cal = calibrate_splits("temperature", val=pairs["val"], test=pairs["test"])
        m = {"test": cal["test"]}
        summary = {s: {"accuracy": float((pairs[s][0].argmax(1) == pairs[s][1]).float().mean()),
                       **{k: cal[s][k] for k in ("ece", "ece_uncalibrated", "temperature")}} for s in ("val", "test")}
    t = summary["test"]
    t["ece_reduction"] = round(1 - t["ece"] / t["ece_uncalibrated"], 4) if t["ece_uncalibrated"] else None
    meta = json.loads((run / "metrics.json").read_text())
    results = {"benchmark": "temperature scaling", "run": str(run), "how": how, "strategy": meta["strategy"],
               "backbone": meta["backbone"], **summary, "machine": machine()}
    print(table(["split", "accuracy", "ECE before", "ECE after", "T"],
                [[s, summary[s]["accuracy"], summary[s]["ece_uncalibrated"], summary[s]["ece"],
                  summary[s]["temperature"]] for s in ("val", "test")]))
    print(f"test ECE reduction: {t['ece_reduction']:.1%}")
    if args.figure is not None:
        from transferlab.calibration.figures import reliability_diagram, run_reliability

        fig = reliability_diagram(run_reliability(m), title=f"{meta['strategy']} / {meta['backbone']}: test")
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=80)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
