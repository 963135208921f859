"""Checkpoint -> serving weights file (class names, preprocessing, PCA stats, recipe, measured accuracy,
int8 calibration, softmax temperature and familiarity score)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from model.alexnet import AlexNet, AlexNetConfig
from model.familiarity import REFERENCE_IMAGES, familiarise
from model.predictor import Predictor
from model.preprocess import Preset
from model.quantize import calibrate
from model.weights import WeightsError, WeightsMeta, load_familiarity, load_weights, save_weights
from training.checkpoint import load_checkpoint
from training.data import Source
from training.evaluate import evaluate_predictor
from training.recipes import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_IMAGES", "calibrate_on", "calibrate_weights", "export_checkpoint", "familiarise_weights"]

CALIBRATION_IMAGES = 512  # 256, 512 and 1024 agree with fp32 alike (bench/RESULTS.md)


def calibrate_on(model: AlexNet, meta: WeightsMeta, source: Source, images: int = CALIBRATION_IMAGES) -> dict[str, Any]:
    """int8 activation ranges (``model.quantize.calibrate``) from ``images`` images of ``source`` (a fixed random
    choice), preprocessed exactly as serving does."""
    predictor = Predictor.from_model(model, meta)
    idx = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))[:images].tolist()
    batches = (predictor.preprocess([source.pil_image(i) for i in idx[a : a + 128]]) for a in range(0, len(idx), 128))
    return calibrate(model, batches)


def calibrate_weights(path: Path, source: Source, images: int = CALIBRATION_IMAGES) -> WeightsMeta:
    """Add (or replace) the int8 calibration of a weights file, in place and atomically; tensors and hash unchanged."""
    model, meta = load_weights(path)
    if not isinstance(model, AlexNet):
        raise WeightsError(f"{path}: int8 convolutions are built for the two-tower AlexNet, not {meta.architecture}")
    if list(source.class_names) != list(meta.class_names):
        raise WeightsError(f"{path}: the data set's classes {source.class_names[:4]}... differ from the model's {meta.class_names[:4]}...")
    return save_weights(model, replace(meta, calibration=calibrate_on(model, meta, source, images)), path, load_familiarity(path, meta))


def familiarise_weights(path: Path, train: Source, held_out: Source | None, references: int = REFERENCE_IMAGES) -> WeightsMeta:
    """Add (or replace) the familiarity score and softmax temperature of a weights file, in place and atomically;
    tensors and hash unchanged."""
    model, meta = load_weights(path)
    if list(train.class_names) != list(meta.class_names):
        raise WeightsError(f"{path}: the data set's classes {train.class_names[:4]}... differ from the model's {meta.class_names[:4]}...")
    familiarity, temperature = familiarise(model, meta, train, held_out, references=references)
    return save_weights(model, replace(meta, temperature=temperature, familiarity=""), path, familiarity)


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    evaluate_on: Source | None = None,
    ten_crop: bool = False,
    calibrate_with: Source | None = None,
    held_out: Source | None = None,
) -> WeightsMeta:
    """The weights file for serving: the paper's fc6 (unfolded), held-out accuracy when ``evaluate_on`` is given,
    and the int8 calibration, the softmax temperature and the familiarity score from ``calibrate_with`` (the
    training split) and ``held_out`` (the training images the recipe kept out of training) when given."""
    ck = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ck["config"])
    names = tuple(ck["class_names"])
    model = AlexNet(AlexNetConfig(num_classes=len(names), dropout=cfg.dropout, bias_init=cfg.bias_init))
    if ck.get("fc6_folded"):  # trained in folded form (AlexNet.fold_fc6): served as the paper's fc6
        model.fold_fc6((ck["fc6_folded"][0], ck["fc6_folded"][1]))
    model.load_state_dict(ck.get("ema", ck["model"]))  # the weight average, when the recipe kept one
    model.unfold_fc6()
    model.eval()
    last = ck["history"][-1] if ck["history"] else {}
    metrics: dict[str, object] = {"epochs": last.get("epoch"), "train_minutes": round(float(ck["elapsed"]) / 60, 2), "steps": ck["step"]}
    meta = WeightsMeta(architecture=AlexNet.architecture, class_names=names, preset=Preset.from_dict(ck["preset"]), recipe=ck["config"])
    if evaluate_on is not None:
        predictor = Predictor.from_model(model, meta)
        single = evaluate_predictor(predictor, evaluate_on)
        metrics.update(
            {"dataset": f"{cfg.data} (held-out split)", "images": single["images"], "top1": single["top1"], "top5": single["top5"]}
        )
        log.info("held-out accuracy: top-1 %.2f%%, top-5 %.2f%% (single crop, %d images)", single["top1"], single["top5"], single["images"])
        if ten_crop:
            tc = evaluate_predictor(predictor, evaluate_on, ten_crop=True)
            metrics.update({"top1_10crop": tc["top1"], "top5_10crop": tc["top5"]})
    meta = WeightsMeta(meta.architecture, names, meta.preset, meta.recipe, metrics)
    familiarity = None
    if calibrate_with is not None:
        meta = replace(meta, calibration=calibrate_on(model, meta, calibrate_with))
        log.info("int8 calibration from %d training images", meta.calibration["images"])
        familiarity, temperature = familiarise(model, meta, calibrate_with, held_out)
        meta = replace(meta, temperature=temperature)
    saved = save_weights(model, meta, out, familiarity)
    log.info("wrote %s (hash %s)", out, saved.short_hash)
    return saved
