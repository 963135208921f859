"""Trials of training-recipe changes: each variant trains the default model for the same few minutes with the same
seed, back to back on this machine, then is measured on the 10,000 Fashion-MNIST test images: top-1 (single crop,
through the serving preprocessing) and precision@10 / mAP by label of the fc7 vectors (each test image against the
other 9,999, the gallery `make run` builds).

    python -m bench.recipe_trials --minutes 5 baseline ema      (each variant: the minutes, plus about a minute)

Results go to training/RESULTS.md by hand, with the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

# variant -> overrides of the fashion-mnist recipe
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "fp32-unfolded": {"amp": False, "fold_fc6": False},  # the recipe before fc6 was folded and bf16 used on the CPU
    "fp32": {"amp": False},
    "ema": {"ema": 0.999},
    "ema-0.9995": {"ema": 0.9995},
    "batch256": {"batch_size": 256, "lr": 1.7e-3, "warmup_steps": 100},  # learning rate scaled by sqrt(2), as for Adam
    "no-smoothing": {"label_smoothing": 0.0},
    "supcon": {"supcon": 0.5},  # + a supervised contrastive term on fc7 (training/losses.py), weight 0.5, t = 0.1
    "supcon-1": {"supcon": 1.0},
}


def fc7_metrics(weights: Path) -> dict[str, float]:
    from index.quality import label_metrics
    from model.datasets import fashion_mnist
    from model.predictor import Predictor

    predictor = Predictor(weights)
    test = fashion_mnist(split="test")
    images = [test.pil_image(i) for i in range(len(test))]
    vectors = np.concatenate([predictor.embed(images[a : a + 256]) for a in range(0, len(images), 256)])
    return label_metrics(vectors, test.labels.numpy(), ks=(1, 10, 100))


def run(variant: str, minutes: float, out: Path, seed: int) -> dict[str, Any]:
    from training.recipes import recipe
    from training.train import train

    cfg = recipe("fashion-mnist", out=str(out / variant), minutes=minutes, seed=seed, **VARIANTS[variant])
    start = time.perf_counter()
    trainer = train(cfg, progress=False)
    wall = time.perf_counter() - start
    from model.weights import read_meta

    meta = read_meta(Path(cfg.out) / "model.safetensors")
    quality = fc7_metrics(Path(cfg.out) / "model.safetensors")
    seen = sum(r["train_images"] for r in trainer.history)
    return {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "top1": meta.metrics["top1"],
        "p@10": round(100 * quality["p@10"], 2),
        "map": round(100 * quality["map"], 2),
        "train_minutes": round(trainer.elapsed / 60, 2),
        "wall_minutes": round(wall / 60, 2),
        "epochs": round(trainer.history[-1]["epoch"], 2),
        "images_per_s": round(seen / max(trainer.elapsed, 1e-9)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_trials")
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/trials"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from model.runtime import retain_freed_memory

    retain_freed_memory()  # as `alexnet train` runs with its default settings (model/console.py)
    rows = []
    for variant in args.variants:
        rows.append(run(variant, args.minutes, args.out, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| variant | top-1 | precision@10 | mAP | epochs | img/s | train min |\n|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["variant"], f"{r['top1']:.2f}%", f"{r['p@10']:.2f}%", f"{r['map']:.2f}%"]
        cells += [r["epochs"], r["images_per_s"], r["train_minutes"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
