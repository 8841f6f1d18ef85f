"""Does ``transferlab audit`` find planted label errors and near-duplicates? And what does it flag as is?

1. A seeded copy of flowers17 in a temporary folder: 5 % of the labels flipped (68 of 1360 images
   moved to another class folder, the class drawn at random) and 20 planted near-duplicates of
   other images (downscaled, re-encoded as JPEG, slightly cropped, or all three), 5 of them put in
   another class's folder. The audit runs on it with an empty feature cache (timed: the cold
   number), then again (the warm number). Reported: precision / recall of the label findings
   against the 68 flips, precision at 68 (the 68 most severe findings), and how many of the 20
   planted copies a duplicate / near-duplicate finding pairs with their original.
2. The untouched flowers17 and oxford-pets-3 are audited as they are; the findings go to
   ``--figure`` (a contact sheet of the worst ones per kind) to be judged by eye.

Example:
    PYTHONPATH=src nice -n 10 python benchmarks/audit.py --shared ../shared/datasets \\
        --json benchmarks/results/audit.json --figure docs/audit_findings.png
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, table, write_json
from PIL import Image

from transferlab.audit import AuditOptions, run_audit
from transferlab.audit.duplicates import near_copy
from transferlab.data import open_dataset
from transferlab.experiments.train import setup_logging

N_FLIPS, N_COPIES, N_CROSS_CLASS = 68, 20, 5


def plant(src_root: Path, dst: Path, *, seed: int) -> dict[str, Any]:
    """Copy flowers17 to ``dst`` with flipped labels and planted near-copies; returns the truth."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in src_root.iterdir() if p.is_dir())
    files = sorted((c, f.name) for c in classes for f in (src_root / c).iterdir() if f.is_file())
    flip = set(rng.choice(len(files), size=N_FLIPS, replace=False).tolist())
    rest = [i for i in range(len(files)) if i not in flip]
    copied = rng.choice(rest, size=N_COPIES, replace=False).tolist()
    truth: dict[str, Any] = {"flipped": [], "copies": []}
    for c in classes:
        (dst / c).mkdir(parents=True)
    for i, (c, name) in enumerate(files):
        target = c
        if i in flip:
            target = str(rng.choice([k for k in classes if k != c]))
            truth["flipped"].append(str(dst / target / name))
        shutil.copy2(src_root / c / name, dst / target / name)
    kinds = ["resize", "jpeg", "crop", "all"]
    for k, i in enumerate(copied):
        c, name = files[i]
        im = Image.open(src_root / c / name).convert("RGB")
        how = kinds[k % len(kinds)]
        for step in (["resize", "jpeg", "crop"] if how == "all" else [how]):
            im = near_copy(im, step)
        target = str(rng.choice([x for x in classes if x != c])) if k < N_CROSS_CLASS else c
        out = dst / target / f"zz_copy{k:02d}_{Path(name).stem}.jpg"
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        out.write_bytes(buf.getvalue())
        truth["copies"].append({"copy": str(out), "original": str(dst / c / name), "how": how,
                                "cross_class": target != c})
    return truth


def score_labels(res: dict[str, Any], flipped: list[str]) -> dict[str, Any]:
    found = [f["path"] for f in res["findings"] if f["kind"] == "label"]
    truth = set(flipped)
    tp = sum(1 for p in found if p in truth)
    top = found[:N_FLIPS]
    return {"flagged": len(found), "true_positives": tp, "precision": round(tp / max(len(found), 1), 4),
            "recall": round(tp / len(truth), 4),
            "precision_at_68": round(sum(1 for p in top if p in truth) / N_FLIPS, 4)}


def _groups(edges: set[tuple[str, str]]) -> dict[str, str]:
    """Union-find over finding pairs: each path's group representative."""
    parent: dict[str, str] = {}

    def root(p: str) -> str:
        parent.setdefault(p, p)
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for a, b in edges:
        parent[root(a)] = root(b)
    return {p: root(p) for p in parent}


def score_copies(res: dict[str, Any], copies: list[dict[str, Any]], split_of: dict[str, str]) -> dict[str, Any]:
    """A planted copy is found when the duplicate / near-duplicate findings put it in one group with its
    original (each finding pairs an image with its most similar earlier one, so a copy of an image that
    flowers17 already holds twice may pair with the twin); a cross-split copy's leakage is found when
    the later-split image of the pair has a leakage finding."""
    pairs = {(f["path"], f["other"]) for f in res["findings"] if f["kind"] in ("duplicate", "near_duplicate")}
    group = _groups(pairs)
    leaked = {f["path"] for f in res["findings"] if f["kind"] == "leakage"}
    order = {"train": 0, "val": 1, "test": 2}
    rows = []
    for c in copies:
        a, b = c["copy"], c["original"]
        found = a in group and b in group and group[a] == group[b]
        cross = split_of[a] != split_of[b]
        later = a if order[split_of[a]] > order[split_of[b]] else b
        how = [f for f in res["findings"] if f["kind"] == "near_duplicate" and {f["path"], f["other"]} == {a, b}]
        rows.append({**c, "found": found, "splits": [split_of[a], split_of[b]],
                     "direct_pair": how[0] if how else None,
                     "leakage_found": (later in leaked) if cross else None})
    crossing = [r for r in rows if r["leakage_found"] is not None]
    return {"found": sum(r["found"] for r in rows), "of": len(rows),
            "cross_split": len(crossing), "cross_split_found": sum(bool(r["leakage_found"]) for r in crossing),
            "cross_class": sum(r["cross_class"] for r in rows), "rows": rows}


