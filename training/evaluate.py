"""Evaluation: during training, centre-crop loss and top-1/top-5 error on tensors (``evaluate``); of a weights
file, through the serving path, single crop and 10-crop, with a confusion matrix (``evaluate_predictor``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.console import progress as progress_bar
from model.predictor import Predictor
from model.preprocess import Preset
from training.augment import centre_batch
from training.data import Source
from training.precision import autocast
from training.recipes import TrainConfig

__all__ = ["confusion_png", "evaluate", "evaluate_predictor", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


@torch.inference_mode()
def evaluate(model: nn.Module, source: Source, preset: Preset, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Centre-crop loss and top-1/top-5 error over a source (the fast tensor path used during training)."""
    was_training = model.training
    model.eval()
    n = loss_sum = c1 = c5 = 0.0
    for images, labels in source.batches(256, shuffle=False):
        x = centre_batch(images.to(device), preset)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg, device):
            logits = model(x).float()
        labels = labels.to(logits.device)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        a, b = topk_correct(logits, labels)
        c1, c5, n = c1 + a, c5 + b, n + len(labels)
    model.train(was_training)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "images": n}


def evaluate_predictor(
    predictor: Predictor, source: Source, *, ten_crop: bool = False, batch_size: int = 100, progress: bool = True, limit: int | None = None
) -> dict[str, Any]:
    """Errors of ``predictor`` on ``source``, preprocessing each original image exactly as serving does."""
    n = min(len(source), limit or len(source))
    if list(source.class_names) != list(predictor.class_names):
        raise ValueError(f"the data set's classes {source.class_names[:4]}... differ from the model's {predictor.class_names[:4]}...")
    k = min(5, len(predictor.class_names))
    c1 = c5 = 0
    confusion = np.zeros((len(source.class_names),) * 2, dtype=np.int64)
    desc = "evaluate" + (" (10-crop)" if ten_crop else "")
    for start in progress_bar(range(0, n, batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = range(start, min(n, start + batch_size))
        probs = predictor.probabilities(predictor.preprocess([source.pil_image(i) for i in idx], ten_crop=ten_crop))
        labels = torch.tensor([source.label(i) for i in idx])
        top = probs.topk(k, dim=1).indices
        c1 += int((top[:, 0] == labels).sum())
        c5 += int((top == labels[:, None]).any(dim=1).sum())
        np.add.at(confusion, (labels.numpy(), top[:, 0].numpy()), 1)
    return {
        "images": n,
        "crop": "10-crop" if ten_crop else "single",
        "top1_err": 1 - c1 / max(n, 1),
        "top5_err": 1 - c5 / max(n, 1),
        "top1": 100 * c1 / max(n, 1),
        "top5": 100 * c5 / max(n, 1),
        "confusion": confusion.tolist(),
    }


def confusion_png(confusion: list[list[int]], class_names: tuple[str, ...], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion)
    size = max(5.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
