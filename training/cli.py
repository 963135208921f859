"""Commands of the training package: ``alexnet train``, ``alexnet export``, ``alexnet evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.console import CommandSettings, read_settings
from model.datasets import DataError, fetch_fashion_mnist
from model.weights import WeightsError

__all__ = ["ERRORS", "main"]

ERRORS = (DataError, WeightsError)  # printed by the dispatcher (model/console.py)


def _data_dir(args: argparse.Namespace, data: str, data_dir: str | None) -> str | None:
    """Where ``data`` is read from; with ``--download`` (``ALEXNET_DOWNLOAD``) Fashion-MNIST is fetched first, here,
    so that nothing after this (data-loading workers included) downloads."""
    if data == "fashion-mnist" and args.download:
        return str(fetch_fashion_mnist(data_dir, mirror=args.mirror))
    return data_dir


def _train(args: argparse.Namespace) -> int:
    from training.recipes import recipe
    from training.train import train

    cfg = recipe(
        args.recipe,
        data=args.data,
        data_dir=args.data_dir,
        out=args.out,
        epochs=args.epochs,
        minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        devices=args.device,
        crop_size=args.crop_size,
        resize_size=args.resize_size,
        seed=args.seed,
        max_train_images=args.max_train_images,
        max_steps=args.max_steps,
        workers=args.workers,
        eval_ten_crop=args.ten_crop or None,
        amp=args.amp,
        fold_fc6=args.fold_fc6,
    )
    from dataclasses import replace

    cfg = replace(cfg, data_dir=_data_dir(args, cfg.data, cfg.data_dir), minutes=None if args.no_minutes else cfg.minutes)
    trainer = train(cfg, resume=args.resume, export=not args.no_export)
    if trainer.is_main and not args.no_export and not trainer._interrupted:
        from model.weights import read_meta

        weights = Path(cfg.out) / "model.safetensors"
        seen = sum(r.get("train_images", 0) for r in trainer.history)
        top1 = read_meta(weights).metrics.get("top1")
        speed = seen / max(trainer.elapsed, 1e-9)
        reached = f"top-1 {top1:.2f}% on the held-out split" if isinstance(top1, float) else "no held-out accuracy measured"
        # how fast this machine trains decides how far a time budget gets (README, "Training": accuracy by speed)
        print(f"trained {trainer.history[-1]['epoch'] if trainer.history else 0:.2f} epochs in {trainer.elapsed / 60:.1f} min "
              f"at {speed:.0f} images/s: {reached}")  # fmt: skip
        print(f"weights: {weights}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from model.preprocess import Preset
    from training.checkpoint import load_checkpoint
    from training.data import open_source
    from training.export import export_checkpoint
    from training.recipes import TrainConfig

    source = calibration = held_out = None
    if not (args.no_eval and args.no_calibrate):  # (the checkpoint is read again by the export: only when needed)
        cfg = TrainConfig.from_dict(load_checkpoint(args.checkpoint)["config"])
        size = cfg.resize_size or Preset.for_crop(cfg.crop_size).resize_size
        data_dir = _data_dir(args, cfg.data, cfg.data_dir)
        source = None if args.no_eval else open_source(cfg.data, split="val", data_dir=data_dir, size=size)
        if not args.no_calibrate:
            calibration = open_source(cfg.data, split="train", data_dir=data_dir, size=size, holdout=cfg.holdout)
            held_out = open_source(cfg.data, split="holdout", data_dir=data_dir, size=size, holdout=cfg.holdout) if cfg.holdout else None
    meta = export_checkpoint(
        args.checkpoint, args.out, evaluate_on=source, ten_crop=args.ten_crop, calibrate_with=calibration, held_out=held_out
    )
    print(f"wrote {args.out}: {meta.num_classes} classes, hash {meta.short_hash}, metrics {json.dumps(meta.metrics)}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from model.weights import read_meta
    from training.data import open_source
    from training.export import calibrate_weights

    meta = read_meta(args.weights)
    data_dir = _data_dir(args, args.data, args.data_dir)
    source = open_source(args.data, split="train", data_dir=data_dir, size=meta.preset.resize_size, class_names=meta.class_names)
    meta = calibrate_weights(args.weights, source, args.images)
    ranges = meta.calibration["ranges"]
    print(f"{args.weights}: int8 calibration from {meta.calibration['images']} images of {args.data} ({len(ranges)} ranges); "
          f"hash {meta.short_hash} unchanged; serve it with ALEXNET_PRECISION=int8")  # fmt: skip
    return 0


def _familiarity(args: argparse.Namespace) -> int:
    from model.weights import read_meta
    from training.data import open_source
    from training.export import familiarise_weights

    meta = read_meta(args.weights)
    holdout = args.holdout if args.holdout is not None else int(meta.recipe.get("holdout", 0) or 0)
    data = args.data or str(meta.recipe.get("data") or "fashion-mnist")
    data_dir = _data_dir(args, data, args.data_dir)
    size, names = meta.preset.resize_size, meta.class_names
    train = open_source(data, split="train", data_dir=data_dir, size=size, class_names=names, holdout=holdout)
    held = open_source(data, split="holdout", data_dir=data_dir, size=size, class_names=names, holdout=holdout) if holdout else None
    meta = familiarise_weights(args.weights, train, held, args.references)
    t = meta.temperature
    fam = json.loads(meta.familiarity)
    print(f"{args.weights}: familiarity from {min(args.references, len(train))} reference images of {data}, threshold at the "
          f"{100 * fam['threshold_level']:.2f}th percentile (at most {100 * fam['false_alarm']:.0f}% false alarms) of {t['images']} "
          f"{'training images it was trained on (none were held out)' if held is None else 'held-out training images'}; "
          f"softmax temperature {t['value']:.3f} (calibration error {100 * t['ece_before']:.2f}% -> {100 * t['ece_after']:.2f}%); "
          f"hash {meta.short_hash} unchanged")  # fmt: skip
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.predictor import Predictor
    from training.data import open_source
    from training.evaluate import confusion_png, evaluate_predictor

    predictor = Predictor(args.weights, device=args.device)
    source = open_source(
        args.data,
        split=args.split,
        data_dir=_data_dir(args, args.data, args.data_dir),
        size=predictor.meta.preset.resize_size,
        class_names=predictor.class_names,
    )
    results = [evaluate_predictor(predictor, source, limit=args.limit)]
    if args.ten_crop:
        results.append(evaluate_predictor(predictor, source, ten_crop=True, limit=args.limit))
    for r in results:
        print(f"{r['crop']:>8}: top-1 error {100 * r['top1_err']:.2f}%  top-5 error {100 * r['top5_err']:.2f}%  ({r['images']} images)")
    if args.confusion:
        confusion_png(results[0]["confusion"], predictor.class_names, args.confusion, title=f"{args.weights.name} on {args.data}")
        print(f"confusion matrix: {args.confusion}")
    familiarity = None
    if args.familiarity:
        from training.ood import evaluate_familiarity, format_table

        familiarity = evaluate_familiarity(predictor, source, limit=args.limit)
        print(format_table(familiarity))
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "confusion"} for r in results] +
                         ([{"familiarity": familiarity}] if familiarity else []), indent=2))  # fmt: skip
    return 0


def _recipe_defaults(field: str) -> str:
    """What each recipe sets ``field`` to, for --help (the flags' own default is "the recipe's")."""
    from training.recipes import RECIPES

    values = {name: getattr(cfg, field) for name, cfg in RECIPES.items()}
    return "default from the recipe: " + ", ".join(f"{name}={'none' if v is None else v}" for name, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    from training.recipes import RECIPES

    parser = argparse.ArgumentParser(prog="alexnet")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train with a named recipe", description="Every option left out takes the recipe's value.")

    def recipe_option(flag: str, field: str, text: str, **kw: object) -> None:
        p.add_argument(flag, help=f"{text} ({_recipe_defaults(field)})", **kw)  # type: ignore[arg-type]

    p.add_argument("--recipe", default="fashion-mnist", choices=sorted(RECIPES), help="named recipe (default: fashion-mnist)")
    recipe_option("--data", "data", "fashion-mnist, generated[:N], or an image folder (DIR/train and DIR/val, or DIR/<class>/...)")
    p.add_argument("--data-dir", help="directory holding Fashion-MNIST's four IDX files (default: the Debian package's)")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if missing (checksums verified; or ALEXNET_DOWNLOAD=1)")
    recipe_option("--out", "out", "output directory (checkpoint, metrics, curves.png, model.safetensors)")
    recipe_option("--epochs", "epochs", "epochs", type=int)
    recipe_option("--minutes", "minutes", "training time budget; the schedule is compressed to fit", type=float)
    p.add_argument("--no-minutes", action="store_true", help="drop the recipe's time budget")
    recipe_option("--batch-size", "batch_size", "images per optimiser step, over all processes", type=int)
    recipe_option("--lr", "lr", "peak learning rate", type=float)
    recipe_option("--crop-size", "crop_size", "input size of the network", type=int)
    recipe_option("--resize-size", "resize_size", "shorter side before the random crop (None: the paper's 256:224 ratio)", type=int)
    recipe_option("--device", "devices", "cpu, cuda:0, or cuda:0,cuda:1 (two towers on two GPUs); DDP under torchrun")
    recipe_option("--seed", "seed", "random seed", type=int)
    recipe_option("--workers", "workers", "decoding processes for image folders", type=int)
    recipe_option("--amp", "amp", "bf16 autocast on GPU and on CPUs with native bf16", action=argparse.BooleanOptionalAction)
    recipe_option(
        "--fold-fc6",
        "fold_fc6",
        "train fc6 folded when pool5 is under 6x6 (the same updates, faster)",
        action=argparse.BooleanOptionalAction,
    )
    p.add_argument("--max-train-images", type=int, help="use only the first N training images (default: all)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (default: no limit)")
    p.add_argument("--ten-crop", action="store_true", help="also measure 10-crop accuracy at export")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-export", action="store_true", help="do not write model.safetensors at the end")
    p.set_defaults(func=_train)
    p = sub.add_parser("export", help="write the serving weights file from a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--no-eval", action="store_true", help="skip measuring accuracy on the held-out split")
    p.add_argument("--ten-crop", action="store_true")
    p.add_argument(
        "--no-calibrate", action="store_true", help="skip the int8 calibration, the softmax temperature and the familiarity score"
    )
    p.set_defaults(func=_export)
    p = sub.add_parser(
        "calibrate",
        help="add int8 calibration to a weights file (ALEXNET_PRECISION=int8 then runs conv2-conv5, fc6 and fc7 in int8)",
        description="Measures the activation ranges of the convolutions and fc layers on training images and stores them in the "
        "weights file's metadata, in place; the tensors and the content hash stay as they are.",
    )
    p.add_argument("weights", type=Path)
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, generated[:N], or an image folder with the model's classes")
    p.add_argument("--data-dir", help="directory holding Fashion-MNIST's four IDX files (default: the Debian package's)")
    p.add_argument("--images", type=int, default=512, help="calibration images (default: 512)")
    p.set_defaults(func=_calibrate)
    p = sub.add_parser(
        "familiarity",
        help="add the familiarity score and the softmax temperature to a weights file, in place (hash unchanged)",
        description="Keeps features of a reference sample of training images in the weights file and fits, on training "
        "images held out of training, the score's threshold (5%% of them called unfamiliar) and the softmax temperature. "
        "`alexnet export` does this for the models this project trains; this adds it to others (imported weights, with "
        "an image folder of their classes).",
    )
    p.add_argument("weights", type=Path)
    p.add_argument("--data", help="fashion-mnist, generated[:N], or an image folder with the model's classes (default: the recipe's)")
    p.add_argument("--data-dir", help="directory holding Fashion-MNIST's four IDX files (default: the Debian package's)")
    p.add_argument(
        "--holdout", type=int, help="training images the model was not trained on, as `alexnet train` held them out (default: the recipe's)"
    )
    p.add_argument("--references", type=int, default=2000, help="reference images kept in the file (default: 2000)")
    p.set_defaults(func=_familiarity)
    p = sub.add_parser("evaluate", help="top-1/top-5 error of a weights file")
    p.add_argument("weights", type=Path)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is missing (or ALEXNET_DOWNLOAD=1)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--ten-crop", action="store_true")
    p.add_argument("--confusion", type=Path, help="write a confusion-matrix PNG here")
    p.add_argument(
        "--familiarity",
        action="store_true",
        help="also measure the familiarity score (AUROC and flagged share against photo crops, digits, generated "
        "textures, text and noise, and the test set upside down) and the calibration error before and after the temperature",
    )
    p.add_argument("--limit", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str], settings: CommandSettings | None = None) -> int:
    settings = settings or read_settings()
    args = build_parser().parse_args(argv)
    args.download = getattr(args, "download", False) or settings.download
    args.mirror = settings.fashion_mnist_mirror or None
    return int(args.func(args))
