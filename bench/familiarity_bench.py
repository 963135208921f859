"""The familiarity score and the softmax temperature (model/familiarity.py): how well the served weights tell the
unfamiliar (training/ood.py's table), and what the score costs a request, beside the same run's cost without it.

python -m bench familiarity                         (the default model, with the other benchmarks' results file)
python -m bench.familiarity_bench [--weights W] [--limit N] [--seconds S]

W defaults to the default model (data/weights/fashion-mnist.safetensors, what `make run` trains). Weights without a
score get one in a copy first (`alexnet familiarity`, on Fashion-MNIST). The cost is measured twice, the two
variants taking turns so that the machine's drift slows both alike:
- the forward pass with the score (``Predictor.forward_scored``) against without (``Predictor.forward``), batch 1 and 16;
- POST /classify p50 and p99 at one client (0.3 MP JPEGs), a server on the weights against a server on the same
  weights without the score (the same hash: the score lives outside it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, median, setup_threads, table, time_in_turns
from bench.service_bench import jpeg, load
from model.predictor import Predictor
from model.weights import load_familiarity, load_weights, read_meta, save_weights

DEFAULT = Path("data/weights/fashion-mnist.safetensors")  # where `make run` keeps the default model


def _with_and_without(weights: Path, tmp: Path) -> tuple[Path, Path]:
    scored, plain = tmp / "scored.safetensors", tmp / "plain.safetensors"
    shutil.copyfile(weights, scored)
    if not read_meta(scored).familiarity:
        from training.data import open_source
        from training.export import familiarise_weights

        meta = read_meta(scored)
        holdout = int(meta.recipe.get("holdout", 0) or 0)
        size = meta.preset.resize_size
        train = open_source("fashion-mnist", split="train", size=size, holdout=holdout)
        held = open_source("fashion-mnist", split="holdout", size=size, holdout=holdout) if holdout else None
        print(f"# {weights} has no familiarity score: adding one to a copy (alexnet familiarity)")
        familiarise_weights(scored, train, held)
    model, meta = load_weights(scored)
    save_weights(model, replace(meta, familiarity=""), plain)  # the same tensors, temperature and hash; no score
    return scored, plain


def forward_cost(scored: Path, plain: Path, seconds: float) -> list[dict[str, Any]]:
    with_score, without = Predictor(scored), Predictor(plain)
    rows = []
    for batch in (1, 16):
        pixels = with_score.pixels([jpeg_image(i) for i in range(batch)])
        turns = {"with": lambda p=pixels: with_score.forward_scored(p), "without": lambda p=pixels: without.forward(p)}
        times = time_in_turns(turns, turns=5, seconds=seconds / 10)
        a, b = median(times["with"]), median(times["without"])
        rows.append({"what": f"forward pass, batch {batch}", "with_ms": 1e3 * a, "without_ms": 1e3 * b, "extra_ms": 1e3 * (a - b),
                     "ratio": a / b})  # fmt: skip
    return rows


def jpeg_image(i: int) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(jpeg(i))).convert("RGB")


def request_cost(scored: Path, plain: Path, seconds: float, tmp: Path) -> list[dict[str, Any]]:
    from app.testing import running_server

    images = [jpeg(i) for i in range(32)]
    got: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    with (
        running_server({"ALEXNET_WEIGHTS": str(scored), "ALEXNET_INDEX_DIR": str(tmp / "index-a")}) as a,
        running_server({"ALEXNET_WEIGHTS": str(plain), "ALEXNET_INDEX_DIR": str(tmp / "index-b")}) as b,
    ):
        for base in (a, b):
            asyncio.run(load(base, "/classify", 1, 1.0, images))  # warm-up
        for _ in range(3):
            for name, base in (("with", a), ("without", b)):
                got[name].append(asyncio.run(load(base, "/classify", 1, seconds / 6, images)))
    rows = []
    for stat in ("p50_ms", "p99_ms"):
        w, wo = median([r[stat] for r in got["with"]]), median([r[stat] for r in got["without"]])
        what = f"POST /classify {stat[:3]}, 1 client, 0.3 MP"
        rows.append({"what": what, "with_ms": w, "without_ms": wo, "extra_ms": w - wo, "ratio": w / wo})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=DEFAULT)
    ap.add_argument("--limit", type=int, help="in-distribution test images (default: all 10,000)")
    ap.add_argument("--seconds", type=float, default=12, help="measuring time of each cost comparison")
    args = ap.parse_args(argv if argv is not None else [])
    setup_threads()
    if not args.weights.is_file():
        reason = f"no weights at {args.weights}: `make run` trains the default model (or pass --weights)"
        print(f"# skipped: {reason}")
        return {"skipped": reason}
    from training.data import open_source
    from training.ood import evaluate_familiarity, format_table

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        scored, plain = _with_and_without(args.weights, tmp)
        predictor = Predictor(scored)
        test = open_source("fashion-mnist", split="test", size=predictor.meta.preset.resize_size)
        result = evaluate_familiarity(predictor, test, limit=args.limit, progress=False)
        fam = load_familiarity(scored)
        assert fam is not None
        print(f"# {args.weights} (hash {predictor.meta.short_hash}): familiarity over {'+'.join(fam.layers)}, k={fam.k}, "
              f"{fam.info.get('reference_images')} reference images; temperature {predictor.temperature:.3f}")  # fmt: skip
        print(format_table(result))
        del predictor
        with torch.inference_mode():
            cost = forward_cost(scored, plain, args.seconds)
        cost += request_cost(scored, plain, args.seconds, tmp)
    print("# what the score costs, with and without it in turns on the same weights")
    print(table(cost, ["what", "with_ms", "without_ms", "extra_ms", "ratio"]))
    return {"machine": machine(), "weights": str(args.weights), "evaluation": result, "cost": cost}


if __name__ == "__main__":
    main(sys.argv[1:])
