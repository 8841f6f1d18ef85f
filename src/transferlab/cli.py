"""The ``transferlab`` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.options import DataOptions, TrainOptions, add_options, options_from_args

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------- models / predict

def cmd_models(args: argparse.Namespace) -> int:
    from transferlab.zoo import get_entry, list_backbones, weights_available

    if args.timm:
        from transferlab.zoo.timm_open import list_timm_models

        found = list_timm_models(args.timm)
        if args.json:
            _print_json(found)
        else:
            print(f"{'name':<48}{'input':>6}  weights here (Hugging Face repo)")
            for r in found:
                print(f"{r['name']:<48}{r['input_size']:>6}  {r['weights_here'] or 'no'} ({r['hf_hub_id'] or '-'})")
            print(f"{len(found)} timm models match {args.timm!r}; use one as --backbone NAME "
                  "(with --weights FILE when its weights are not here)")
        return 0
    rows = []
    for name in list_backbones():
        e = get_entry(name)
        where = weights_available(name)
        rows.append({**e.facts(), "pretrained_available": where is not None, "weights_source": where})
    if args.json:
        _print_json(rows)
        return 0
    header = f"{'name':<20}{'year':>5}{'params':>9}{'top-1':>7}{'top-5':>7}{'input':>6}  pretrained here"
    print(header)
    print("-" * len(header))
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
        top5 = f"{r['top5']:.1f}" if r["top5"] is not None else "-"
        avail = f"yes ({r['weights_source']})" if r["pretrained_available"] else "no"
        print(f"{r['name']:<20}{r['year']:>5}{r['params'] / 1e6:>8.1f}M{top1:>7}{top5:>7}"
              f"{r['input_size']:>6}  {avail}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.model and args.runtime == "onnx":
        from transferlab.export import predict_files

        results = predict_files(args.images, model_dir=args.model, runtime="onnx", top=args.top)
    elif args.model:
        from transferlab.experiments.inference import predict_images

        results = predict_images(args.images, model_dir=args.model, top=args.top)
    else:
        if args.runtime == "onnx":
            raise TransferlabError("--runtime onnx needs --model RUN_DIR (an exported run), not --backbone")
        from transferlab.zoo import create_backbone
        from transferlab.zoo.predict import predict_source

        bb = create_backbone(args.backbone, weights=args.weights)
        results = predict_source(args.images, backbone=bb, top=args.top)
    if args.json:
        _print_json(results)
    else:
        for r in results:
            print(r["image"])
            for t in r["top"]:
                print(f"  {t['probability']:6.1%}  {t['label']}")
    return 0


# ----------------------------------------------------------------------------- train / evaluate

def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from transferlab.experiments.train import resume_training, run_training
    from transferlab.tracking import Tracking

    if not args.resume and (not args.data or not args.out):
        raise TransferlabError("train needs DATA and --out RUN_DIR (or --resume RUN_DIR)")
    d, t = options_from_args(DataOptions, args), options_from_args(TrainOptions, args)
    if not args.resume:
        from transferlab.zoo import check_backbone_name

        check_backbone_name(t.backbone)  # before --out is created by the trackers
    params = {"data": args.data, "data_options": asdict(d), "train_options": asdict(t)}
    with Tracking(args.log or [], run_dir=args.resume or args.out, params=params) as tracking:
        if args.resume:
            run = resume_training(args.resume, quiet=args.quiet, callbacks=tracking.callbacks)
        else:
            run = run_training(args.data, data_options=d, train_options=t, out=args.out,
                               callbacks=tracking.callbacks)
        tracking.finish(run)
    test = run.metrics["test"]
    if args.json:
        _print_json({k: run.metrics[k] for k in ("strategy", "backbone", "test", "timing", "best_epoch")})
    else:
        print(f"{run.metrics['strategy']} / {run.metrics['backbone']}: test accuracy {test['accuracy']:.4f}, "
              f"macro F1 {test['macro_f1']:.4f}, {run.metrics['timing']['total_s']:.0f}s -> {run.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transferlab.experiments.inference import evaluate_run

    m = evaluate_run(args.run_dir, args.data, subset=args.subset, device=args.device, quiet=args.quiet)
    if args.json:
        _print_json(m)
    else:
        top5 = f" top5 {m['top5']:.4f}" if m.get("top5") is not None else ""
        print(f"{m['subset']} of {m['data']}: n={m['n']} accuracy {m['accuracy']:.4f}{top5} "
              f"macro F1 {m['macro_f1']:.4f}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from transferlab.data import augment_preview

    path = augment_preview(args.data, preset=args.preset, out=args.out, n=args.n, seed=args.seed)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from transferlab.experiments.demo import run_demo

    return run_demo(out=args.out, quiet=args.quiet)


# ----------------------------------------------------------------------------- compare / report

def cmd_compare(args: argparse.Namespace) -> int:
    from transferlab.experiments.compare import compare
    from transferlab.report import build_report, report_summary

    compare(args.data, strategies=args.strategies, seeds=args.seeds, out=args.out,
            train_per_class=args.train_per_class_list, data_options=options_from_args(DataOptions, args),
            train_options=options_from_args(TrainOptions, args))
    path = build_report(args.out)
    if args.json:
        _print_json(json.loads((Path(args.out) / "results.json").read_text()))
    else:
        print("\n".join(report_summary(args.out)))
        print(f"report: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from transferlab.report import build_report

    print(build_report(args.run_dir))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from transferlab.experiments.recommend import recommend

    rec = recommend(args.data, backbone=args.backbone, sample=args.sample, split=args.split,
                    train_per_class=args.train_per_class, seed=args.seed, weights=args.weights)
    if args.json:
        _print_json(rec)
        return 0
    cut = f", --cut {rec['cut']}" if rec["cut"] else ""
    print(f"{rec['data']} ({rec['quadrant']}): --strategy {rec['strategy']} --unfreeze {rec['unfreeze']}{cut}")
    for reason in rec["reasons"]:
        print(f"  - {reason}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from transferlab.experiments.lr_find import FIGURE_PNG, RESULT_JSON, lr_find

    res = lr_find(args.data, out=args.out, data_options=options_from_args(DataOptions, args),
                  train_options=options_from_args(TrainOptions, args), start_lr=args.start_lr, end_lr=args.end_lr,
                  steps=args.steps)
    if args.json:
        _print_json({k: v for k, v in res.items() if k != "curve"})
    else:
        print(f"{res['strategy']} / {res['backbone']}, phase {res['phase']} ({', '.join(res['trainable'])}): "
              f"smoothed loss lowest at {res['min_loss_lr']:.2g}; suggested {res['flag']} {res['suggested_lr']:.2g} "
              f"-> {Path(args.out) / FIGURE_PNG}, {Path(args.out) / RESULT_JSON}")
    return 0


def add_evidence_commands(sub: Any) -> None:
    """``compare``, ``report`` and ``recommend`` subcommands."""
    p = sub.add_parser("compare", help="run several strategies x seeds on one split; write results.json + report.html")
    p.add_argument("data", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--strategies", default="scratch,linear-probe,feature-extraction,fine-tune,chain-thaw",
                   help="comma-separated strategies; an entry may set its own train options as "
                        "STRATEGY:OPTION=VALUE[:OPTION=VALUE], e.g. fine-tune:unfreeze=2 (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per strategy (default: 3)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--train-per-class", dest="train_per_class_list", metavar="N[,N...]",
                   help="training images per class; several values add a data-efficiency study")
    p.add_argument("--json", action="store_true", help="print results.json")
    add_options(p, DataOptions, skip=("train_per_class",))
    add_options(p, TrainOptions, skip=("strategy", "plan"))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("lr-find", help="learning-rate range test (Smith 2017) on the first phase's trainable "
                                       "groups: a plot and a suggested rate")
    p.add_argument("data", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--out", default="lr-find", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--start-lr", type=float, default=1e-6, help="first rate (default: %(default)s)")
    p.add_argument("--end-lr", type=float, default=1.0, help="last rate (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="mini-batches (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result (without the curve) as JSON")
    add_options(p, DataOptions, skip=("augment", "batch_augment"))
    add_options(p, TrainOptions)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("report", help="(re)build the HTML report of a compare or run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("recommend", help="measure a dataset (size, balance, similarity to the source) and "
                                         "recommend a strategy")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--backbone", default="efficientnet_lite0", help="zoo backbone (default: %(default)s)")
    p.add_argument("--weights", help="explicit weights file for the backbone")
    p.add_argument("--train-per-class", type=int, help="training images per class you will use")
    p.add_argument("--split", default="0.5,0.25,0.25", help="train,val,test fractions (default: %(default)s)")
    p.add_argument("--sample", type=int, default=64, help="images measured for similarity (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_recommend)


# ----------------------------------------------------------------------------- which layers transfer

def cmd_probe_layers(args: argparse.Namespace) -> int:
    from transferlab.experiments.probe import PROBE_JSON, PROBE_PNG, ProbeOptions, format_probe_table, probe_layers

    res = probe_layers(args.data, out=args.out, options=options_from_args(ProbeOptions, args),
                       data_options=options_from_args(DataOptions, args))
    if args.json:
        _print_json(res)
    else:
        print(format_probe_table(res))
        print(f"advice: {res['advice']['reason']}")
        print(f"{Path(args.out) / PROBE_JSON}, {Path(args.out) / PROBE_PNG} ({res['timing']['total_s']:.0f}s)")
    return 0


def cmd_transferability(args: argparse.Namespace) -> int:
    from transferlab.experiments.transferability import (
        FIGURE_PNG,
        RESULTS_JSON,
        TransferabilityOptions,
        format_transferability_table,
        run_transferability,
    )

    res = run_transferability(args.data, out=args.out, options=options_from_args(TransferabilityOptions, args),
                              data_options=options_from_args(DataOptions, args))
    if args.json:
        _print_json(res)
    else:
        print(f"A = {', '.join(res['classes']['A'])}; B = {', '.join(res['classes']['B'])}")
        print(format_transferability_table(res))
        print(f"{Path(args.out) / RESULTS_JSON}, {Path(args.out) / FIGURE_PNG} ({res['wall_s']:.0f}s)")
    return 0


def add_layer_commands(sub: Any) -> None:
    """``probe-layers`` and ``transferability`` subcommands (which layers transfer)."""
    from transferlab.experiments.probe import ProbeOptions
    from transferlab.experiments.transferability import TransferabilityOptions

    p = sub.add_parser("probe-layers", help="linear-probe accuracy of every featurizer stage (which layers transfer)")
    p.add_argument("data", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (probe.json, probe.png)")
    p.add_argument("--json", action="store_true", help="print probe.json")
    add_options(p, ProbeOptions)
    add_options(p, DataOptions, skip=("augment", "batch_augment"))
    p.set_defaults(func=cmd_probe_layers)

    p = sub.add_parser("transferability", help="Yosinski et al. (2014) BnB/AnB experiment: which layers are general")
    p.add_argument("data", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (transferability.json, .png)")
    p.add_argument("--json", action="store_true", help="print transferability.json")
    add_options(p, TransferabilityOptions)
    add_options(p, DataOptions, skip=("augment", "batch_augment", "train_per_class", "seed"))
    p.set_defaults(func=cmd_transferability)


# ----------------------------------------------------------------------------- export / serve

def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "torchscript":
        from transferlab.export.torchscript import export_torchscript

        ts = export_torchscript(args.run_dir, check_images=args.check_images, n_check=args.n_check)
        if args.json:
            _print_json(ts.to_dict())
        else:
            print(f"{ts.path}: TorchScript (traced), loaded back vs PyTorch on {ts.n_images} images (batch "
                  f"{' and '.join(map(str, ts.batch_sizes))}): max |logit diff| {ts.max_abs_diff:.2e} < "
                  f"{ts.tolerance:g} ({ts.seconds:.1f}s)")
        return 0
    from transferlab.export import export_onnx

    r = export_onnx(args.run_dir, check_images=args.check_images, n_check=args.n_check)
    if args.json:
        _print_json(r.to_dict())
    else:
        print(f"{r.path}: ONNX opset {r.opset}, dynamic batch; ONNX Runtime vs PyTorch on {r.n_images} images "
              f"(batch {' and '.join(map(str, r.batch_sizes))}): max |logit diff| {r.max_abs_diff:.2e} "
              f"< {r.tolerance:g} ({r.seconds:.1f}s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from transferlab.serve import ServeLimits, serve

    limits = ServeLimits(max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels,
                         max_files=args.max_files, timeout_s=args.timeout, max_concurrency=args.max_concurrency)
    serve(args.run_dir, host=args.host, port=args.port, runtime=args.runtime, threads=args.threads, limits=limits)
    return 0


def add_deploy_commands(sub: Any) -> None:
    """``export`` and ``serve`` subcommands (put a trained run to work)."""
    p = sub.add_parser("export", help="write RUN_DIR/model.onnx (or model.torchscript.pt) and check it against "
                                      "PyTorch on real images")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (checked with ONNX Runtime) or torchscript (traced, checked after loading it back) "
                        "(default: onnx)")
    p.add_argument("--check-images", nargs="+", metavar="IMG",
                   help="real images for the parity check (default: images of the run's test split)")
    p.add_argument("--n-check", type=int, default=4, help="test-split images to check when none are given (default: 4)")
    p.add_argument("--json", action="store_true", help="print the export result as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP prediction server + web page for a trained run (FastAPI + uvicorn)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="PyTorch, or ONNX Runtime on the exported model.onnx (default: torch)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the library's default)")
    p.add_argument("--max-upload-mb", type=int, default=10, help="largest request body in MiB (default: 10)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default: 40M)")
    p.add_argument("--max-files", type=int, default=16, help="most images in one request (default: 16)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to receive and answer a request (default: 30)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="open connections before the server answers 503 (default: 64)")
    p.set_defaults(func=cmd_serve)


# ----------------------------------------------------------------------------- localize

def cmd_localize_train(args: argparse.Namespace) -> int:
    from transferlab.localization.train import LocalizeOptions, run_localization

    run = run_localization(args.data, data_options=options_from_args(DataOptions, args),
                           train_options=options_from_args(TrainOptions, args),
                           loc_options=options_from_args(LocalizeOptions, args), out=args.out)
    m = run.metrics
    if args.json:
        _print_json({k: m[k] for k in ("strategy", "backbone", "head", "test", "timing", "best_epoch", "boxes")})
    else:
        t = m["test"]
        print(f"{m['strategy']} / {m['backbone']} ({m['head']}): test mean IoU {t['mean_iou']:.4f}, "
              f"acc@0.5 {t['acc_at_0.5']:.4f}, acc@0.75 {t['acc_at_0.75']:.4f}"
              + (f", accuracy {t['accuracy']:.4f}" if "accuracy" in t else "")
              + f", {m['timing']['total_s']:.0f}s -> {run.run_dir}")
    return 0


def cmd_localize_predict(args: argparse.Namespace) -> int:
    from transferlab.localization.inference import predict_boxes

    results = predict_boxes(args.images, model_dir=args.model, draw=args.draw)
    if args.json:
        _print_json(results)
    else:
        for r in results:
            extra = (f"  {r['class']} {r['probability']:.1%}" if "class" in r else "") + (
                f"  IoU {r['iou']:.3f} with {r['true_box']}" if "iou" in r else "")
            print(f"{r['image']}: box {r['box']}{extra}")
        if args.draw:
            print(f"drawn: {args.draw}")
    return 0


def cmd_localize_evaluate(args: argparse.Namespace) -> int:
    from transferlab.localization.inference import evaluate_localizer

    m = evaluate_localizer(args.run_dir, args.data, subset=args.subset, device=args.device, quiet=args.quiet)
    if args.json:
        _print_json(m)
    else:
        print(f"{m['subset']} of {m['data']}: n={m['n']} mean IoU {m['mean_iou']:.4f} acc@0.5 {m['acc_at_0.5']:.4f} "
              f"acc@0.75 {m['acc_at_0.75']:.4f}" + (f" accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""))
    return 0


def add_localize_commands(sub: Any) -> None:
    """``localize train|predict|evaluate``: a box regressor (or class+box) head on the same backbones."""
    from transferlab.localization.train import DATA_SKIP, LOC_SPLIT, TRAIN_SKIP, LocalizeOptions, LocTrainOptions

    loc = sub.add_parser("localize", help="object localization: swap the head for a box regressor (VOC boxes)")
    lsub = loc.add_subparsers(dest="localize_command", required=True, metavar="ACTION")
    p = lsub.add_parser("train", help="train a box head with a strategy on the boxed images of a pets layout")
    p.add_argument("data", metavar="DATA", help="Oxford-IIIT Pet layout with annotations/xmls/NAME.xml")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--split", default=LOC_SPLIT, help=f"train,val,test fractions of the boxed images, stratified "
                   f"(default: {LOC_SPLIT})")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_options(p, LocalizeOptions)
    add_options(p, DataOptions, skip=DATA_SKIP)
    add_options(p, LocTrainOptions, skip=TRAIN_SKIP)
    p.set_defaults(func=cmd_localize_train)

    p = lsub.add_parser("predict", help="print (and draw) the predicted box of each image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a trained localize run directory")
    p.add_argument("--draw", metavar="OUT.png", help="draw predicted (red) and, where a VOC file is found, true "
                   "(green) boxes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_localize_predict)

    p = lsub.add_parser("evaluate", help="mean IoU and accuracy at IoU 0.5 / 0.75 of a run on DATA")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--subset", default="all", choices=("all", "train", "val", "test"),
                   help="every boxed image of DATA, or one of the run's own split lists (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_localize_evaluate)


# ----------------------------------------------------------------------------- cache

def cmd_cache(args: argparse.Namespace) -> int:
    """``transferlab cache info|clear``: the on-disk feature cache (location, entries, size).

    Example:
        $ transferlab cache info --json
        $ transferlab cache clear --dir /tmp/fc
    """
    from transferlab.engine.feature_cache import FeatureCache

    cache = FeatureCache(Path(args.dir) if args.dir else None)
    if args.action == "clear":
        entries = len(cache.entries())
        freed = cache.clear()
        info: dict[str, Any] = {"location": str(cache.root), "entries_removed": entries, "freed_bytes": freed}
        text = f"{cache.root}: removed {entries} entries, freed {freed / 2**20:.1f} MiB"
    else:
        entries = len(cache.entries())
        size = cache.size_bytes()
        info = {"location": str(cache.root), "exists": cache.root.is_dir(), "entries": entries, "size_bytes": size}
        text = f"{cache.root}: {entries} entries, {size / 2**20:.1f} MiB"
    if args.json:
        _print_json(info)
    else:
        print(text)
    return 0


def add_cache_commands(sub: Any) -> None:
    """``cache info|clear``: inspect or empty the on-disk feature cache."""
    p = sub.add_parser("cache", help="the on-disk feature cache: info (location, entries, size) or clear")
    p.add_argument("action", choices=("info", "clear"))
    p.add_argument("--dir", default=None,
                   help="cache folder (default: $TRANSFERLAB_CACHE/features or ~/.cache/transferlab/features)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_cache)


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="Transfer learning on small image datasets: pretrained backbones, every classic "
                    "strategy, measured evidence.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the backbone zoo and which pretrained weights are available here")
    p.add_argument("--timm", metavar="PATTERN", help="list timm models matching PATTERN (e.g. 'vit_*', 'resnet'): "
                                                     "any of them works as --backbone timm:NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="classify images with a backbone's ImageNet head or a trained run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--backbone", help="a zoo backbone: predict ImageNet classes")
    g.add_argument("--model", metavar="RUN_DIR", help="a trained run directory: predict its classes")
    p.add_argument("--weights", help="explicit weights file for --backbone")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="run --model with PyTorch or with ONNX Runtime on its exported model.onnx (default: torch)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="train a strategy on a dataset into a run directory")
    p.add_argument("data", nargs="?", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--log", action="append", choices=("tensorboard", "mlflow", "csv"),
                   help="experiment tracking, repeatable: TensorBoard events in RUN_DIR/tensorboard, an MLflow run "
                        "($MLFLOW_TRACKING_URI, default sqlite:///RUN_DIR/mlflow.db), or RUN_DIR/epochs.csv")
    add_options(p, DataOptions)
    add_options(p, TrainOptions)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on a dataset with the same classes")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--subset", default="all", choices=("all", "train", "val", "test"),
                   help="all images of DATA, or one of the run's own split lists (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("augment-preview", help="draw a grid of augmented training samples")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--preset", default="basic", help="augmentation preset (default: basic)")
    p.add_argument("--out", default="augment-preview.png", help="PNG to write")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_augment_preview)

    p = sub.add_parser("demo", help="the README's main job on Fashion-MNIST (what `make demo` runs)")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    add_evidence_commands(sub)
    add_deploy_commands(sub)
    add_localize_commands(sub)
    add_layer_commands(sub)
    add_cache_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    try:
        return int(args.func(args) or 0)
    except TransferlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from transferlab.engine.distributed import shutdown_distributed

        shutdown_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
