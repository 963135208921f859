"""Shared gallery: many service processes on one store, against real servers on 127.0.0.1.

    python -m bench gallery            (not part of the default `python -m bench`: it takes ~8 minutes)
    python -m bench.gallery_bench [--seconds 10] [--sizes 10000,100000]

1. Adds/s and /similar p50/p99 with 1, 2 and 3 replicas on one PostgreSQL, and with SQLite
   at 1 and 2 processes on one index directory (what `--workers 2` runs), 4 clients spread over
   the processes. The model is the tests' small one (64 px, random weights): the figures are
   the gallery's costs, not the network's.
2. Follow lag: from a 201 on one process to the image being in another process's FAISS index
   (its /readyz shows the change applied), PostgreSQL (LISTEN/NOTIFY) and SQLite (polling).
3. A new replica's start: time to open the index from the store alone (no snapshot) and from its
   own snapshot, at 10^4 and 10^5 stored 4096-d vectors, with the default `auto` factory.

PostgreSQL is a throwaway server started here (Debian's package), as in the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import machine, median, percentile, table

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def _image(seed: int) -> bytes:
    from app.testing import image_bytes

    return image_bytes(seed, size=(40, 40))


def _env(weights: Path, index_dir: Path, url: str | None) -> dict[str, str]:
    env = {
        "ALEXNET_WEIGHTS": str(weights),
        "ALEXNET_INDEX_DIR": str(index_dir),
        "ALEXNET_API_KEY": KEY,
        "ALEXNET_TORCH_THREADS": "1",
    }
    if url:
        env["ALEXNET_STORE_URL"] = url
    return env


def _run_clients(bases: list[str], clients: int, seconds: float, request: Callable[[httpx.Client, int], int]) -> tuple[int, list[float]]:
    """``clients`` threads, client i on server i % len(bases), for ``seconds``: (requests answered 2xx, latencies)."""
    latencies: list[float] = []
    failures: list[int] = []  # statuses other than 2xx
    lock = threading.Lock()
    counter = iter(range(10**9))
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=bases[i % len(bases)], timeout=60) as c:
            while time.monotonic() < stop:
                with lock:
                    n = next(counter)
                t = time.perf_counter()
                status = request(c, n)
                dt = time.perf_counter() - t
                with lock:
                    if status < 300:
                        latencies.append(dt)
                    else:
                        failures.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. status {failures[0]}")
    return len(latencies), latencies


def throughput(weights: Path, pg: Any, workdir: Path, seconds: float) -> list[dict[str, Any]]:
    from app.testing import start_server, stop_server

    rows = []
    configs = [("sqlite", 1), ("sqlite", 2), ("postgres", 1), ("postgres", 2), ("postgres", 3)]
    seed_base = iter(range(0, 10**9, 10**6))
    for store, processes in configs:
        url = pg.create_database(f"bench_{store}_{processes}_{int(time.time())}") if store == "postgres" else None
        shared = workdir / f"{store}-{processes}"
        procs, bases = [], []
        for i in range(processes):
            index_dir = shared if store == "sqlite" else shared / f"replica{i}"
            p, b = start_server(_env(weights, index_dir, url), log=workdir / "servers.log")
            procs.append(p)
            bases.append(b)
        try:
            first = next(seed_base)

            def add(c: httpx.Client, n: int, first: int = first) -> int:
                files = [("files", (f"{n}.png", _image(first + n), "image/png"))]
                return c.post("/images", files=files, headers={"X-API-Key": KEY}).status_code

            def similar(c: httpx.Client, n: int) -> int:
                return c.post("/similar?k=10", files={"file": ("q.png", _image(n), "image/png")}).status_code

            n_add, lat_add = _run_clients(bases, 4, seconds, add)
            n_sim, lat_sim = _run_clients(bases, 4, seconds, similar)
            rows.append(
                {
                    "store": store,
                    "processes": processes,
                    "adds/s": n_add / seconds,
                    "add p50 ms": 1000 * median(lat_add),
                    "add p99 ms": 1000 * percentile(lat_add, 99),
                    "similar/s": n_sim / seconds,
                    "similar p50 ms": 1000 * median(lat_sim),
                    "similar p99 ms": 1000 * percentile(lat_sim, 99),
                }
            )
        finally:
            for p in procs:
                stop_server(p)
    return rows


def follow_lag(weights: Path, pg: Any, workdir: Path, adds: int) -> list[dict[str, Any]]:
    """Sequential adds on process A; after each 201, poll process B's /readyz until it has applied that change."""
    from app.testing import start_server, stop_server

    rows = []
    pause = random.Random(0)
    for store in ("postgres", "sqlite"):
        url = pg.create_database(f"lag_{store}_{int(time.time())}") if store == "postgres" else None
        dirs = [workdir / f"lag-{store}"] * 2 if store == "sqlite" else [workdir / f"lag-{store}-{i}" for i in range(2)]
        (pa, a), (pb, b) = (start_server(_env(weights, d, url), log=workdir / "servers.log") for d in dirs)
        try:
            lags = []
            with httpx.Client(timeout=30) as c:
                seq = int(c.get(f"{b}/readyz").json()["index"]["applied_change"])
                for n in range(adds):
                    time.sleep(pause.uniform(0, 0.25))  # adds at random phases of the followers' polling
                    files = [("files", (f"{n}.png", _image(7_000_000 + n), "image/png"))]
                    r = c.post(f"{a}/images", files=files, headers={"X-API-Key": KEY})
                    t0 = time.perf_counter()
                    assert r.status_code == 201, r.text
                    seq += 1
                    while int(c.get(f"{b}/readyz").json()["index"]["applied_change"]) < seq:
                        if time.perf_counter() - t0 > 30:
                            raise RuntimeError(f"{store}: change {seq} not applied on the other process in 30 s")
                    lags.append(time.perf_counter() - t0)
            rows.append(
                {
                    "store": store,
                    "wake-up": "LISTEN/NOTIFY + 0.2 s poll" if store == "postgres" else "0.2 s poll",
                    "adds": adds,
                    "lag p50 ms": 1000 * median(lags),
                    "lag p99 ms": 1000 * percentile(lags, 99),
                    "lag max ms": 1000 * max(lags),
                }
            )
        finally:
            stop_server(pa)
            stop_server(pb)
    return rows


