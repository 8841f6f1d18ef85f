"""``transferlab transferability``: the AnB/BnB experiment of Yosinski et al. (NeurIPS 2014).

The classes are split into two disjoint halves A and B. ``baseA`` and ``baseB`` are trained from
scratch (same architecture, random init) on A and on B. For every n = 1..L (L = number of stages):

- ``BnB``: stages 1..n copied from baseB and frozen, stages n+1..L and the head re-initialised
  (fresh random init) and trained on B;
- ``BnB+``: the same network, but every stage trains (fine-tuned);
- ``AnB`` / ``AnB+``: the same with stages 1..n copied from baseA.

Every network is tested on B's test images; all runs use the same plan settings (one phase,
one-cycle AdamW, BatchNorm trained where the weights train) and the one training engine.
A drop of BnB below baseB at middle n is the paper's "fragile co-adaptation"; a larger drop of AnB
is the cost of features being specific to A; AnB+ at or above baseB is the fine-tuning recovery.

Sizing for 2 CPU cores: ``small_cnn`` at 28 px, 300 training and 100 validation images per class,
8 epochs, 2 seeds (5 vs 5 Fashion-MNIST classes, all 1000 test images per B class). Larger
settings (``--arch resnet18 --input-size 64``, more images, more seeds) are for a GPU.

Example:
    >>> from transferlab.experiments.transferability import TransferabilityOptions, run_transferability
    >>> res = run_transferability("fashion-mnist", out="tr", options=TransferabilityOptions(seeds=1))
    ... # doctest: +SKIP
    >>> sorted(res["summary"]["AnB"])  # doctest: +SKIP
    ['1', '2', '3', '4', '5']
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from transferlab.data import (
    ImageSource,
    atomic_write_bytes,
    atomic_write_text,
    build_transform,
    compute_norm_stats,
    make_split,
    open_dataset,
    parse_fractions,
)
from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed
from transferlab.errors import ConfigError, DataError, TrainingError
from transferlab.options import DataOptions, opt
from transferlab.progress import Counter
from transferlab.strategies import HeadConfig, Phase, Plan, TransferModel
from transferlab.zoo import create_backbone, get_entry

log = logging.getLogger("transferlab")
RESULTS_JSON = "transferability.json"
FIGURE_PNG = "transferability.png"
#: The four transfer networks of the paper, in its order.
VARIANTS: tuple[str, ...] = ("BnB", "BnB+", "AnB", "AnB+")
_CODES = {"baseA": 1, "baseB": 2, "BnB": 3, "BnB+": 4, "AnB": 5, "AnB+": 6}


@dataclass(frozen=True)
class TransferabilityOptions:
    """The experiment's settings (data flags such as ``--split``/``--split-seed`` are :class:`DataOptions`)."""

    arch: str = opt("small_cnn", "architecture from the zoo, trained from scratch (random init)")
    split_classes: str = opt("random", "class halves 'A/B' as comma-separated names or indices "
                                       "(e.g. 0,2,4,6,8/1,3,5,7,9), or 'random' (seeded by --split-seed)")
    seeds: int = opt(2, "training seeds (each trains its own baseA and baseB)")
    train_per_class: int = opt(300, "training images per class (a seeded, stratified subset)")
    val_per_class: int = opt(100, "validation images per class (best-epoch selection)")
    test_per_class: int | None = opt(None, "test images per class (default: every test image of B)")
    input_size: int | None = opt(None, "input resolution in px (default: the architecture's, 28 for small_cnn)")
    epochs: int = opt(8, "epochs of every network (bases and transfer networks alike)")
    lr: float = opt(3e-3, "peak learning rate (one-cycle AdamW) of every network")
    weight_decay: float = opt(1e-2, "AdamW weight decay")
    batch_size: int = opt(64, "batch size")

    def __post_init__(self) -> None:
        for name in ("seeds", "train_per_class", "val_per_class", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.test_per_class is not None and self.test_per_class < 1:
            raise ConfigError(f"--test-per-class must be >= 1, got {self.test_per_class}")
        if self.input_size is not None and self.input_size < 8:
            raise ConfigError(f"--input-size must be >= 8 px, got {self.input_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")


# ----------------------------------------------------------------------------- class halves

def parse_class_split(text: str, classes: Sequence[str], *, seed: int = 0) -> tuple[list[int], list[int]]:
    """Class indices of halves A and B.

    ``"random"``: a seeded permutation, A = its first ``len(classes) // 2`` classes, B = the rest
    (Yosinski et al.'s random halves). Otherwise ``"A/B"`` with comma-separated class names or
    indices on each side; a ``/`` inside a class name is allowed when only one reading is valid.

    Example:
        >>> parse_class_split("0,2/1,3", ["a", "b", "c", "d"])
        ([0, 2], [1, 3])
        >>> parse_class_split("T-shirt/top,b/c,d", ["T-shirt/top", "b", "c", "d"])
        ([0, 1], [2, 3])
    """
    n = len(classes)
    if n < 4:
        raise DataError(f"--split-classes: the transferability experiment needs >= 4 classes (2 per half), got {n}")
    if text == "random":
        perm = np.random.default_rng(np.random.SeedSequence([int(seed), 6])).permutation(n)
        return sorted(int(c) for c in perm[: n // 2]), sorted(int(c) for c in perm[n // 2:])
    readings = []
    for pos in [i for i, ch in enumerate(text) if ch == "/"]:
        a, b = _class_list(text[:pos], classes), _class_list(text[pos + 1:], classes)
        if a is not None and b is not None:
            readings.append((a, b))
    if len(readings) != 1:
        why = "it is ambiguous" if readings else "a side names an unknown class or is empty"
        raise ConfigError(f"--split-classes: expected 'random' or 'A/B' with comma-separated class names or "
                          f"indices (0..{n - 1}), got {text!r} ({why})")
    a, b = readings[0]
    if set(a) & set(b):
        raise ConfigError(f"--split-classes: halves must be disjoint, got {text!r} (shared: "
                          f"{', '.join(classes[c] for c in sorted(set(a) & set(b)))})")
    if len(a) < 2 or len(b) < 2 or len(set(a)) != len(a) or len(set(b)) != len(b):
        raise ConfigError(f"--split-classes: expected >= 2 distinct classes per half, got {text!r}")
    return sorted(a), sorted(b)


def _class_list(text: str, classes: Sequence[str]) -> list[int] | None:
    out = []
    for token in (t.strip() for t in text.split(",")):
        if token in classes:
            out.append(list(classes).index(token))
        elif token.isdigit() and int(token) < len(classes):
            out.append(int(token))
        else:
            return None
    return out


# ----------------------------------------------------------------------------- construction

def transplant(base: TransferModel, *, n: int, arch: str, num_classes: int, head: HeadConfig,
               input_size: int | None = None) -> TransferModel:
    """A fresh random-init ``arch`` network whose stages 1..n are copies of ``base``'s (weights and
    BatchNorm statistics); the stages above and the head keep their new random init. Seed the torch
    RNG before calling to make the re-initialisation reproducible.

    Example:
        >>> m = transplant(base_b, n=2, arch="small_cnn", num_classes=5, head=HeadConfig(dropout=0.0))
        ... # doctest: +SKIP
    """
    model = new_network(arch, num_classes=num_classes, head=head, input_size=input_size)
    L = len(model.stage_names)
    if not 1 <= n <= L:
        raise ConfigError(f"n must be between 1 and {L} (stages of {arch}), got {n}")
    if base.stage_names != model.stage_names:
        raise ConfigError(f"transplant: base stages {base.stage_names} differ from {arch}'s {model.stage_names}")
    with torch.no_grad():
        for name in model.stage_names[:n]:
            model.modules_of(name).load_state_dict(base.modules_of(name).state_dict())
    return model


def new_network(arch: str, *, num_classes: int, head: HeadConfig, input_size: int | None = None) -> TransferModel:
    """``arch`` with random weights and a new head (the from-scratch network of every run)."""
    bb = create_backbone(arch, pretrained=False)
    if input_size is not None:
        bb.preprocessing = bb.preprocessing.with_input_size(input_size)
    return TransferModel(backbone=bb, num_classes=num_classes, head=head)


def variant_plan(variant: str, *, n: int, stage_names: Sequence[str], options: TransferabilityOptions) -> Plan:
    """The one-phase plan of a network: ``base*`` and ``*+`` train everything; ``BnB``/``AnB`` train
    stages n+1..L and the head (stages 1..n frozen: no gradient, eval mode).

    Example:
        >>> [p.trainable for p in variant_plan("AnB", n=2, stage_names=["c1", "c2", "c3"],
        ...                                    options=TransferabilityOptions()).phases]
        [('c3', 'head')]
    """
    if variant not in _CODES:
        raise ConfigError(f"variant must be one of {', '.join(_CODES)}, got {variant!r}")
    frozen = variant in ("BnB", "AnB")
    trainable = tuple(stage_names[n:] if frozen else stage_names) + ("head",)
    phase = Phase(name=variant, trainable=trainable, epochs=options.epochs, lr=options.lr, schedule="onecycle",
                  optimizer="adamw", weight_decay=options.weight_decay, bn="train")
    return Plan(strategy=f"transferability-{variant}", phases=(phase,), pretrained=False)


def run_seed(seed: int, variant: str, n: int) -> int:
    """The torch seed of one network (init, shuffling): distinct per (seed, variant, n), order-independent."""
    return 100_000 * seed + 1_000 * _CODES[variant] + n


# ----------------------------------------------------------------------------- data

@dataclass
class Half:
    """One class half: its classes and preprocessed train/val/test tensors (labels 0..k-1)."""

    name: str
    classes: list[int]
    inputs: dict[str, SplitInputs]


def _subset(source: ImageSource, idx: np.ndarray, classes: list[int], per_class: int | None, *, seed: int,
            option: str, part: str) -> np.ndarray:
    labels = source.labels[idx]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, ("train", "val", "test").index(part)]))
    picks = []
    for c in classes:
        pool = idx[labels == c]
        if per_class is not None and pool.size < per_class:
            raise DataError(f"{option} {per_class} exceeds the {pool.size} {part} images of class "
                            f"{source.classes[c]!r}")
        picks.append(pool if per_class is None else rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def _tensors(source: ImageSource, idx: np.ndarray, transform: Any, remap: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([transform(source.load(int(i))) for i in idx]) if idx.size else torch.empty(0)
    y = torch.tensor([remap[int(source.labels[i])] for i in idx], dtype=torch.long)
    return x, y


def prepare_halves(source: ImageSource, a: list[int], b: list[int], *, options: TransferabilityOptions,
                   data_options: DataOptions) -> tuple[Half, Half, dict[str, Any]]:
    """Split, subsample and preprocess both halves once (every network reuses the tensors)."""
    o, d = options, data_options
    split = make_split(source, fractions=parse_fractions(d.split, option="--split"), seed=d.split_seed)
    entry = get_entry(o.arch)
    pre = entry.preprocessing if o.input_size is None else entry.preprocessing.with_input_size(o.input_size)
    chosen: dict[str, dict[str, np.ndarray]] = {}
    for name, classes in (("A", a), ("B", b)):
        chosen[name] = {
            "train": _subset(source, split.train, classes, o.train_per_class, seed=d.split_seed,
                             option="--train-per-class", part="train"),
            "val": _subset(source, split.val, classes, o.val_per_class, seed=d.split_seed,
                           option="--val-per-class", part="val"),
            "test": _subset(source, split.test, classes, o.test_per_class, seed=d.split_seed,
                            option="--test-per-class", part="test"),
        }
    train_all = np.concatenate([chosen["A"]["train"], chosen["B"]["train"]])
    norm = compute_norm_stats(d.normalize, source=source, indices=train_all, preprocessing=pre)
    transform = build_transform(pre, norm=norm)
    halves = []
    for name, classes in (("A", a), ("B", b)):
        remap = {c: k for k, c in enumerate(classes)}
        inputs = {}
        for part, idx in chosen[name].items():
            x, y = _tensors(source, idx, transform, remap)
            ds = TensorDataset(x, y)
            inputs[part] = SplitInputs(name=f"{name}-{part}", labels=y, eval_dataset=ds,
                                       train_dataset=ds if part == "train" else None)
        halves.append(Half(name=name, classes=classes, inputs=inputs))
    info = {"input_size": pre.input_size, "normalize": norm.to_dict(),
            "sizes": {h: {p: int(v.size) for p, v in parts.items()} for h, parts in chosen.items()}}
    return halves[0], halves[1], info


# ----------------------------------------------------------------------------- runs

def train_network(model: TransferModel, plan: Plan, *, half: Half, seed: int, options: TransferabilityOptions,
                  device: str = "auto") -> dict[str, Any]:
    """Fit ``model`` with ``plan`` on ``half`` (the engine) and test it on the half's test images."""
    t0 = time.perf_counter()
    engine = Engine(model, ctx=init_distributed(device),
                    options=EngineOptions(batch_size=options.batch_size, seed=seed, patience=options.epochs,
                                          quiet=True))
    fit = engine.fit(plan, train=half.inputs["train"], val=half.inputs["val"], run_dir=None)
    test = half.inputs["test"]
    logits = engine.predict(test, use_cache=False)
    val = fit.history[fit.best_epoch - 1] if fit.best_epoch else {}
    return {"test_accuracy": round(float((logits.argmax(1) == test.labels).float().mean()), 6),
            "val_accuracy": round(float(val.get("val_accuracy", float("nan"))), 6),
            "best_epoch": fit.best_epoch, "train_s": round(fit.train_s, 3),
            "seconds": round(time.perf_counter() - t0, 3)}


def check_construction(model: TransferModel, base: TransferModel, *, n: int, frozen: bool) -> dict[str, Any]:
    """After training: are stages 1..n still equal to the base's (they must be iff ``frozen``), and
    which parameters had gradients enabled."""
    names = model.stage_names
    copied = [all(torch.equal(p, q) for p, q in zip(model.modules_of(s).state_dict().values(),
                                                     base.modules_of(s).state_dict().values()))
              for s in names[:n]]
    trainable = [s for s in names if any(p.requires_grad for p in model.modules_of(s).parameters())]
    ok = (all(copied) and trainable == names[n:]) if frozen else trainable == names
    return {"copied_stages_unchanged": all(copied), "trainable_stages": trainable, "ok": bool(ok)}


def run_transferability(data: str, *, out: str | os.PathLike[str],
                        options: TransferabilityOptions | None = None, data_options: DataOptions | None = None,
                        source: ImageSource | None = None) -> dict[str, Any]:
    """Run the experiment; ``out/transferability.json`` is rewritten after every network, the figure
    ``out/transferability.png`` at the end.

    Example:
        >>> run_transferability("fashion-mnist", out="tr")  # doctest: +SKIP
    """
    o = options or TransferabilityOptions()
    d = data_options or DataOptions()
    from transferlab.experiments.compare import machine_info
    from transferlab.experiments.train import setup_logging

    setup_logging(quiet=d.quiet)
    t_all = time.perf_counter()
    src = source if source is not None else open_dataset(data, quiet=d.quiet)
    a, b = parse_class_split(o.split_classes, src.classes, seed=d.split_seed)
    stage_names = create_backbone(o.arch, pretrained=False).stage_names
    L = len(stage_names)
    half_a, half_b, info = prepare_halves(src, a, b, options=o, data_options=d)
    head = HeadConfig(kind="linear", dropout=0.0)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "status": "running", "arch": o.arch, "stages": stage_names,
        "classes": {"A": [src.classes[c] for c in a], "B": [src.classes[c] for c in b]},
        "data": {"source": str(data), **info, "split": d.split, "split_seed": d.split_seed},
        "options": asdict(o), "runs": [], "machine": machine_info(),
        "protocol": "baseA/baseB from scratch; for n=1..L: stages 1..n copied from baseB (BnB) or baseA (AnB), "
                    "frozen (BnB, AnB) or fine-tuned (BnB+, AnB+); stages n+1..L and the head re-initialised; "
                    "every network tested on B's test images",
    }
    total = o.seeds * (2 + 4 * L)
    bar = Counter(total=total, desc="transferability", unit="net", enabled=not d.quiet)

    def record(entry: dict[str, Any]) -> None:
        results["runs"].append(entry)
        results["summary"] = summarize(results["runs"], L=L)
        results["wall_s"] = round(time.perf_counter() - t_all, 3)
        atomic_write_text(out_dir / RESULTS_JSON, json.dumps(results, indent=2))
        bar.update(f"{entry['variant']} n={entry['n']} seed {entry['seed']}")

    for seed in range(o.seeds):
        bases: dict[str, TransferModel] = {}
        for name, half in (("baseA", half_a), ("baseB", half_b)):
            torch.manual_seed(run_seed(seed, name, 0))
            model = new_network(o.arch, num_classes=len(half.classes), head=head, input_size=o.input_size)
            plan = variant_plan(name, n=0, stage_names=stage_names, options=o)
            res = train_network(model, plan, half=half, seed=run_seed(seed, name, 0), options=o, device=d.device)
            bases[name] = model
            record({"variant": name, "n": 0, "seed": seed, "tested_on": half.name, **res})
        for n in range(1, L + 1):
            for variant in VARIANTS:
                base = bases["baseB" if variant.startswith("B") else "baseA"]
                s = run_seed(seed, variant, n)
                torch.manual_seed(s)
                model = transplant(base, n=n, arch=o.arch, num_classes=len(half_b.classes), head=head,
                                   input_size=o.input_size)
                plan = variant_plan(variant, n=n, stage_names=stage_names, options=o)
                res = train_network(model, plan, half=half_b, seed=s, options=o, device=d.device)
                check = check_construction(model, base, n=n, frozen=not variant.endswith("+"))
                if not check["ok"]:
                    raise TrainingError(f"{variant} n={n}: construction check failed: {check}")
                record({"variant": variant, "n": n, "seed": seed, "tested_on": "B", **res, "check": check})
    bar.close()
    results["status"] = "done"
    results["wall_s"] = round(time.perf_counter() - t_all, 3)
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(results, indent=2))
    atomic_write_bytes(out_dir / FIGURE_PNG, transferability_figure_png(results))
    return results


