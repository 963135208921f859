"""Search: latency, throughput, memory and recall@10 of exact and compressed FAISS indexes.

    python -m bench.search_bench [--weights W] [--sizes 100000,1000000] [--factories 'Flat;auto'] [--rerank 100]

Vectors with real structure: the fc7 vectors of the 70,000 Fashion-MNIST images, made by the
weights file (cached in data/bench/). Beyond 70,000 the vectors are synthetic, drawn to match
the real ones: a real vector's k-means cluster (256 clusters) is picked, and the new vector is
that centroid plus Gaussian noise in the top-256 principal directions of the cluster residuals,
with their variances, then ReLU (fc7 is non-negative) and L2 normalisation. Random Gaussian
vectors would say nothing about recall. The collection is written once to a float32 file in
data/bench/ (16 GB for 10^6; reused by later runs) and read through a memory map: ground truth
(exact cosine, in chunks) and the exact re-scoring of candidates read it like the service reads
its SQLite store. Only the FAISS index counts as memory.

The compressed index is built and searched the way ``ImageIndex`` does it: L2 distance (cosine
order on unit vectors, unchanged by PCA's centring), then ``rerank`` candidates re-scored
exactly with the stored vectors (see index/index.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import machine, percentile, table
from index.factory import auto_factory, base_index, default_nprobe, rescore, train_index
from index.quality import recall_at_k
from model.vectors import l2_normalise as normalise

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

    from model.datasets import fashion_mnist

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
        rng = np.random.default_rng(seed)
        km = faiss.Kmeans(DIM, clusters, niter=10, seed=seed, spherical=True, verbose=False)
        km.train(real[rng.choice(len(real), min(len(real), 40 * clusters), replace=False)])
        self.centroids = km.centroids
        _, assign = km.index.search(real, 1)
        resid = real - self.centroids[assign[:, 0]]
        sample = resid[rng.choice(len(resid), min(len(resid), 20000), replace=False)]
        sample = sample - sample.mean(0)
        eigenvalues, vectors = np.linalg.eigh(sample.T @ sample / len(sample))
        top = np.argsort(eigenvalues)[::-1][:rank]
        self.basis = np.ascontiguousarray(vectors[:, top].T, dtype=np.float32)  # (rank, DIM)
        self.scale = np.sqrt(np.maximum(eigenvalues[top], 0)).astype(np.float32)
        self.weights = np.bincount(assign[:, 0], minlength=clusters) / len(real)

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.choice(len(self.centroids), size=n, p=self.weights)
        z = rng.standard_normal((n, len(self.scale)), dtype=np.float32) * self.scale
        return normalise(np.maximum(self.centroids[c] + z @ self.basis, 0))


def collection(real: np.ndarray, tag: str, n: int, synth: Synth | None, chunk: int = 50_000) -> np.ndarray:
    """The n-vector collection (the real vectors first, then synthetic ones) as a read-only memory map."""
    if n <= len(real):
        return real[:n]
    path = CACHE / f"vectors-{tag}-{n}.f32"
    if not path.is_file() or path.stat().st_size != n * DIM * 4:
        assert synth is not None
        tmp = path.with_suffix(".tmp")
        out = np.memmap(tmp, np.float32, "w+", shape=(n, DIM))
        out[: len(real)] = real
        done, seed = len(real), 1
        while done < n:
            m = min(chunk, n - done)
            out[done : done + m] = synth.draw(m, seed)
            done, seed = done + m, seed + 1
        out.flush()
        del out
        tmp.rename(path)
    return np.memmap(path, np.float32, "r", shape=(n, DIM))


def chunks(x: np.ndarray, size: int = 50_000):
    for a in range(0, len(x), size):
        yield np.ascontiguousarray(x[a : a + size])


def exact_topk(queries: np.ndarray, parts, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for x in parts:
        s = queries @ x.T
        i = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, i, 1)], 1)
        cand_i = np.concatenate([best_i, i + offset], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        offset += len(x)
    return best_i


class Searcher:
    """One FAISS index searched as ``ImageIndex`` searches it: candidates, then exact re-scoring."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray, rerank: int) -> None:
        self.index, self.vectors, self.rerank = index, vectors, rerank

    def search(self, queries: np.ndarray, k: int = 10) -> np.ndarray:
        _, cand = self.index.search(queries, max(k, self.rerank))
        if not self.rerank:
            return cand[:, :k]
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for j, (q, row) in enumerate(zip(queries, cand, strict=True)):
            ids = np.sort(row[row >= 0])
            best, _ = rescore(q, ids, self.vectors[ids])  # reads the candidates' stored vectors
            out[j, : min(k, len(best))] = best[:k]
        return out


