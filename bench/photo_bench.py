"""The service with photo-sized uploads, full decoding against reduced decoding, and open-loop overload.

    python -m bench.photo_bench [--seconds 4] [--overload-seconds 60]     (needs the `bench` extra)

Part 1. One server decoding JPEGs whole (ALEXNET_REDUCED_DECODING=false) and one decoding them at the
smallest DCT scale the model and the stored copy need (the default), same run: /classify, /similar and
POST /images with JPEGs of 0.3, 2 and 12 MP (scikit-image's photographs, bench/decode_bench.py), at 1
and 16 clients on keep-alive connections, each sending its next request when the last is answered.
The model is the default model's shape (64 px crops of a 68 px resize, 10 classes; random weights:
speed does not depend on their values).

Part 2. Open loop: requests arrive at a fixed rate, twice what the reduced-decoding server answered at
16 clients (its capacity), whatever the server does, for ``--overload-seconds``. Each request's latency
counts from when it was due, so a client kept waiting to send is counted too. Reported: the statuses
(only 200 and 503 allowed), the accepted requests' p99 against their p99 at capacity (the 16-client
run), and the server's resident memory over the run (/metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.common import machine, percentile, table
from bench.decode_bench import encode, photographs, resampled
from bench.service_bench import exchange, load, multipart_request
from model.alexnet import alexnet
from model.preprocess import Preset
from model.weights import WeightsMeta, save_weights

SIZES = (0.3, 2, 12)
MAX_CONNECTIONS = 4000  # the open-loop client's own bound (file descriptors)
KEEPALIVE_EXPIRY = 4.0  # s: drop idle connections before uvicorn's 5 s keep-alive timeout closes them


def make_default_shaped_weights(path: Path) -> None:
    torch.manual_seed(0)
    meta = WeightsMeta(
        architecture="alexnet-2tower",
        class_names=tuple(f"class-{i}" for i in range(10)),
        preset=Preset(crop_size=64, resize_size=68),
        recipe={"name": "bench-random"},
    )
    save_weights(alexnet(num_classes=10, bias_init=0.1), meta, path)


def _rss(base: str) -> float | None:
    """The server's resident memory (MiB) from /metrics; None when it does not answer within 10 s."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    m = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    return float(m.group(1)) / 2**20 if m else None