def split_map(res: dict[str, Any], data: str, o: AuditOptions) -> dict[str, str]:
    from transferlab.data import make_split, parse_fractions

    src = open_dataset(data, quiet=True)
    split = make_split(src, fractions=parse_fractions(o.split), seed=o.split_seed)
    return {src.identity(int(i)): name for name in ("train", "val", "test") for i in getattr(split, name)}


def contact_sheet(results: dict[str, dict[str, Any]], path: Path, *, per_kind: int = 6) -> None:
    """One row per (data set, kind) with findings: the worst ``per_kind`` thumbnails (pairs side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for name, res in results.items():
        for kind in ("label", "duplicate", "near_duplicate", "leakage", "outlier", "quality"):
            fs = [f for f in res["findings"] if f["kind"] == kind][:per_kind]
            if fs:
                rows.append((name, kind, fs))
    fig, axes = plt.subplots(len(rows), per_kind, figsize=(per_kind * 1.9, len(rows) * 1.75), squeeze=False)
    for r, (name, kind, fs) in enumerate(rows):
        for c in range(per_kind):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(fs):
                continue
            f = fs[c]
            ims = [Image.open(f["path"]).convert("RGB")] + ([Image.open(f["other"]).convert("RGB")] if "other" in f else [])
            tiles = [im.resize((96, 96)) for im in ims]
            canvas = Image.new("RGB", (96 * len(tiles) + 4 * (len(tiles) - 1), 96), "white")
            for k, t in enumerate(tiles):
                canvas.paste(t, (k * 100, 0))
            ax.imshow(canvas)
            if kind == "label":
                cap = f"{f['given'][3:]}→{f['suggested'][3:]}" if f["given"][:2].isdigit() else f"{f['given']}→{f['suggested']}"
            elif kind == "quality":
                cap = f["issue"]
            else:
                cap = f"{f['score']:.3f}"
            ax.set_title(cap, fontsize=7)
        axes[r][0].text(-0.08, 0.5, f"{name}\n{kind}", transform=axes[r][0].transAxes, fontsize=8,
                        ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--skip-untouched", action="store_true", help="only the planted benchmark")
    args = ap.parse_args(argv)
    setup_logging(quiet=False)
    out: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="tl-audit-") as tmp:
        data, cache = Path(tmp) / "flowers17-noisy", Path(tmp) / "cache"
        truth = plant(args.shared / "flowers17", data, seed=args.seed)
        o = AuditOptions(feature_cache=str(cache), quiet=True)
        timings = {}
        for run in ("cold", "warm"):
            load = os.getloadavg()[0]
            t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            res = run_audit(str(data), out=Path(tmp) / f"audit-{run}", options=o)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            timings[run] = {"wall_s": round(time.perf_counter() - t0, 1),
                            "cpu_user_sys_s": round(cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime, 1),
                            "load_avg_1m_before": round(load, 2),
                            "load_avg_1m_after": round(os.getloadavg()[0], 2), "forward_images": res["forward_images"],
                            "timing": res["timing"]}
        labels = score_labels(res, truth["flipped"])
        copies = score_copies(res, truth["copies"], split_map(res, str(data), o))
        out["planted"] = {"images": res["n_images"], "flips": N_FLIPS, "copies": N_COPIES, "labels": labels,
                          "near_duplicates": copies, "threshold": res["near_duplicate_threshold"],
                          "counts": res["counts"], "timings": timings, "out_of_fold": res["labels"]}
    print(table(["planted", "value"], [["label precision", labels["precision"]], ["label recall", labels["recall"]],
                                       ["precision at 68", labels["precision_at_68"]],
                                       ["copies found", f"{copies['found']}/{copies['of']}"],
                                       ["cross-split copies as leakage", f"{copies['cross_split_found']}/{copies['cross_split']}"],
                                       ["cold s", timings["cold"]["wall_s"]], ["warm s", timings["warm"]["wall_s"]],
                                       ["cold cpu s", timings["cold"]["cpu_user_sys_s"]],
                                       ["warm cpu s", timings["warm"]["cpu_user_sys_s"]]]))
    if not args.skip_untouched:
        untouched = {}
        for name in ("flowers17", "oxford-pets-3"):
            with tempfile.TemporaryDirectory(prefix="tl-audit-") as tmp:
                res = run_audit(str(args.shared / name), out=tmp, options=AuditOptions(quiet=True))
            untouched[name] = res
            print(name, res["counts"], f"{res['timing']['total_s']:.0f}s", file=sys.stderr)
        out["untouched"] = {n: {"counts": r["counts"], "threshold": r["near_duplicate_threshold"],
                                "labels": r["labels"], "timing": r["timing"], "balance": r["balance"],
                                "findings": [f for f in r["findings"] if f["kind"] != "label"] +
                                            [f for f in r["findings"] if f["kind"] == "label"][:40]}
                            for n, r in untouched.items()}
        if args.figure:
            contact_sheet(untouched, args.figure)
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
