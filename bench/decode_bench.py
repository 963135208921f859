"""Decoding photographs: reduced JPEG decoding against full decoding (agreement and cost), and what an upload
costs in each format, same process, same run.

    python -m bench.decode_bench          (needs the `bench` extra: scikit-image's photographs)

The photographs are the twelve colour and grey photos that scikit-image ships in ``skimage.data``
(``PHOTOS``, 0.1 to 2 MP). Each gives ``FRAMINGS`` pictures: the whole photo and random crops of 60 to
100% of each side (seeded), as different shots of one scene; each is resampled with Lanczos to 2, 6 and
12 megapixels (aspect kept) and saved as a JPEG of quality 90 with 4:2:0 chroma, as a phone would.
Upsampled photos hold less fine detail than a real 12 MP photo, so the agreement below is measured
on the detail a real photo also has at those scales. Each picture is decoded twice, whole
(``decode_image``) and reduced (``decode_image(min_side=resize)``, what the service does), then
preprocessed (``Predictor.pixels``) and run through two models:

- the default model (``data/weights/fashion-mnist.safetensors``, 64 px crops of a 68 px resize), if present;
- the paper's 224 px model (1000 classes, random weights; 224 px crops of a 256 px resize).

Agreement: top-1 the same, top-5 overlap (shared labels / 5), cosine similarity of fc7.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import agreement, machine, median, setup_threads, table, time_call
from model.decode import decode_image
from model.predictor import Predictor

PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)
MEGAPIXELS: tuple[float, ...] = (2, 6, 12)
FRAMINGS = 9  # pictures per photo: 108 per size, so that one disagreement shows as 99.1%


def photographs() -> dict[str, Image.Image]:
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("scikit-image is missing: pip install -e '.[bench]'") from None
    out = {}
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        out[name] = Image.fromarray(arr).convert("RGB")
    return out


def framings(im: Image.Image, n: int, seed: int) -> list[Image.Image]:
    """The whole photo and ``n - 1`` random crops of 60-100% of each side."""
    rng = np.random.default_rng(seed)
    out = [im]
    for _ in range(n - 1):
        w, h = (round(side * rng.uniform(0.6, 1.0)) for side in im.size)
        x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
        out.append(im.crop((x, y, x + w, y + h)))
    return out


def resampled(im: Image.Image, megapixels: float) -> Image.Image:
    """Lanczos to ``megapixels`` million pixels, aspect ratio kept."""
    s = math.sqrt(megapixels * 1e6 / (im.width * im.height))
    return im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    options: dict[str, Any] = {
        "JPEG": {"quality": 90},
        "PNG": {},  # Pillow's default compression (level 6)
        "WEBP": {"quality": 90},
        "TIFF": {"compression": "tiff_deflate"},
    }[fmt]
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def paper_predictor(tmp: Path) -> Predictor:
    from bench.service_bench import make_full_weights

    path = tmp / "paper-random.safetensors"
    make_full_weights(path, 224)
    return Predictor(path)


Pictures = dict[float, list[tuple[bytes, dict[str, torch.Tensor]]]]  # megapixels -> (JPEG, model -> lossless pixels)


def make_pictures(photos: dict[str, Image.Image], predictors: dict[str, Predictor]) -> Pictures:
    """Every framing at every size as a JPEG, with what each model sees of the picture before JPEG coding."""
    out: Pictures = {mp: [] for mp in MEGAPIXELS}
    for seed, im in enumerate(photos.values()):
        for shot in framings(im, FRAMINGS, seed):
            for mp in MEGAPIXELS:
                big = resampled(shot, mp)
                out[mp].append((encode(big, "JPEG"), {name: p.pixels([big])[0] for name, p in predictors.items()}))
    return out


def agreement_table(predictors: dict[str, Predictor], pictures: Pictures) -> list[dict[str, Any]]:
    rows = []
    for model_name, predictor in predictors.items():
        resize = predictor.meta.preset.resize_size
        for mp, items in pictures.items():
            files = [data for data, _ in items]
            lossless, _ = predictor.forward(torch.stack([pix[model_name] for _, pix in items]))
            full = [predictor.pixels([decode_image(data).image])[0] for data in files]
            reduced = [decode_image(data, min_side=resize).image for data in files]
            lf, ff = predictor.forward(torch.stack(full))
            lr, fr = predictor.forward(predictor.pixels(reduced))
            top1, top5 = agreement(lf, lr)
            cos = torch.nn.functional.cosine_similarity(ff, fr).numpy()
            first = decode_image(files[0])
            rows.append(
                {
                    "model": model_name,
                    "megapixels": mp,
                    "pictures": len(files),
                    "first_decoded_at": f"{reduced[0].width}x{reduced[0].height} of {first.width}x{first.height}",
                    "top1_agree_pct": 100 * top1,
                    "top5_overlap_pct": 100 * top5,
                    "fc7_cos_mean": float(cos.mean()),
                    "fc7_cos_min": float(cos.min()),
                    # the baseline: what JPEG coding itself changes (full decoding against the picture before coding)
                    "jpeg_vs_lossless_top1_pct": 100 * agreement(lossless, lf)[0],
                }
            )
    return rows


def costs(
    predictor: Predictor, photos: dict[str, Image.Image], names: tuple[str, ...] = ("astronaut", "coffee", "rocket")
) -> list[dict[str, Any]]:
    """ms per image to decode and preprocess (``decode_image`` + ``Predictor.pixels``), median over ``names``."""
    resize = predictor.meta.preset.resize_size
    rows = []
    for mp in MEGAPIXELS:
        big = [resampled(photos[n], mp) for n in names]
        row: dict[str, Any] = {"megapixels": mp, "size": f"{big[0].width}x{big[0].height}"}
        for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
            files = [encode(im, fmt) for im in big]
            full = median(
                [
                    median(time_call(lambda d=d: predictor.pixels([decode_image(d).image]), warmup=1, min_repeats=3, min_seconds=0.3))
                    for d in files
                ]
            )
            row[f"{fmt.lower()}_ms"] = 1000 * full
            row[f"{fmt.lower()}_mb"] = sum(map(len, files)) / len(files) / 1e6
            if fmt == "JPEG":
                reduced = median(
                    [
                        median(
                            time_call(
                                lambda d=d: predictor.pixels([decode_image(d, min_side=resize).image]),
                                warmup=1,
                                min_repeats=3,
                                min_seconds=0.3,
                            )
                        )
                        for d in files
                    ]
                )
                row["jpeg_reduced_ms"] = 1000 * reduced
                row["jpeg_speedup"] = full / reduced
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.decode_bench")
    ap.add_argument("--weights", type=Path, default=Path("data/weights/fashion-mnist.safetensors"), help="the default model")
    args = ap.parse_args(argv if argv is not None else [])
    setup_threads()
    photos = photographs()
    with tempfile.TemporaryDirectory() as tmp:
        predictors: dict[str, Predictor] = {}
        if args.weights.is_file():
            predictors["default (64 px)"] = Predictor(args.weights)
        else:
            print(f"({args.weights} not found: `make run` trains it; agreement measured on the 224 px model only)")
        predictors["paper (224 px, random)"] = paper_predictor(Path(tmp))
        agree = agreement_table(predictors, make_pictures(photos, predictors))
        cost = costs(next(iter(predictors.values())), photos)
    print("# Reduced JPEG decoding vs full decoding: the same pictures through the same model")
    print(f"# ({len(PHOTOS)} skimage.data photographs x {FRAMINGS} framings, Lanczos to 2/6/12 MP, JPEG q90)")
    print(table(agree, list(agree[0])))
    print(f"\n# Decode + preprocess per image, ms (median of 3 photos), {next(iter(predictors))}: every format, and JPEG reduced")
    cols = [
        "megapixels",
        "size",
        "jpeg_ms",
        "jpeg_reduced_ms",
        "jpeg_speedup",
        "png_ms",
        "webp_ms",
        "tiff_ms",
        "jpeg_mb",
        "png_mb",
        "webp_mb",
        "tiff_mb",
    ]
    print(table(cost, cols))
    return {"machine": machine(), "agreement": agree, "costs": cost}


if __name__ == "__main__":
    main(sys.argv[1:])
