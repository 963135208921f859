"""How well a weights file tells pictures it knows from pictures it does not (``model.familiarity``), measured on
sets nobody tuned on.

In distribution: the data set's test split (for Fashion-MNIST its 10,000 test images). Out of distribution:

- **photo crops**: random square crops (15-100% of the shorter side) of the photographs that scikit-image ships,
  rescaled to 28-300 px, seeded;
- **digits**: scikit-learn's bundled 8x8 handwritten digits (1,797), upscaled to 28 px like Fashion-MNIST;
- **textures, text and noise**: generated here, seeded: uniform and Gaussian noise, stripes and checkerboards,
  smooth random blobs, and lines of text;
- **upside down** (the near case, reported on its own): the test images turned upside down. Many garments look
  much the same either way up, so this set measures how far the score follows orientation, not a target.

For each set: AUROC of the score (in-distribution positive; 0.5 is chance) and the share flagged unfamiliar at the
weights' own threshold; for the test set, the share flagged (the false-alarm rate) and the expected calibration
error of the softmax at T = 1 and at the fitted temperature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.console import progress as progress_bar
from model.familiarity import expected_calibration_error
from model.predictor import Predictor
from training.data import Source

__all__ = ["PHOTOGRAPHS", "auroc", "evaluate_familiarity", "out_of_distribution", "upside_down"]

PHOTOGRAPHS = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
               "immunohistochemistry", "moon", "page", "retina", "rocket", "text")  # fmt: skip
PHOTO_CROPS = 400
GENERATED_EACH = 100  # of each of the four generated kinds


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"{package} is missing (its bundled data is an evaluation set): pip install -e '.[dev]'") from None


def photo_crops(n: int = PHOTO_CROPS, seed: int = 0) -> list[Image.Image]:
    data = _need("skimage.data", "scikit-image")
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOGRAPHS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        side = int(min(im.size) * rng.uniform(0.15, 1.0))
        x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        out.append(im.crop((x, y, x + side, y + side)).resize((int(rng.integers(28, 301)),) * 2, Image.Resampling.BILINEAR))
    return out


def digits() -> list[Image.Image]:
    images = _need("sklearn.datasets", "scikit-learn").load_digits().images  # (1797, 8, 8), values 0..16
    return [Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.Resampling.BILINEAR) for im in images]


def generated(n: int = GENERATED_EACH, seed: int = 0) -> list[Image.Image]:
    """Noise (uniform, Gaussian), patterns (stripes, checkerboards, smooth blobs) and text, ``n`` of each kind."""
    rng = np.random.default_rng(seed)
    out: list[Image.Image] = []
    for _ in range(n):
        side = int(rng.integers(28, 129))
        out.append(Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)))
        out.append(Image.fromarray(rng.normal(128, 40, (side, side, 3)).clip(0, 255).astype(np.uint8)))
        yy, xx = np.mgrid[0:side, 0:side]
        period, angle = rng.uniform(3, side / 2), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        pattern = wave > 0 if rng.random() < 0.5 else (xx // max(2, int(period)) + yy // max(2, int(period))) % 2 == 0
        coarse = rng.random((4, 4))
        blobs = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC))
        out.append(Image.fromarray((pattern * 255).astype(np.uint8) if rng.random() < 0.5 else blobs))
        page = Image.new("L", (side, side), int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(page)
        for _ in range(int(rng.integers(2, 7))):
            text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 "), int(rng.integers(3, 12))))
            draw.text((int(rng.integers(0, side // 2)), int(rng.integers(0, side - 10))), text, fill=int(rng.integers(0, 256)))
        out.append(page)
    return out


def out_of_distribution(seed: int = 0) -> dict[str, list[Image.Image]]:
    return {"photo crops": photo_crops(seed=seed), "digits": digits(), "textures, text and noise": generated(seed=seed)}


def upside_down(images: list[Image.Image]) -> list[Image.Image]:
    return [im.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for im in images]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney U statistic over both sizes)."""
    scores = np.concatenate([positive, negative]).astype(np.float64)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[order][np.diff(scores[order], prepend=np.nan) == 0]):  # average the ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _scores(predictor: Predictor, images: list[Image.Image], desc: str, progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and raw familiarity scores (larger: more familiar) of ``images``, through the serving path."""
    scorer = predictor.familiarity
    assert scorer is not None
    logits, raw = [], []
    for a in progress_bar(range(0, len(images), 256), desc=desc, disable=not progress, unit="batch"):
        lo, feats = predictor.features(predictor.pixels(images[a : a + 256]))
        logits.append(lo)
        raw.append(scorer.raw(feats).numpy())
    return torch.cat(logits), np.concatenate(raw)


def evaluate_familiarity(predictor: Predictor, test: Source, *, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The table of the module's docstring for ``predictor``'s weights: rows of set, images, AUROC and share flagged
    unfamiliar; the test set's calibration error at T = 1 and at the fitted temperature; the threshold's stated rate."""
    scorer = predictor.familiarity
    if scorer is None:
        raise ValueError(f"{predictor.path}: the weights carry no familiarity score (add one with `alexnet familiarity`)")
    n = min(len(test), limit or len(test))
    in_images = [test.pil_image(i) for i in range(n)]
    labels = torch.tensor([test.label(i) for i in range(n)])
    logits, in_raw = _scores(predictor, in_images, "in distribution", progress)
    threshold = scorer.threshold
    rows = [{"set": "in distribution (test split)", "images": n, "auroc": None, "flagged": float(np.mean(in_raw < threshold))}]
    sets = {**out_of_distribution(), "upside down (near case)": upside_down(in_images)}
    for name, images in sets.items():
        _, raw = _scores(predictor, images, name, progress)
        rows.append({"set": name, "images": len(images), "auroc": auroc(in_raw, raw), "flagged": float(np.mean(raw < threshold))})
    t = predictor.temperature
    return {
        "false_alarm_stated": scorer.false_alarm,
        "threshold_level": scorer.level,
        "rows": rows,
        "top1": float((logits.argmax(1) == labels).float().mean()),
        "temperature": t,
        "ece_before": expected_calibration_error(logits.softmax(1), labels),
        "ece_after": expected_calibration_error((logits / t).softmax(1), labels),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'set':<30} {'images':>7} {'AUROC':>7} {'flagged unfamiliar':>19}"]
    for r in result["rows"]:
        auc = "-" if r["auroc"] is None else f"{r['auroc']:.4f}"
        lines.append(f"{r['set']:<30} {r['images']:>7} {auc:>7} {100 * r['flagged']:>18.1f}%")
    lines.append(
        f"threshold: at most {100 * result['false_alarm_stated']:.0f}% false alarms (the {100 * result['threshold_level']:.2f}th "
        f"percentile of held-out training images); top-1 {100 * result['top1']:.2f}%; "
        f"calibration error (15 bins) {100 * result['ece_before']:.2f}% at T=1, {100 * result['ece_after']:.2f}% at "
        f"T={result['temperature']:.3f}"
    )
    return "\n".join(lines)
