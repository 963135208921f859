"""Filtered listings and searches at 10^5 stored images, with the store's indexes on label and source against the
same store without them, in the same run (a ratio, since these machines are shared).

    python -m bench filter            (also part of `python -m bench`; about a minute)
    python -m bench.filter_bench [--images 100000] [--store sqlite|postgres|both]

Vectors are 4096-d, as the service stores them, so that a full scan of the images table reads what it would in
production (SQLite keeps each 16 KiB vector in the row). Labels: 100 of them, evenly spread (1% each); the filtered search is
``ImageIndex.search`` with one label, the listing ``GET /images?label=`` and ``?source=`` as the routes call them;
every 10,000th image has the label ``rare`` and a source under ``rare/`` (a filter that matches few rows is where
an index matters: without one, a listing reads rows in id order until it has its page).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, median, table

DIM = 4096


def _fill(store: Any, n: int, batch: int = 2000) -> None:
    from index.store import NewImage

    rng = np.random.default_rng(0)
    for start in range(0, n, batch):
        vectors = rng.standard_normal((min(batch, n - start), DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = []
        for i, v in enumerate(vectors, start):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            rare = i % 10_000 == 0  # 10 images of 10^5: what a filter for one user's or one batch's images finds
            source, label = (f"rare/{i}.png", "rare") if rare else (f"dir{i % 50}/{i}.png", f"label-{i % 100}")
            items.append(NewImage(v, sha, b"x", ".png", 8, 8, source=source, label=label))
        store.add_many(items)


def _time(fn: Any, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times) * 1000


def _measure(store: Any, index: Any) -> dict[str, float]:
    query = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    return {
        "list by a 1% label": _time(lambda: store.list_records(after=0, limit=50, labels=["label-7"])),
        "list by a rare label": _time(lambda: store.list_records(after=0, limit=50, labels=["rare"])),
        "list by a rare source prefix": _time(lambda: store.list_records(after=0, limit=50, source_prefix="rare/")),
        "search with a 1% label": _time(lambda: index.search(query, 10, labels=["label-7"])),
        "search with a rare label": _time(lambda: index.search(query, 10, labels=["rare"])),
    }


def _drop_indexes(store: Any, pg: bool) -> None:
    names = ("alexnet_images_label", "alexnet_images_source") if pg else ("images_label", "images_source")
    if pg:
        with store._conn("drop") as conn:
            for name in names:
                conn.execute(f"DROP INDEX {name}")
            conn.execute("ANALYZE alexnet_images")
    else:
        with store._transaction("drop") as tx:
            for name in names:
                tx.db.execute(f"DROP INDEX {name}")
        store._reader.execute("ANALYZE")


def run(kind: str, n: int, workdir: Path) -> dict[str, Any]:
    from app.testing import PostgresServer
    from index.index import ImageIndex

    server = PostgresServer() if kind == "postgres" else None
    try:
        url = server.create_database("filterbench") if server else None
        directory = workdir / kind
        with ImageIndex(directory, weights_hash="f" * 64, dim=DIM, store_url=url, factory="flat") as index:
            store = index.store
            t = time.perf_counter()
            _fill(store, n)
            index.sync()
            fill_s = time.perf_counter() - t
            if server is None:
                store._reader.execute("ANALYZE")
            with_indexes = _measure(store, index)
            _drop_indexes(store, server is not None)
            without = _measure(store, index)
        return {"store": kind, "images": n, "fill_s": round(fill_s, 1), "with": with_indexes, "without": without}
    finally:
        if server:
            server.close()
        shutil.rmtree(workdir / kind, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    results = []
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp:
        for kind in kinds:
            results.append(run(kind, args.images, Path(tmp)))
    rows = [
        {"store": r["store"], "images": r["images"], "query": what, "indexed ms": w, "no index ms": r["without"][what],
         "ratio": f"{r['without'][what] / w:.0f}x"}
        for r in results
        for what, w in r["with"].items()
    ]  # fmt: skip
    print(table(rows, ["store", "images", "query", "indexed ms", "no index ms", "ratio"]))
    return {"machine": machine(), "results": results}


if __name__ == "__main__":
    main()
