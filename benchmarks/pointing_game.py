"""Pointing game on Oxford-IIIT Pet (Zhang et al., ECCV 2016): does the heatmap's maximum lie on the pet?

For every official test image of a trained breed classifier, the Grad-CAM map of the true class is
computed on the model's input crop; a hit is a maximum on the trimap's foreground or border
(trimap values 1 and 3), mapped through the same resize + centre crop (nearest neighbour). The
baseline always points at the crop's centre.

    PYTHONPATH=src nice -n 10 python benchmarks/pointing_game.py --run runs/pets-ft \
        --data ../shared/datasets/oxford-pets-3 --out benchmarks/results/pointing_game.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_json  # noqa: E402

from transferlab.data import load_split, open_dataset  # noqa: E402
from transferlab.experiments.artifacts import load_model  # noqa: E402
from transferlab.explain import METHODS, Explainer  # noqa: E402

PET = (1, 3)  # trimap: 1 foreground, 2 background, 3 border


def trimap_crop(path: Path, *, resize: int, crop: int) -> np.ndarray:
    """The trimap through the eval geometry (resize shorter side, centre crop), nearest neighbour."""
    tf = v2.Compose([v2.Resize(resize, interpolation=v2.InterpolationMode.NEAREST), v2.CenterCrop(crop)])
    return np.asarray(tf(Image.open(path)))


def draw_grid(ex: Explainer, images: list, labels: list[int], masks: list[np.ndarray], hits: list[bool], *,
              n: int, path: Path, classes: list[str]) -> None:
    """Overlays of ``n`` test images (classes interleaved), the maximum marked, hit or miss in the title."""
    from matplotlib import pyplot as plt

    by_class: dict[int, list[int]] = {}
    for k, y in enumerate(labels):
        by_class.setdefault(y, []).append(k)
    order = [k for group in zip(*by_class.values()) for k in group][:n]
    exps = ex.explain([images[k] for k in order], target=[labels[k] for k in order])
    cols = 6
    fig, axes = plt.subplots(-(-len(order) // cols), cols, figsize=(2.0 * cols, 2.2 * -(-len(order) // cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k, e in zip(axes.flat, order, exps):
        r, c = np.unravel_index(int(np.argmax(e.cam)), e.cam.shape)
        ax.imshow(e.overlay())
        ax.contour(np.isin(masks[k], PET), levels=[0.5], colors="white", linewidths=0.6)
        ax.plot([c], [r], marker="+", color="white", markersize=12, mew=2)
        ax.set_title(f"{classes[labels[k]]}: {'hit' if hits[k] else 'miss'}", fontsize=8)
    fig.suptitle("Grad-CAM of the true class; + = the map's maximum, white line = the trimap's pet outline",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a breed classifier's run directory (trained on DATA)")
    ap.add_argument("--data", required=True, help="the Oxford-IIIT Pet folder (images/, annotations/trimaps/)")
    ap.add_argument("--methods", default="gradcam", help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--limit", type=int, default=None, help="first N test images of each class only (smoke runs, figures)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--figure", type=Path, default=None,
                    help="PNG grid of the first method's overlays (first --figure-n test images, classes interleaved)")
    ap.add_argument("--figure-n", type=int, default=12)
    args = ap.parse_args()

    t0 = time.perf_counter()
    lm = load_model(args.run)
    source = open_dataset(args.data, quiet=True)
    test = load_split(Path(args.run), source).test
    if args.limit is not None:
        test = np.concatenate([test[source.labels[test] == c][: args.limit] for c in range(len(source.classes))])
    pre = lm.preprocessing
    trimaps = Path(args.data) / "annotations" / "trimaps"
    images = [source.load(int(i), draft_size=pre.resize_size) for i in test]
    labels = [int(source.labels[int(i)]) for i in test]
    masks = [trimap_crop(trimaps / f"{Path(source.identity(int(i))).stem}.png", resize=pre.resize_size,
                         crop=pre.input_size) for i in test]
    centre = pre.input_size // 2
    baseline = float(np.mean([m[centre, centre] in PET for m in masks]))
    pet_area = float(np.mean([np.isin(m, PET).mean() for m in masks]))
    results = {"benchmark": "pointing game", "data": args.data, "run": args.run, "backbone": lm.meta["backbone"],
               "n_test": len(test), "target": "true class", "hit": "map maximum on trimap foreground or border",
               "centre_baseline": baseline, "mean_pet_area_fraction": pet_area, "methods": {},
               "machine_start": machine()}
    rows = [["centre point (baseline)", baseline, "", ""]]
    for method in args.methods.split(","):
        ex = Explainer.from_run(lm, method=method)
        t1 = time.perf_counter()
        hits, correct = [], []
        for k in range(0, len(images), 8):
            for j, e in enumerate(ex.explain(images[k : k + 8], target=labels[k : k + 8])):
                r, c = np.unravel_index(int(np.argmax(e.cam)), e.cam.shape)
                hits.append(bool(masks[k + j][r, c] in PET))
                correct.append(e.predicted == labels[k + j])
        secs = time.perf_counter() - t1
        if args.figure is not None and method == args.methods.split(",")[0]:
            draw_grid(ex, images, labels, masks, hits, n=args.figure_n, path=args.figure, classes=lm.classes)
        acc = float(np.mean(hits))
        on_correct = float(np.mean([h for h, c in zip(hits, correct) if c])) if any(correct) else None
        results["methods"][method] = {"pointing_accuracy": acc, "pointing_accuracy_on_correct": on_correct,
                                      "classifier_accuracy": float(np.mean(correct)), "seconds": round(secs, 2)}
        rows.append([method, acc, on_correct, round(secs, 1)])
    results["wall_s"] = round(time.perf_counter() - t0, 2)
    results["machine_end"] = machine()
    print(table(["pointer", "hits on pet", "hits (correctly classified)", "s"], rows))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
