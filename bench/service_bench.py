"""Service: requests/s and p50/p99 latency of /classify and /similar at several concurrencies,
with and without batching, against a real server on 127.0.0.1, beside the raw model throughput.

    python -m bench.service_bench [--seconds 15] [--concurrency 1,4,16] [--crop 224]

The server runs the full paper architecture (1000 classes, 224x224; random weights: speed does
not depend on their values) with an index of 1,000 stored images. "no batching" is the same
server with ALEXNET_MAX_BATCH=1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from bench.common import machine, median, percentile, table, time_call
from model.alexnet import alexnet
from model.preprocess import Preset
from model.weights import WeightsMeta, save_weights


def jpeg(seed: int, size: int = 320) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_full_weights(path: Path, crop: int) -> None:
    torch.manual_seed(0)
    meta = WeightsMeta(
        architecture="alexnet-2tower",
        class_names=tuple(f"class-{i}" for i in range(1000)),
        preset=Preset.for_crop(crop),
        recipe={"name": "bench-random"},
    )
    save_weights(alexnet(num_classes=1000, bias_init=0.1), meta, path)


def multipart_request(route: str, image: bytes, host: str, api_key: str | None = None) -> bytes:
    """One complete keep-alive HTTP/1.1 POST with the image as the multipart field "file"."""
    boundary = "benchboundary7f3a"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    auth = f"X-API-Key: {api_key}\r\n" if api_key else ""
    head = (
        f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """Send one request, read its answer: (status, whether the server keeps the connection open)."""
    writer.write(request)
    await writer.drain()
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("closed before answering")
    status, length, keep, chunked = int(line.split()[1]), 0, True, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status, keep
    while size := int((await reader.readline()).split(b";")[0], 16):  # (some servers stream their answers)
        await reader.readexactly(size + 2)
    while await reader.readline() not in (b"\r\n", b""):  # trailers
        pass
    return status, keep


async def load(
    base: str, route: str, concurrency: int, seconds: float, images: list[bytes], api_key: str | None = None,
    requests: list[bytes] | None = None,
) -> dict[str, float]:  # fmt: skip
    """``concurrency`` keep-alive connections, each sending one request after another until time is up.

    The requests are built once (or given whole: ``requests``, for servers that take another form), and the
    client speaks HTTP/1.1 on raw sockets (like wrk), so that the load generator takes little of the two cores
    the server runs on."""
    host, port = httpx.URL(base).host, httpx.URL(base).port
    if requests is None:
        requests = [multipart_request(route, im, f"{host}:{port}", api_key) for im in images]
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            j = i
            while time.monotonic() < stop:
                t = time.perf_counter()
                status, _ = await exchange(reader, writer, requests[j % len(requests)])
                lat.append(time.perf_counter() - t)
                errors += not 200 <= status < 300  # (POST /images: 201 new, 200 stored already)
                j += concurrency
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.monotonic() - start
    return {
        "requests": len(lat),
        "errors": errors,
        "rps": len(lat) / wall,
        "p50_ms": 1e3 * percentile(lat, 50),
        "p99_ms": 1e3 * percentile(lat, 99),
    }


def _delta(before: str, after: str, name: str) -> float:
    """The change of one Prometheus sample between two /metrics texts."""

    def value(text: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value(after) - value(before)


def raw_model_throughput(weights: Path, crop: int, batch: int) -> float:
    """Images/s of the server's own forward (Predictor.forward: channels_last, fp32), without HTTP or decoding,
    with the server's allocator setting (freed memory retained, ALEXNET_RETAIN_FREED_MEMORY)."""
    from model.predictor import Predictor
    from model.runtime import retain_freed_memory

    retain_freed_memory()

    predictor = Predictor(weights)
    x = torch.randn(batch, 3, crop, crop)
    return batch / median(time_call(lambda: predictor.forward(x)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from app.testing import running_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--routes", default="/classify,/similar")
    ap.add_argument("--crop", type=int, default=224)
    args = ap.parse_args(argv if argv is not None else [])
    levels = [int(c) for c in args.concurrency.split(",")]
    images = [jpeg(i) for i in range(64)]
    rows: list[dict[str, Any]] = []
    raw: dict[int, list[float]] = {1: [], 16: []}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "full.safetensors"
        make_full_weights(weights, args.crop)
        for batching in (True, False):
            env = {
                "ALEXNET_WEIGHTS": str(weights),
                "ALEXNET_INDEX_DIR": str(Path(tmp) / "index"),
                "ALEXNET_API_KEY": "bench",
                "ALEXNET_MAX_BATCH": "16" if batching else "1",
            }
            with running_server(env) as base:
                if batching:  # the first server fills the index; the second reuses it
                    for start in range(0, 1000, 16):
                        files = [("files", (f"{i}.jpg", jpeg(10_000 + i, 64), "image/jpeg")) for i in range(start, min(1000, start + 16))]
                        httpx.post(f"{base}/images", files=files, headers={"X-API-Key": "bench"}, timeout=120).raise_for_status()
                for route in args.routes.split(","):
                    for c in levels:
                        asyncio.run(load(base, route, c, 2.0, images))  # warm-up
                        before = httpx.get(f"{base}/metrics").text
                        r = asyncio.run(load(base, route, c, args.seconds, images))
                        after = httpx.get(f"{base}/metrics").text
                        batches = _delta(before, after, "alexnet_batch_size_count")
                        images_run = _delta(before, after, "alexnet_batch_size_sum")
                        busy = _delta(before, after, "alexnet_forward_seconds_sum")
                        r |= {"mean_batch": images_run / max(batches, 1), "forward_busy": busy / args.seconds}
                        r["server_forward_img_s"] = images_run / busy if busy else 0.0
                        rows.append({"route": route, "batching": "on" if batching else "off", "concurrency": c, **r})
            # the machine is shared and its speed drifts: the raw forward is measured beside each server run
            raw[16].append(raw_model_throughput(weights, args.crop, 16))
            raw[1].append(raw_model_throughput(weights, args.crop, 1))
    raw1, raw16 = median(raw[1]), median(raw[16])
    for r in rows:
        r["vs_raw_model"] = r["rps"] / (raw16 if r["batching"] == "on" and r["concurrency"] >= 16 else raw1)
    print(f"# Service on 127.0.0.1, full model at {args.crop}px; raw model: {raw1:.1f} img/s at batch 1, {raw16:.1f} img/s at batch 16")
    print(
        table(
            rows,
            [
                "route",
                "batching",
                "concurrency",
                "requests",
                "errors",
                "rps",
                "p50_ms",
                "p99_ms",
                "mean_batch",
                "forward_busy",
                "vs_raw_model",
            ],
        )
    )
    return {"machine": machine(), "raw_img_s": {"1": raw1, "16": raw16}, "service": rows}


if __name__ == "__main__":
    result = main(sys.argv[1:])
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