# ----------------------------------------------------------------------------- summary, table, figure

def summarize(runs: Sequence[Mapping[str, Any]], *, L: int) -> dict[str, Any]:
    """Mean/std/n of test accuracy per variant and n (``"baseB"``/``"baseA"`` under n ``"0"``).

    Example:
        >>> s = summarize([{"variant": "AnB", "n": 1, "test_accuracy": 0.8},
        ...                {"variant": "AnB", "n": 1, "test_accuracy": 0.9}], L=1)
        >>> s["AnB"]["1"]["mean"], s["AnB"]["1"]["count"]
        (0.85, 2)
    """
    out: dict[str, Any] = {}
    for variant in ("baseA", "baseB", *VARIANTS):
        per_n: dict[str, Any] = {}
        for n in range(0, L + 1):
            accs = np.array([r["test_accuracy"] for r in runs if r["variant"] == variant and r["n"] == n])
            if accs.size:
                per_n[str(n)] = {"mean": round(float(accs.mean()), 6), "std": round(float(accs.std()), 6),
                                 "count": int(accs.size)}
        if per_n:
            out[variant] = per_n
    return out


def format_transferability_table(results: Mapping[str, Any]) -> str:
    """Markdown table: test accuracy on B (mean ± std over seeds) per n and network.

    Example:
        >>> print(format_transferability_table({"stages": ["c1"], "summary": {
        ...     "baseB": {"0": {"mean": 0.9, "std": 0.01, "count": 2}},
        ...     "AnB": {"1": {"mean": 0.88, "std": 0.0, "count": 2}}}}))
        | n | copied stages | BnB | BnB+ | AnB | AnB+ |
        |---:|---|---:|---:|---:|---:|
        | 0 (baseB) | - | 0.900 ± 0.010 | | | |
        | 1 | c1 | - | - | 0.880 ± 0.000 | - |
    """
    s = results["summary"]
    stages = list(results["stages"])

    def cell(variant: str, n: int) -> str:
        v = s.get(variant, {}).get(str(n))
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "-"

    lines = ["| n | copied stages | BnB | BnB+ | AnB | AnB+ |", "|---:|---|---:|---:|---:|---:|",
             f"| 0 (baseB) | - | {cell('baseB', 0)} | | | |"]
    for n in range(1, len(stages) + 1):
        lines.append(f"| {n} | {','.join(stages[:n])} | " + " | ".join(cell(v, n) for v in VARIANTS) + " |")
    return "\n".join(lines)


