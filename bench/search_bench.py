"""Search: latency, throughput, memory and recall@10 of exact and compressed FAISS indexes.

    python -m bench.search_bench [--weights W] [--sizes 100000,1000000]

Vectors with real structure: the fc7 vectors of the 70,000 Fashion-MNIST images, made by the
weights file (cached in data/bench/). Beyond 70,000 the vectors are synthetic, drawn to match
the real ones: a real vector's k-means cluster (256 clusters) is picked, and the new vector is
that centroid plus Gaussian noise in the top-256 principal directions of the cluster residuals,
with their variances, then ReLU (fc7 is non-negative) and L2 normalisation. Random Gaussian
vectors would say nothing about recall. Ground truth is exact cosine search, computed in
chunks so that 10^6 x 4096 floats (16 GB) never sit in memory at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import machine, percentile, table
from index.index import normalise
from index.quality import recall_at_k

CACHE = Path("data/bench")
DIM = 4096


def real_fc7(weights: Path) -> tuple[np.ndarray, np.ndarray]:
    """fc7 of Fashion-MNIST train + test (70,000 x 4096, L2-normalised), and labels; cached."""
    from model.predictor import Predictor

    predictor = Predictor(weights)
    path = CACHE / f"fc7-fmnist-{predictor.weights_hash[:12]}.npz"
    if path.is_file():
        z = np.load(path)
        return z["x"], z["y"]
    import torch

    from training.data import fashion_mnist

    xs, ys = [], []
    for split in ("train", "test"):
        src = fashion_mnist(split=split)
        for start in range(0, len(src), 500):
            idx = range(start, min(len(src), start + 500))
            batch = torch.stack([predictor._transform(src.pil_image(i)) for i in idx])
            _, fc7 = predictor.forward(batch)
            xs.append(normalise(fc7.numpy()))
            ys.append(src.labels[start : start + 500].numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return x, y


class Synth:
    """Draws vectors that match the real ones' cluster structure (see the module docstring)."""

    def __init__(self, real: np.ndarray, clusters: int = 256, rank: int = 256, seed: int = 0) -> None:
        km = faiss.Kmeans(DIM, clusters, niter=10, seed=seed, spherical=True, verbose=False)
        km.train(real)
        self.centroids = km.centroids
        _, assign = km.index.search(real, 1)
        resid = real - self.centroids[assign[:, 0]]
        sample = resid[np.random.default_rng(seed).choice(len(resid), min(len(resid), 20000), replace=False)]
        _, s, vt = np.linalg.svd(sample - sample.mean(0), full_matrices=False)
        self.basis = vt[:rank].astype(np.float32)  # (rank, DIM)
        self.scale = (s[:rank] / np.sqrt(len(sample))).astype(np.float32)
        self.weights = np.bincount(assign[:, 0], minlength=clusters) / len(real)

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.choice(len(self.centroids), size=n, p=self.weights)
        z = rng.standard_normal((n, len(self.scale)), dtype=np.float32) * self.scale
        return normalise(np.maximum(self.centroids[c] + z @ self.basis, 0))


def collection(real: np.ndarray, synth: Synth | None, n: int, chunk: int = 50_000):
    """Yield the n-vector collection in chunks: the real vectors first, then synthetic ones."""
    yield real[: min(n, len(real))]
    done, seed = min(n, len(real)), 1
    while done < n:
        m = min(chunk, n - done)
        assert synth is not None
        yield synth.draw(m, seed)
        done, seed = done + m, seed + 1


def exact_topk(queries: np.ndarray, chunks, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for x in chunks:
        s = queries @ x.T
        i = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, i, 1)], 1)
        cand_i = np.concatenate([best_i, i + offset], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        offset += len(x)
    return best_i


def measure(index: faiss.Index, queries: np.ndarray, k: int = 10, single: int = 200) -> dict[str, float]:
    faiss.omp_set_num_threads(1)
    lat = []
    for q in queries[:single]:
        t = time.perf_counter()
        index.search(q[None], k)
        lat.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(0)
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    batch_s = time.perf_counter() - t
    return {"p50_ms": 1e3 * percentile(lat, 50), "p99_ms": 1e3 * percentile(lat, 99), "batch_qps": len(queries) / batch_s, "ids": ids}


def bench_size(
    n: int, real: np.ndarray, synth: Synth | None, factories: list[str], queries: np.ndarray, exact_limit: int
) -> list[dict[str, Any]]:
    rows = []
    truth = exact_topk(queries, collection(real, synth, n))
    train = np.concatenate(list(collection(real, synth, min(n, 100_000))))[:: max(1, min(n, 100_000) // 50_000)]
    for factory in factories:
        if factory == "Flat" and n > exact_limit:
            continue
        t0 = time.perf_counter()
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(train)
        for x in collection(real, synth, n):
            index.add(x)
        build_s = time.perf_counter() - t0
        if "IVF" in factory:
            faiss.extract_index_ivf(index).nprobe = 32
        if "HNSW" in factory:
            faiss.downcast_index(index).hnsw.efSearch = 128
        m = measure(index, queries)
        mem = len(faiss.serialize_index(index))
        rows.append(
            {
                "vectors": n,
                "factory": factory,
                "p50_ms": m["p50_ms"],
                "p99_ms": m["p99_ms"],
                "batch_qps": m["batch_qps"],
                "bytes_per_vector": mem / n,
                "index_MiB": mem / 2**20,
                "recall@10": recall_at_k(truth, m["ids"]),
                "build_s": build_s,
            }
        )
        del index
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=Path("data/weights/fashion-mnist.safetensors"))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--factories", default="Flat;PCA256,SQ8;PCA256,IVF1024,SQ8;PCA256,IVF4096,SQ8", help="';'-separated factory strings")
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args(argv if argv is not None else [])
    factories = args.factories.split(";")
    real, _labels = real_fc7(args.weights)
    rng = np.random.default_rng(0)
    queries = real[rng.choice(len(real), args.queries, replace=False)]
    sizes = [int(s) for s in args.sizes.split(",")]
    synth = Synth(real) if max(sizes) > len(real) else None
    rows: list[dict[str, Any]] = []
    for n in sizes:
        rows += bench_size(n, real, synth, factories, queries, exact_limit=200_000)
    print("# Search, 4096-d fc7 cosine, k=10 (single-query latency on 1 thread; batch throughput on all cores)")
    print(table(rows, ["vectors", "factory", "p50_ms", "p99_ms", "batch_qps", "bytes_per_vector", "index_MiB", "recall@10", "build_s"]))
    return {"machine": machine(), "search": rows}


if __name__ == "__main__":
    result = main(sys.argv[1:])
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2, default=str))