def replica_start(pg: Any, workdir: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """Open an ImageIndex on a PostgreSQL store of n synthetic unit vectors: from the store alone, then from its snapshot."""
    from app.testing import image_bytes
    from index.index import ImageIndex
    from index.store import NewImage, open_store

    rows = []
    tiny = image_bytes(0, (8, 8))
    for n in sizes:
        url = pg.create_database(f"start_{n}_{int(time.time())}")
        store = open_store(workdir, url)
        store.init_meta({"weights_hash": "b" * 64, "dim": "4096", "factory": "auto"})
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(64, 4096)).astype(np.float32)
        t = time.perf_counter()
        for start in range(0, n, 500):
            m = min(500, n - start)
            v = np.maximum(centres[rng.integers(0, 64, m)] + 0.5 * rng.normal(size=(m, 4096)).astype(np.float32), 0)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            shas = [hashlib.sha256(f"{n}-{start + j}".encode()).hexdigest() for j in range(m)]
            store.add_many([NewImage(vector=v[j], sha256=shas[j], encoded=tiny, suffix=".png", width=8, height=8) for j in range(m)])
        fill = time.perf_counter() - t
        store.close()
        directory = workdir / f"start-{n}"
        t = time.perf_counter()
        idx = ImageIndex(directory, weights_hash="b" * 64, store_url=url)
        assert idx.wait_rebuild()
        from_store = time.perf_counter() - t
        factory = idx.factory
        idx.save_snapshot()
        idx.close()
        t = time.perf_counter()
        idx = ImageIndex(directory, weights_hash="b" * 64, store_url=url)
        from_snapshot = time.perf_counter() - t
        assert len(idx) == n
        idx.close()
        rows.append(
            {
                "images": n,
                "factory": factory,
                "from store s": from_store,
                "from snapshot s": from_snapshot,
                "(filling PostgreSQL s)": fill,
            }
        )
        print(table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.gallery_bench")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lag-adds", type=int, default=100)
    parser.add_argument("--sizes", default="10000,100000")
    # (imported by `python -m bench gallery`: the defaults; run as a module: its own arguments)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:] if __name__ == "__main__" else [])
    from app.testing import PostgresServer, make_weights

    workdir = Path(tempfile.mkdtemp(prefix="alexnet-gallery-bench-"))
    pg = PostgresServer()
    try:
        weights = workdir / "small.safetensors"
        make_weights(weights)
        result: dict[str, Any] = {"machine": machine()}
        print("Adds and searches, 4 clients spread over the processes (small 64 px model):", flush=True)
        result["throughput"] = throughput(weights, pg, workdir, args.seconds)
        print(table(result["throughput"], list(result["throughput"][0])), flush=True)
        print("\nFollow lag: 201 on one process -> applied by another (target p99 <= 1 s):", flush=True)
        result["follow_lag"] = follow_lag(weights, pg, workdir, args.lag_adds)
        print(table(result["follow_lag"], list(result["follow_lag"][0])), flush=True)
        print("\nA new replica's index, from PostgreSQL alone and from its own snapshot:", flush=True)
        result["replica_start"] = replica_start(pg, workdir, [int(s) for s in args.sizes.split(",")])
        return result
    finally:
        pg.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