def _raise_open_files_limit() -> None:
    """Connections pile up under overload: let this process and the server it starts hold as many as allowed."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_loop(
    base: str, route: str, rate: float, seconds: float, images: list[bytes], *,
    requests: list[bytes] | None = None, memory: Callable[[], float | None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Requests due every 1/``rate`` s on a pool of keep-alive connections (a new one when all are busy).
    ``requests``: whole requests for a server that takes another form; ``memory``: the server's resident MiB
    (default: its /metrics).

    Like httpx's pool (``keepalive_expiry``, 5 s), the client does not reuse a connection that has sat idle
    longer than the server keeps one open (uvicorn's ``timeout_keep_alive``, 5 s): reusing it would send a
    request into a socket the server is closing, which no server can answer."""
    host, port = httpx.URL(base).host, httpx.URL(base).port
    if requests is None:
        requests = [multipart_request(route, im, f"{host}:{port}") for im in images]
    rss_of = memory or (lambda: _rss(base))
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    statuses: Counter[int | str] = Counter()
    accepted: list[float] = []
    rss: list[float | None] = []
    start = time.perf_counter()

    opened = expired = 0

    def reusable() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        nonlocal opened, expired
        while idle:
            reader, writer, since = idle.pop()
            if time.perf_counter() - since < KEEPALIVE_EXPIRY and not reader.at_eof():
                return reader, writer
            writer.close()
            opened -= 1
            expired += 1
        return None

    async def one(i: int, due: float) -> None:
        nonlocal opened
        conn = reusable()
        if conn is None:
            if opened >= MAX_CONNECTIONS:
                statuses["not sent: client at its connection limit"] += 1
                return
            opened += 1
            conn = await asyncio.open_connection(host, port)
        try:
            status, keep = await exchange(*conn, requests[i % len(requests)])
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            statuses[type(e).__name__] += 1
            conn[1].close()
            opened -= 1
            return
        statuses[status] += 1
        if status == 200:
            accepted.append(time.perf_counter() - due)
        if keep:
            idle.append((*conn, time.perf_counter()))
        else:
            conn[1].close()
            opened -= 1

    async def sample_memory() -> None:
        while time.perf_counter() - start < seconds:
            rss.append(await asyncio.to_thread(rss_of))
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(sample_memory())]
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for _, w, _ in idle:
        w.close()
    memory = [m for m in rss if m is not None]
    tenth = max(1, len(memory) // 10)
    return {
        "rate": rate,
        "sent": n,
        "connections": opened,
        "expired_idle": expired,
        "statuses": dict(statuses),
        "accepted_rps": len(accepted) / seconds,
        "accepted_p50_ms": 1e3 * percentile(accepted, 50) if accepted else 0.0,
        "accepted_p99_ms": 1e3 * percentile(accepted, 99) if accepted else 0.0,
        "rss_first_mb": sum(memory[:tenth]) / tenth if memory else 0.0,
        "rss_last_mb": sum(memory[-tenth:]) / tenth if memory else 0.0,
        "rss_max_mb": max(memory) if memory else 0.0,
        "metrics_unanswered": rss.count(None),
    }


def _print_rows(rows: list[dict[str, Any]]) -> None:
    print("# Service with photo-sized JPEG uploads: full vs reduced decoding (default model's shape, 64 px)")
    print(table(rows, ["decoding", "route", "megapixels", "clients", "requests", "errors", "rps", "p50_ms", "p99_ms"]), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from app.testing import running_server

    ap = argparse.ArgumentParser(prog="python -m bench.photo_bench")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured cell")
    ap.add_argument("--overload-seconds", type=float, default=60)
    ap.add_argument("--overload-route", default="/classify")
    ap.add_argument("--overload-megapixels", type=float, default=2)
    ap.add_argument("--overload-only", action="store_true", help="measure capacity at 16 clients, then only the open loop")
    args = ap.parse_args(argv if argv is not None else [])
    _raise_open_files_limit()
    photos = list(photographs().values())[:8]
    jpegs = {mp: [encode(resampled(im, mp), "JPEG") for im in photos] for mp in SIZES}
    rows: list[dict[str, Any]] = []
    overload: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "default-shaped.safetensors"
        make_default_shaped_weights(weights)
        for reduced in (True,) if args.overload_only else (False, True):
            env = {
                "ALEXNET_WEIGHTS": str(weights),
                "ALEXNET_INDEX_DIR": str(Path(tmp) / f"index-{reduced}"),
                "ALEXNET_API_KEY": "bench",
                "ALEXNET_REDUCED_DECODING": str(reduced).lower(),
                "ALEXNET_LOG_LEVEL": "warning",
            }
            with running_server(env) as base:
                for route in ("/classify", "/similar", "/images"):
                    for mp in SIZES:
                        for c in (1, 16):
                            if args.overload_only and (route, mp, c) != (args.overload_route, args.overload_megapixels, 16):
                                continue
                            asyncio.run(load(base, route, c, args.warmup, jpegs[mp], "bench"))
                            r = asyncio.run(load(base, route, c, args.seconds, jpegs[mp], "bench"))
                            rows.append({"decoding": "reduced" if reduced else "full", "route": route, "megapixels": mp, "clients": c, **r})
                if reduced:
                    _print_rows(rows)
                if reduced and args.overload_seconds > 0:
                    mp, route = args.overload_megapixels, args.overload_route
                    at_capacity = next(
                        r for r in rows if (r["decoding"], r["route"], r["megapixels"], r["clients"]) == ("reduced", route, mp, 16)
                    )
                    overload = asyncio.run(open_loop(base, route, 2 * at_capacity["rps"], args.overload_seconds, jpegs[mp]))
                    overload |= {
                        "route": route,
                        "megapixels": mp,
                        "capacity_rps": at_capacity["rps"],
                        "capacity_p99_ms": at_capacity["p99_ms"],
                        "p99_vs_capacity": overload["accepted_p99_ms"] / max(at_capacity["p99_ms"], 1e-9),
                    }
    ratios = []
    for route in () if args.overload_only else ("/classify", "/similar", "/images"):
        cell = {(r["decoding"], r["megapixels"], r["clients"]): r for r in rows if r["route"] == route}
        ratios.append(
            {
                "route": route,
                "p50_12mp_vs_0.3mp_1_client": cell["reduced", 12, 1]["p50_ms"] / cell["reduced", 0.3, 1]["p50_ms"],
                "same_with_full_decoding": cell["full", 12, 1]["p50_ms"] / cell["full", 0.3, 1]["p50_ms"],
                "rps_12mp_16_clients_reduced_vs_full": cell["reduced", 12, 16]["rps"] / cell["full", 12, 16]["rps"],
            }
        )
    print("\n# Targets: 12 MP p50 at 1 client vs 0.3 MP (<= 1.8x); 12 MP req/s at 16 clients, reduced vs full (>= 3x)")
    if ratios:
        print(table(ratios, list(ratios[0])))
    if overload:
        print(f"\n# Open loop at 2x capacity for {args.overload_seconds:.0f} s ({overload['route']}, {overload['megapixels']} MP JPEGs)")
        print(table([overload], [k for k in overload if k not in ("route", "megapixels")]))
    return {"machine": machine(), "service": rows, "ratios": ratios, "overload": overload}


if __name__ == "__main__":
    main(sys.argv[1:])
