"""Commands of the model package: ``alexnet info``, ``alexnet classify``, ``alexnet import-torchvision``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.weights import WeightsError

__all__ = ["ERRORS", "main"]

ERRORS = (WeightsError,)  # printed by the dispatcher (model/console.py)


def _info(args: argparse.Namespace) -> int:
    from model.predictor import describe
    from model.weights import read_meta

    meta = read_meta(args.weights)
    d = describe(meta)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    names = meta.class_names
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    print(f"file:          {args.weights}")
    print(f"architecture:  {meta.architecture}")
    print(f"classes:       {meta.num_classes}: {shown}")
    p = meta.preset
    print(f"input:         resize {p.resize_size}, crop {p.crop_size}, mean {p.mean}, std {p.std}")
    print(f"PCA lighting:  {'eigenvalues ' + str(p.pca_eigval) if p.pca_eigval else 'none'}")
    print(f"recipe:        {json.dumps(meta.recipe)}")
    print(f"metrics:       {json.dumps(meta.metrics)}")
    c = meta.calibration
    calibrated = f"calibrated on {c.get('images')} images (convolutions in int8)" if c else "not calibrated (`alexnet calibrate`)"
    print(f"int8:          {calibrated}")
    t, f = meta.temperature, d["familiarity"]
    print("softmax:       " + (f"temperature {t['value']:.3f} (held-out calibration error {100 * t['ece_before']:.2f}% -> "
          f"{100 * t['ece_after']:.2f}%)" if t else "temperature 1 (none fitted: `alexnet familiarity`)"))  # fmt: skip
    familiar = (f"{'+'.join(f['layers'])}, k={f['k']}, {f['reference_images']} reference images, at most "
                f"{100 * f['false_alarm']:.0f}% false alarms (the {100 * f['threshold_level']:.2f}th percentile of "
                f"{f['held_out_images']} held-out training images)" if isinstance(f, dict) else
                "none: answers say the score is unavailable (`alexnet familiarity`)")  # fmt: skip
    print(f"familiarity:   {familiar}")
    print(f"content hash:  {meta.content_hash}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from PIL import Image

    from model.predictor import Predictor

    predictor = Predictor(args.weights, device=args.device)
    results: list[dict[str, object]] = []
    failed = 0
    for name in args.images:
        try:
            with Image.open(name) as im:
                im.load()
                preds = predictor.classify([im], k=args.k, ten_crop=args.ten_crop)[0]
        except (OSError, ValueError, SyntaxError) as e:
            print(f"{name}: cannot classify ({type(e).__name__}: {e})", file=sys.stderr)
            failed += 1
            continue
        results.append({"file": name, "top": [p.__dict__ for p in preds]})
        if not args.json:
            print(name)
            for p in preds:
                print(f"  {p.probability:7.2%}  {p.label}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _import_torchvision(args: argparse.Namespace) -> int:
    from model.weights import import_torchvision

    meta = import_torchvision(args.pth, args.out)
    print(f"wrote {args.out}: {meta.architecture}, {meta.num_classes} classes, hash {meta.short_hash}")
    return 0


def build_parser(prog: str = "alexnet") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a weights file's metadata")
    p.add_argument("weights", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)
    p = sub.add_parser("classify", help="top-k labels of image files")
    p.add_argument("weights", type=Path)
    p.add_argument("images", nargs="+")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--ten-crop", action="store_true", help="average the softmax of the paper's 10 patches")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_classify)
    p = sub.add_parser("import-torchvision", help="convert torchvision's alexnet-owt-*.pth to a weights file")
    p.add_argument("pth", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=_import_torchvision)
    return parser


def main(argv: list[str], settings: object = None) -> int:
    """(``settings``: the dispatcher's; these commands read none.)"""
    args = build_parser().parse_args(argv)
    return int(args.func(args))
