"""Checkpoint -> serving weights file (class names, preprocessing, PCA stats, recipe, measured accuracy)."""

from __future__ import annotations

import logging
from pathlib import Path

from model.alexnet import AlexNet, AlexNetConfig
from model.predictor import Predictor
from model.preprocess import Preset
from model.weights import WeightsMeta, save_weights
from training.checkpoint import load_checkpoint
from training.data import Source
from training.evaluate import evaluate_predictor
from training.recipes import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["export_checkpoint"]


def export_checkpoint(checkpoint: Path, out: Path, *, evaluate_on: Source | None = None, ten_crop: bool = False) -> WeightsMeta:
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
    saved = save_weights(model, meta, out)
    log.info("wrote %s (hash %s)", out, saved.short_hash)
    return saved