def measure(searcher: Searcher, queries: np.ndarray, k: int = 10, single: int = 200) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)
    lat = []
    for q in queries[:single]:
        t = time.perf_counter()
        searcher.search(q[None], k)
        lat.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(0)
    t = time.perf_counter()
    ids = searcher.search(queries, k)
    batch_s = time.perf_counter() - t
    return {"p50_ms": 1e3 * percentile(lat, 50), "p99_ms": 1e3 * percentile(lat, 99), "batch_qps": len(queries) / batch_s, "ids": ids}


def bench_size(
    n: int, real: np.ndarray, tag: str, synth: Synth | None, factories: list[str], queries: np.ndarray, *, exact_limit: int, rerank: int
) -> list[dict[str, Any]]:
    rows = []
    t0 = time.perf_counter()
    x = collection(real, tag, n, synth)
    truth = exact_topk(queries, chunks(x))
    print(f"  {n} vectors ready, exact top-10 in {time.perf_counter() - t0:.0f} s", flush=True)
    for factory in factories:
        factory = auto_factory(n, 1) if factory == "auto" else factory
        if factory == "Flat" and n > exact_limit:
            continue
        t0 = time.perf_counter()
        index = base_index(DIM, factory)  # what ImageIndex builds: exact inner product, or L2
        if not index.is_trained:
            sample = np.sort(np.random.default_rng(0).choice(n, min(n, 50_000), replace=False))
            train_index(index, np.ascontiguousarray(x[sample]))
        for part in chunks(x):
            index.add(part)
        build_s = time.perf_counter() - t0
        if "IVF" in factory:
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = default_nprobe(ivf.nlist)
        if "HNSW" in factory:
            faiss.downcast_index(index).hnsw.efSearch = 128
        mem = len(faiss.serialize_index(index))
        for rr in [0] if factory == "Flat" else [0, rerank]:
            m = measure(Searcher(index, x, rr), queries)
            rows.append(
                {
                    "vectors": n,
                    "factory": factory,
                    "rerank": rr,
                    "p50_ms": m["p50_ms"],
                    "p99_ms": m["p99_ms"],
                    "batch_qps": m["batch_qps"],
                    "bytes_per_vector": mem / n,
                    "index_MiB": mem / 2**20,
                    "recall@10": recall_at_k(truth, m["ids"]),
                    "build_s": build_s,
                }
            )
            print(f"  {rows[-1]['factory']} rerank {rr}: recall@10 {rows[-1]['recall@10']:.3f}, p50 {m['p50_ms']:.2f} ms", flush=True)
        del index
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=Path("data/weights/fashion-mnist.safetensors"))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--factories", default="Flat;auto", help="';'-separated factory strings; auto: what ImageIndex picks for the size")
    ap.add_argument("--rerank", type=int, default=100, help="candidates re-scored exactly (ImageIndex's default)")
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args(argv if argv is not None else [])
    factories = args.factories.split(";")
    real, _labels = real_fc7(args.weights)
    rng = np.random.default_rng(0)
    queries = real[rng.choice(len(real), args.queries, replace=False)]
    sizes = [int(s) for s in args.sizes.split(",")]
    tag = f"{args.weights.stem}-{hashlib.sha256(real[:100].tobytes()).hexdigest()[:8]}"
    synth = None
    if any(n > len(real) and not (CACHE / f"vectors-{tag}-{n}.f32").is_file() for n in sizes):
        t0 = time.perf_counter()
        synth = Synth(real)
        print(f"  synthetic model fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        rows += bench_size(n, real, tag, synth, factories, queries, exact_limit=200_000, rerank=args.rerank)
    print("# Search, 4096-d fc7 cosine, k=10 (single-query latency on 1 thread; batch throughput on all cores)")
    print(
        table(
            rows, ["vectors", "factory", "rerank", "p50_ms", "p99_ms", "batch_qps", "bytes_per_vector", "index_MiB", "recall@10", "build_s"]
        )
    )
    return {"machine": machine(), "search": rows}


if __name__ == "__main__":
    result = main(sys.argv[1:])
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2, default=str))