def transferability_figure_png(results: Mapping[str, Any]) -> bytes:
    """The paper's Figure 2 style: every network as a point (test accuracy on B vs n), lines through
    the means; baseB at n = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    L = len(results["stages"])
    style = {"baseB": ("o", "white", "black"), "BnB": ("o", "#1f3d99", "#1f3d99"),
             "BnB+": ("P", "#7fa6ff", "#7fa6ff"), "AnB": ("D", "#a11d1d", "#a11d1d"),
             "AnB+": ("P", "#ff8c8c", "#ff8c8c")}
    offsets = {"baseB": 0.0, "BnB": -0.15, "BnB+": -0.05, "AnB": 0.05, "AnB+": 0.15}
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    summary = results.get("summary", {})
    for variant in ("baseB", *VARIANTS):
        marker, face, edge = style[variant]
        pts = [(r["n"], r["test_accuracy"]) for r in runs if r["variant"] == variant]
        if not pts:
            continue
        xs = np.array([p[0] for p in pts], dtype=float) + offsets[variant]
        ax.scatter(xs, [p[1] for p in pts], marker=marker, facecolors=face, edgecolors=edge, s=28, zorder=3,
                   label=variant)
        if variant != "baseB":
            ns = sorted(int(k) for k in summary.get(variant, {}))
            ax.plot(ns, [summary[variant][str(k)]["mean"] for k in ns], "-", color=edge, lw=1.2, alpha=0.8)
    if "baseB" in summary:
        ax.axhline(summary["baseB"]["0"]["mean"], color="#555", ls="--", lw=0.8)
    ax.set_xticks(range(0, L + 1))
    ax.set_xticklabels(["0\nbaseB"] + [f"{k}\n{name}" for k, name in enumerate(results["stages"], 1)], fontsize=7)
    ax.set_xlabel("n: stages copied from the base network")
    ax.set_ylabel("test accuracy on B")
    ax.set_title(f"{results['arch']} on {Path(str(results['data']['source'])).name}: "
                 f"A={len(results['classes']['A'])} vs B={len(results['classes']['B'])} classes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

