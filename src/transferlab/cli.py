"""The ``transferlab`` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError, first_line
from transferlab.options import DataOptions, TrainOptions, add_options, options_from_args

Handler = Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--top 0`` or ``-1`` is a usage error, not silently accepted).

    Example:
        >>> positive_int("3")
        3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------- models / predict

def add_tta_option(p: argparse.ArgumentParser) -> None:
    """``--tta``: test-time augmentation (see transferlab.tta)."""
    p.add_argument("--tta", choices=("none", "flip", "flip+crops"), default="none",
                   help="test-time augmentation: average the softmax over the image and its mirror (flip, 2x "
                        "the cost) or over 5 crops and their mirrors (flip+crops, 10x) (default: none)")


def cmd_models(args: argparse.Namespace) -> int:
    from transferlab.zoo import get_entry, list_backbones, weights_available

    if args.describe:
        return _describe_model(args.describe, as_json=args.json)
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

        results = predict_files(args.images, model_dir=args.model, runtime="onnx", top=args.top, tta=args.tta)
    elif args.model:
        from transferlab.experiments.inference import predict_images

        results = predict_images(args.images, model_dir=args.model, top=args.top, draw=args.draw, tta=args.tta)
    else:
        if args.tta != "none":
            raise TransferlabError("--tta needs --model RUN_DIR (a trained run), not --backbone")
        if args.runtime == "onnx":
            raise TransferlabError("--runtime onnx needs --model RUN_DIR (an exported run), not --backbone")
        from transferlab.zoo import create_backbone
        from transferlab.zoo.predict import predict_source

        bb = create_backbone(args.backbone, weights=args.weights)
        results = predict_source(args.images, backbone=bb, top=args.top)
    if args.json:
        _print_json(results)
    else:
        _print_predictions(results)
        if getattr(args, "draw", None):
            print(f"drawn: {args.draw}")
    return 0


def _print_predictions(results: list[dict[str, Any]]) -> None:
    for r in results:
        if "top" in r:
            print(r["image"])
            for t in r["top"]:
                print(f"  {t['probability']:6.1%}  {t['label']}")
        elif "labels" in r:  # multi-label
            print(f"{r['image']}: {', '.join(r['labels']) or '(no label above its threshold)'}")
            for label, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]):
                print(f"  {p:6.1%}  {label}")
        elif "fractions" in r:  # a mask
            shares = ", ".join(f"{c} {v:.1%}" for c, v in r["fractions"].items())
            where = r.get("mask_file", "mask inline as base64 PNG (--json; --draw writes files)")
            print(f"{r['image']}: {shares}; {where}")
        elif "keypoints" in r:
            print(f"{r['image']}: " + ", ".join(f"{n} ({p['x']:.1f}, {p['y']:.1f})" for n, p in r["keypoints"].items()))
        else:  # a box
            extra = (f"  {r['class']} {r['probability']:.1%}" if "class" in r else "") + (
                f"  IoU {r['iou']:.3f} with {r['true_box']}" if "iou" in r else "")
            print(f"{r['image']}: box {r['box']}{extra}")


def _describe_model(name: str, *, as_json: bool) -> int:
    from transferlab.explain.inspect import format_layer_table, layer_table
    from transferlab.zoo import create_backbone, get_entry

    entry = get_entry(name)
    rows = layer_table(create_backbone(name, pretrained=False).featurizer, input_size=entry.input_size)
    if as_json:
        _print_json({**entry.facts(), "layers": rows})
    else:
        print(f"{name} ({entry.paper}), input {entry.input_size} x {entry.input_size}; featurizer stages "
              f"(the classifier head is not counted):")
        print(format_layer_table(rows))
    return 0


# ----------------------------------------------------------------------------- explain / inspect

def cmd_explain(args: argparse.Namespace) -> int:
    from transferlab.explain import explain_files

    results = explain_files(args.images, model_dir=args.model, method=args.method, target=args.target, out=args.out)
    if args.json:
        _print_json(results)
    else:
        for r in results:
            print(f"{r['overlay']}: {r['method']} for {r['target']} ({r['target_probability']:.1%}); "
                  f"predicted {r['predicted']} ({r['probability']:.1%})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from transferlab.explain.inspect import format_layer_table, inspect

    res = inspect(out=args.out, backbone=args.backbone, model=args.model, image=args.image, random=args.random,
                  top=args.top)
    if args.json:
        _print_json(res)
    else:
        print(f"{res['name']} ({res['weights']}), input {res['input_size']} x {res['input_size']}")
        print(format_layer_table(res["layers"]))
        print(", ".join(res["files"]))
    return 0


def add_explain_commands(sub: Any) -> None:
    """``explain`` and ``inspect`` subcommands (look inside a model)."""
    from transferlab.explain import METHODS

    p = sub.add_parser("explain", help="class-activation heatmaps (Grad-CAM family) of a trained run on images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a trained run directory")
    p.add_argument("--method", choices=METHODS, default="gradcam",
                   help="pytorch-grad-cam method (scorecam: one forward per channel, slow on a CPU) (default: gradcam)")
    p.add_argument("--target", help="class name or index to explain (default: each image's predicted class)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for IMAGE_STEM.METHOD.png overlays")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("inspect", help="first-layer filters, most active channels per stage, layer table")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--backbone", help="a zoo backbone (its pretrained weights here)")
    g.add_argument("--model", metavar="RUN_DIR", help="a trained run (its featurizer after training)")
    p.add_argument("image", nargs="?", metavar="IMAGE", help="an image: draw each stage's most active channels")
    p.add_argument("--random", action="store_true", help="--backbone with random weights (no pretrained ones here)")
    p.add_argument("--top", type=int, default=6, help="channels per stage for IMAGE (default: 6)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for filters.png, activations.png, layers.json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)


# ----------------------------------------------------------------------------- train / evaluate

def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from transferlab.experiments.train import resume_training, run_training
    from transferlab.tasks import get_task
    from transferlab.tracking import Tracking

    if not args.resume and (not args.data or not args.out):
        raise TransferlabError("train needs DATA and --out RUN_DIR (or --resume RUN_DIR)")
    spec = get_task(args.task)
    d = options_from_args(DataOptions, args)
    t = options_from_args(getattr(spec, "train_options_class", TrainOptions), args,
                          skip=tuple(getattr(spec, "train_skip", ())))
    to = options_from_args(spec.options_class, args) if spec.options_class else None
    if not args.resume:
        from transferlab.zoo import check_backbone_name

        check_backbone_name(t.backbone)  # before any work, and before --out exists
    params = {"data": args.data, "task": spec.name, "data_options": asdict(d), "train_options": asdict(t)}
    with Tracking(args.log or [], run_dir=args.resume or args.out, params=params) as tracking:
        if args.resume:
            run = resume_training(args.resume, quiet=args.quiet, callbacks=tracking.callbacks)
            spec = get_task(run.task)
        else:
            run = run_training(args.data, data_options=d, train_options=t, out=args.out, overwrite=args.overwrite,
                               callbacks=tracking.callbacks, task=spec.name, task_options=to)
        tracking.finish(run)
    m = run.metrics
    if args.json:
        _print_json({k: m[k] for k in ("task", "strategy", "backbone", "test", "timing", "best_epoch", "boxes")
                     if k in m})
    else:
        print(f"{m['strategy']} / {m['backbone']}: {spec.summary_line(m)}, {m['timing']['total_s']:.0f}s "
              f"-> {run.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transferlab.experiments.inference import evaluate_run

    m = evaluate_run(args.run_dir, args.data, subset=args.subset, device=args.device, quiet=args.quiet,
                     task=getattr(args, "expect_task", None), tta=getattr(args, "tta", "none"))
    if args.json:
        _print_json(m)
    elif "accuracy" in m and "mean_iou" not in m:
        tta = f", TTA {m['tta']}" if m.get("tta", "none") != "none" else ""
        top5 = f" top5 {m['top5']:.4f}" if m.get("top5") is not None else ""
        print(f"{m['subset']} of {m['data']}: n={m['n']} accuracy {m['accuracy']:.4f}{top5} "
              f"macro F1 {m['macro_f1']:.4f} ECE {m['ece']:.4f} ({m['ms_per_image']:.1f} ms/image{tta})")
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        print(f"{m['subset']} of {m['data']}: n={m['n']} {shown}")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--subset", default="all", choices=("all", "train", "val", "test"),
                   help="all items of DATA (for boxes: every boxed image), or one of the run's own split lists "
                        "(default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON")


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

    run = compare
    if args.backbones:
        from functools import partial

        from transferlab.experiments.backbones import compare_backbones

        run = partial(compare_backbones, backbones=args.backbones)
    run(args.data, strategies=args.strategies, seeds=args.seeds, out=args.out,
        train_per_class=args.train_per_class_list, data_options=options_from_args(DataOptions, args),
        train_options=options_from_args(TrainOptions, args), resume=args.resume, overwrite=args.overwrite,
        tta=args.tta)
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
                    train_per_class=args.train_per_class, seed=args.seed, weights=args.weights,
                    max_latency_ms=args.max_latency_ms, max_params=args.max_params, cv=args.cv)
    if args.json:
        _print_json(rec)
        return 0
    cut = f", --cut {rec['cut']}" if rec["cut"] else ""
    print(f"{rec['data']} ({rec['quadrant']}): --backbone {rec['backbone']} --strategy {rec['strategy']} "
          f"--unfreeze {rec['unfreeze']}{cut}")
    for reason in rec["reasons"]:
        print(f"  - {reason}")
    if rec.get("backbone_cv"):
        c = rec["backbone_cv"]
        print(f"  {'backbone':<22}{'LogME':>8}  {c['k']}-fold CV accuracy  CV rank")
        for r in rec["backbone_ranking"]:
            print(f"  {r['backbone']:<22}{r['logme']:>8.3f}  {r['cv_mean']:.4f} ± {r['cv_std']:.4f}   {r['cv_rank']:>7}")
        tau = "-" if c["kendall_tau"] is None else f"{c['kendall_tau']:+.2f}"
        print(f"  Kendall tau (LogME vs CV ranking): {tau}; LogME's pick {c['logme_pick']}, CV's pick {c['cv_pick']}")
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
              f"loss falls fastest at {res['steepest_lr']:.2g}, lowest at {res['min_loss_lr']:.2g}; "
              f"suggested {res['flag']} {res['suggested_lr']:.2g} "
              f"-> {Path(args.out) / FIGURE_PNG}, {Path(args.out) / RESULT_JSON}")
    return 0


def add_evidence_commands(sub: Any) -> None:
    """``compare``, ``report`` and ``recommend`` subcommands."""
    p = sub.add_parser("compare", help="run several strategies x seeds on one split; write results.json + report.html")
    p.add_argument("data", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--strategies", default="scratch,linear-probe,feature-extraction,fine-tune,chain-thaw",
                   help="comma-separated strategies; an entry may set its own train options as "
                        "STRATEGY:OPTION=VALUE[:OPTION=VALUE], e.g. fine-tune:unfreeze=2 (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per strategy (default: 3; 1 with --cv)")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="K >= 2: score every entry (x every --backbones) by stratified K-fold cross-validation over "
                        "the non-test pool (train+val; test is in no fold and scored once by each run's final "
                        "model, refit on the pool); the summary and the backbone figures use the CV mean ± fold "
                        "std. Any strategy (a backprop one trains K fold runs and a refit); not an entry with --unlabeled")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--train-per-class", dest="train_per_class_list", metavar="N[,N...]",
                   help="training images per class; several values add a data-efficiency study")
    p.add_argument("--backbones", metavar="A,B,...",
                   help="cross these backbones (with weights here) x --strategies on the same split; the report "
                        "adds accuracy vs ImageNet top-1, latency and parameters (default: --backbone only)")
    p.add_argument("--json", action="store_true", help="print results.json")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue a killed compare in --out with the same options: "
                   "finished runs are kept, an interrupted one resumes from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="empty an --out that holds an earlier compare")
    add_tta_option(p)
    add_options(p, DataOptions, skip=("train_per_class",))
    add_options(p, TrainOptions, skip=("strategy", "plan", "cv", "ensemble", "time_budget"))
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
    p.add_argument("--backbone", default=None,
                   help="measure with this zoo backbone (default: rank the backbones with weights here by LogME "
                        "on the training images and take the best within the budgets)")
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="budget: ms of one batch-1 forward pass, CPU time on one thread of this machine "
                        "(measured once per backbone, cached)")
    p.add_argument("--max-params", type=float, default=None, help="budget: parameters, e.g. 5e6")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="K >= 2: also score each backbone's linear probe by stratified K-fold CV over the non-test "
                        "pool (train+val) on the same cached pooled features, name the backbone by CV and report "
                        "LogME's pick and the Kendall tau between the two rankings (no --backbone)")
    p.add_argument("--weights", help="explicit weights file for the backbone")
    p.add_argument("--train-per-class", type=positive_int, help="training images per class you will use")
    p.add_argument("--split", default="0.5,0.25,0.25", help="train,val,test fractions (default: %(default)s)")
    p.add_argument("--sample", type=positive_int, default=64, help="images measured for similarity (default: 64)")
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
    from transferlab.export import export_onnx, quantize_int8

    r = export_onnx(args.run_dir, check_images=args.check_images, n_check=args.n_check)
    q = None
    if args.quantize == "int8":
        q = quantize_int8(args.run_dir, fmt=args.quant_format, per_channel=args.per_channel,
                          calibration=args.calibration, n_calibration=args.calibration_images)
    if args.json:
        _print_json({**r.to_dict(), "int8": q.to_dict() if q is not None else None})
        return 0
    print(f"{r.path}: ONNX opset {r.opset}, dynamic batch; ONNX Runtime vs PyTorch on {r.n_images} images "
          f"(batch {' and '.join(map(str, r.batch_sizes))}): max |logit diff| {r.max_abs_diff:.2e} "
          f"< {r.tolerance:g} ({r.seconds:.1f}s)")
    if q is not None:
        print(f"{q.path}: int8 ({q.format}, per-channel {q.per_channel}, {q.calibration} calibration on "
              f"{q.n_calibration} training images); on {q.n_test} test images top-1 agreement with fp32 "
              f"{q.top1_agreement:.4f}, accuracy {q.test_accuracy:.4f} vs fp32 {q.test_accuracy_fp32:.4f} "
              f"({q.seconds:.1f}s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from transferlab.serve import ServeLimits, serve

    limits = ServeLimits(max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels,
                         max_files=args.max_files, timeout_s=args.timeout, max_concurrency=args.max_concurrency,
                         max_request_pixels=args.max_request_pixels)
    serve(args.run_dir, host=args.host, port=args.port, runtime=args.runtime, threads=args.threads, limits=limits,
          onnx_model=args.onnx_model, tta=args.tta)
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
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: also write model.int8.onnx (ONNX Runtime static quantization calibrated on training "
                        "images; kept only if it agrees with fp32 on >= 99%% of the test images and loses <= 0.5 "
                        "points of test accuracy; the report goes into model.json) (default: none)")
    p.add_argument("--quant-format", choices=("qdq", "qoperator"), default="qdq",
                   help="int8 graph format: QDQ (Quantize/DequantizeLinear pairs) or QOperator (default: qdq)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="int8 weights quantized per output channel (default: on)")
    p.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how activation ranges are set from the calibration images (default: minmax)")
    p.add_argument("--calibration-images", type=positive_int, default=128,
                   help="training images (stratified) to calibrate int8 on (default: 128)")
    p.add_argument("--json", action="store_true", help="print the export result as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP prediction server + web page for a trained run (FastAPI + uvicorn)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="PyTorch, or ONNX Runtime on the exported model.onnx (default: torch)")
    p.add_argument("--onnx-model", choices=("auto", "fp32", "int8"), default="auto",
                   help="with --runtime onnx: auto serves model.int8.onnx when `export --quantize int8` wrote it, "
                        "else model.onnx (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the library's default)")
    p.add_argument("--max-upload-mb", type=int, default=10, help="largest request body in MiB (default: 10)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default: 40M)")
    p.add_argument("--max-files", type=int, default=16, help="most images in one request (default: 16)")
    p.add_argument("--max-request-pixels", type=int, default=64_000_000,
                   help="decoded pixels of all images of one request together, checked before decoding "
                        "(default: 64M)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to receive and answer a request (default: 30)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="open connections before the server answers 503 (default: 64)")
    add_tta_option(p)
    p.set_defaults(func=cmd_serve)


# ----------------------------------------------------------------------------- localize

def add_log_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", action="append", choices=("tensorboard", "mlflow", "csv"),
                   help="experiment tracking, repeatable: TensorBoard events in RUN_DIR/tensorboard, an MLflow run "
                        "($MLFLOW_TRACKING_URI, default sqlite:///RUN_DIR/mlflow.db), or RUN_DIR/epochs.csv")


def cmd_localize_train(args: argparse.Namespace) -> int:
    args.task, args.resume = "localize", None
    return cmd_train(args)


def cmd_localize_predict_any(args: argparse.Namespace) -> int:
    from transferlab.experiments.inference import predict_images

    results = predict_images(args.images, model_dir=args.model, draw=args.draw, task="localization")
    if args.json:
        _print_json(results)
    else:
        _print_predictions(results)
        if args.draw:
            print(f"drawn: {args.draw}")
    return 0


def add_task_options(p: argparse.ArgumentParser, task: str) -> None:
    """The data, train and task option flags of ``task`` (with the task's defaults)."""
    from transferlab.tasks import canonical, get_task

    if canonical(task) == "classification":  # no import: `transferlab --help` stays cheap
        add_options(p, DataOptions)
        add_options(p, TrainOptions)
        return
    spec = get_task(task)
    data_skip = tuple(getattr(spec, "data_skip", ()))
    if getattr(spec, "default_split", None):
        p.add_argument("--split", default=spec.default_split, help=f"train,val,test fractions of the annotated "
                       f"images, stratified (default: {spec.default_split})")
        data_skip += ("split",)
    add_options(p, spec.options_class)
    add_options(p, DataOptions, skip=data_skip)
    add_options(p, getattr(spec, "train_options_class", TrainOptions), skip=tuple(getattr(spec, "train_skip", ())))


def add_localize_commands(sub: Any) -> None:
    """``localize train|predict|evaluate``: a box regressor (or class+box) head on the same backbones."""
    loc = sub.add_parser("localize", help="object localization: swap the head for a box regressor (VOC boxes); "
                                          "`localize train` is `train --task localize`")
    lsub = loc.add_subparsers(dest="localize_command", required=True, metavar="ACTION")
    p = lsub.add_parser("train", help="train a box head with a strategy on the boxed images of a pets layout "
                                      "(= train --task localize)")
    p.add_argument("data", metavar="DATA", help="Oxford-IIIT Pet layout with annotations/xmls/NAME.xml")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="empty a run directory that already holds a run (else it is refused)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_log_option(p)
    add_task_options(p, "localize")
    p.set_defaults(func=cmd_localize_train)

    p = lsub.add_parser("predict", help="print (and draw) the predicted box of each image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a trained localize run directory")
    p.add_argument("--draw", metavar="OUT.png", help="draw predicted (red) and, where a VOC file is found, true "
                   "(green) boxes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_localize_predict_any)

    p = lsub.add_parser("evaluate", help="mean IoU and accuracy at IoU 0.5 / 0.75 of a run on DATA (= evaluate)")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate, expect_task="localization")


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
        stale = len(cache.temps()[1])
        freed = cache.clear()
        live = len(cache.temps()[0])
        info: dict[str, Any] = {"location": str(cache.root), "entries_removed": entries,
                                "stale_temp_files_removed": stale, "in_progress_kept": live, "freed_bytes": freed}
        text = (f"{cache.root}: removed {entries} entries and {stale} stale temporary files, freed "
                f"{freed / 2**20:.1f} MiB" + (f"; {live} being written by running processes kept" if live else ""))
    else:
        entries = len(cache.entries())
        size = cache.size_bytes()
        live, stale = cache.temps()
        info = {"location": str(cache.root), "exists": cache.root.is_dir(), "entries": entries, "size_bytes": size,
                "in_progress": len(live), "stale_temp_files": len(stale)}
        text = (f"{cache.root}: {entries} entries, {size / 2**20:.1f} MiB"
                + (f"; {len(live)} being written" if live else "")
                + (f"; {len(stale)} stale temporary files (cache clear removes them)" if stale else ""))
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


# ----------------------------------------------------------------------------- better data, more data

def cmd_audit(args: argparse.Namespace) -> int:
    from transferlab.audit import AUDIT_HTML, AUDIT_JSON, AuditOptions, parse_drop, run_audit, write_clean
    from transferlab.data import open_dataset
    from transferlab.experiments.train import setup_logging

    drop = parse_drop(args.drop) if args.drop else None
    if args.write_clean and drop is None:
        raise TransferlabError("--write-clean CSV needs --drop KINDS (e.g. --drop label,duplicate)")
    options = options_from_args(AuditOptions, args)
    setup_logging(quiet=options.quiet)
    source = open_dataset(args.data, quiet=options.quiet)
    res = run_audit(args.data, out=args.out, options=options, source=source)
    if args.write_clean and drop is not None:
        write_clean(res, source, args.write_clean, drop=drop)
    if args.json:
        _print_json({k: v for k, v in res.items() if k != "findings"})
    else:
        counts = ", ".join(f"{n} {k}" for k, n in res["counts"].items())
        print(f"{res['data']}: {res['n_images']} images; {counts} ({res['timing']['total_s']:.0f}s) -> "
              f"{Path(args.out) / AUDIT_JSON}, {Path(args.out) / AUDIT_HTML}")
    return 0


def cmd_suggest_labels(args: argparse.Namespace) -> int:
    from transferlab.unlabeled.suggest import suggest_labels

    from transferlab.experiments.train import setup_logging

    setup_logging(quiet=args.quiet)
    rows = suggest_labels(args.model, unlabeled=args.unlabeled, n=args.n, strategy=args.strategy,
                          out=args.out, labeled=args.labeled)
    if args.json:
        _print_json(rows)
    else:
        print(f"{len(rows)} images to label next ({args.strategy}) -> {args.out}")
    return 0


def add_data_commands(sub: Any) -> None:
    """``audit`` and ``suggest-labels`` subcommands (better data, more data)."""
    from transferlab.audit import KINDS, AuditOptions
    from transferlab.unlabeled.select import STRATEGIES as SELECT

    p = sub.add_parser("audit", help="find label issues, duplicates, cross-split leakage, outliers and poor images")
    p.add_argument("data", metavar="DATA", help="image folder, dataset layout or CSV")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (audit.json, audit.html)")
    p.add_argument("--write-clean", metavar="CSV", help="write a path,label CSV without the --drop findings "
                                                       "(train reads it; no image file is touched)")
    p.add_argument("--drop", metavar="KINDS", help=f"finding kinds left out of --write-clean: {','.join(KINDS)}")
    p.add_argument("--json", action="store_true", help="print audit.json without the findings list")
    add_options(p, AuditOptions)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("suggest-labels", help="rank unlabelled images by what a trained run would learn most from")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a trained run directory")
    p.add_argument("--unlabeled", required=True, metavar="DIR", help="folder of unlabelled images (searched recursively)")
    p.add_argument("--n", type=int, default=50, help="how many images to suggest (default: 50)")
    p.add_argument("--strategy", default="margin", choices=SELECT,
                   help="margin / entropy: least certain first; kcenter: k-center greedy on the run's "
                        "embeddings, farthest from the labelled set first (default: margin)")
    p.add_argument("--labeled", metavar="DATA", help="kcenter: the labelled data set (same classes as the run) whose "
                                                    "images count as covered (default: the run's split_train.txt)")
    p.add_argument("--out", default="suggested.csv", metavar="CSV", help="CSV to write (default: suggested.csv)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_suggest_labels)


# ----------------------------------------------------------------------------- parser

#: subcommands whose options live in modules that load torch: built only when invoked (cheap --help)
HEAVY_COMMANDS = {"localize": "object localization: swap the head for a box regressor (VOC boxes)",
                  "probe-layers": "linear-probe accuracy of every featurizer stage (which layers transfer)",
                  "transferability": "Yosinski et al. (2014) BnB/AnB experiment: which layers are general",
                  "audit": "find label issues, duplicates, cross-split leakage, outliers and poor images",
                  "suggest-labels": "rank unlabelled images by what a trained run would learn most from",
                  "explain": "class-activation heatmaps (Grad-CAM family) of a trained run on images",
                  "inspect": "first-layer filters, most active channels per stage, layer table"}


def _command_and_task(argv: Sequence[str] | None) -> tuple[str | None, str]:
    """The subcommand named in ``argv`` (None: not known) and ``train --task``'s value (default classify)."""
    args = list(argv or [])
    command = next((a for a in args if not a.startswith("-")), None)
    task = "classify"
    for i, a in enumerate(args):
        if a == "--task" and i + 1 < len(args):
            task = args[i + 1]
        elif a.startswith("--task="):
            task = a.split("=", 1)[1]
    return command, task


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with ``argv``, only the invoked subcommand loads heavy modules for its options."""
    from transferlab.tasks import TASK_CHOICES

    command, task = _command_and_task(argv) if argv is not None else (None, "classify")
    full = argv is None
    if task not in TASK_CHOICES:
        task = "classify"  # argparse reports the bad --task value below
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="Transfer learning on small image datasets: pretrained backbones, every classic "
                    "strategy, measured evidence.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the backbone zoo and which pretrained weights are available here")
    p.add_argument("--describe", metavar="NAME", help="layer table of one backbone: stage, output shape, "
                                                      "parameters, multiply-adds")
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
    p.add_argument("--top", type=positive_int, default=5, help="how many classes to show (default: 5)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="run --model with PyTorch or with ONNX Runtime on its exported model.onnx (default: torch)")
    add_tta_option(p)
    p.add_argument("--draw", metavar="OUT.png", help="localization runs: draw predicted (red) and, where a VOC file "
                   "is found, true (green) boxes; segmentation runs: mask overlays, and the masks as PNG files in "
                   "OUT_masks/; keypoint runs: the points")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="train a strategy for a task (classify, multilabel, localize, segment, "
                                     "keypoints) into a run directory")
    p.add_argument("data", nargs="?", metavar="DATA", help="image folder, dataset layout, CSV or 'fashion-mnist'")
    p.add_argument("--task", default="classify", choices=TASK_CHOICES,
                   help="what to learn: classify (one class per image), multilabel (a path,labels CSV, labels "
                        "separated by ';'), localize (one box per image, VOC annotations), segment (a class per "
                        "pixel: pet trimaps, or images/ + masks/) or keypoints (a path,NAME_x,NAME_y,... CSV); "
                        "the flags below follow the task (default: classify)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="empty a run directory that already holds a run (else it is refused)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_log_option(p)
    add_task_options(p, task if command == "train" else "classify")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run (any task) on a dataset with the same classes")
    add_evaluate_arguments(p)
    add_tta_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("augment-preview", help="draw a grid of augmented training samples")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--preset", default="basic", help="augmentation preset (default: basic)")
    p.add_argument("--out", default="augment-preview.png", help="PNG to write")
    p.add_argument("--n", type=positive_int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_augment_preview)

    p = sub.add_parser("demo", help="the README's main job on Fashion-MNIST (what `make demo` runs)")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    add_evidence_commands(sub)
    add_deploy_commands(sub)
    if full or command == "localize":
        add_localize_commands(sub)
    if full or command in ("probe-layers", "transferability"):
        add_layer_commands(sub)
    if full or command in ("audit", "suggest-labels"):
        add_data_commands(sub)
    if full or command in ("explain", "inspect"):
        add_explain_commands(sub)
    for name, text in HEAVY_COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=text)
    add_cache_commands(sub)
    return parser


def user_error_line(exc: BaseException) -> str | None:
    """The one line for a user error or a bad file, or None for what is a bug (shown as a traceback).

    User errors are :class:`TransferlabError`; bad files and a bad environment are ``OSError``
    (ENOSPC, EACCES, EEXIST, ...: the file and what to do), unpickling, safetensors and JSON errors.

    Example:
        >>> user_error_line(OSError(28, "No space left on device", "runs/a/model.json"))
        'runs/a/model.json: No space left on device (errno 28 ENOSPC); free disk space or write elsewhere'
        >>> user_error_line(KeyError("x")) is None
        True
    """
    import pickle

    from safetensors import SafetensorError

    if isinstance(exc, TransferlabError):
        return str(exc)
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "")
        where = exc.filename if exc.filename is not None else "a file"
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        what = exc.strerror or str(exc)
        code = f" (errno {exc.errno} {name})" if name else ""
        return f"{where}{target}: {what}{code}; {_OS_HINTS.get(name, 'check the path and its permissions')}"
    if isinstance(exc, (pickle.UnpicklingError, SafetensorError, json.JSONDecodeError)):
        return f"unreadable file ({first_line(exc)}); re-create it (train again with --overwrite, or clear the cache)"
    return None


_OS_HINTS = {
    "ENOSPC": "free disk space or write elsewhere",
    "EDQUOT": "free disk space (quota) or write elsewhere",
    "EACCES": "choose a folder you can write to, or fix its permissions",
    "EPERM": "choose a folder you can write to, or fix its permissions",
    "EROFS": "the file system is read-only; write elsewhere",
    "EEXIST": "a file is in the way; remove it or choose another path",
    "ENOTDIR": "a file is in the way where a folder is expected; choose another path",
    "EISDIR": "a folder is in the way where a file is expected; choose another path",
    "ENOENT": "check the path",
    "ENAMETOOLONG": "choose a shorter path",
}


def main(argv: Sequence[str] | None = None) -> int:
    """The one error policy: user errors and bad files print one line and exit 2 (``-v``: the traceback)."""
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = user_error_line(exc)
        if line is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        from transferlab.engine.distributed import shutdown_distributed

        shutdown_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
