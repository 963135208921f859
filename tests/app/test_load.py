"""Sustained concurrent classify/similar/add/delete traffic against a real server (RELIABILITY.md 25).

A minute in CI; LOAD_SECONDS=600 for a longer soak. Zero errors, bounded memory growth, p99 reported.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.testing import image_bytes, running_server
from tests.app.conftest import API_KEY

pytestmark = pytest.mark.slow
SECONDS = float(os.environ.get("LOAD_SECONDS", "60"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_pid(port: str) -> int:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and port.encode() in cmd:
                return int(d.name)
    raise RuntimeError("server process not found")


async def traffic(base: str, seconds: float) -> dict[str, object]:
    lat: dict[str, list[float]] = {"classify": [], "similar": [], "add": [], "delete": []}
    errors: list[str] = []
    added: list[int] = []
    stop = time.monotonic() + seconds
    headers = {"X-API-Key": API_KEY}
    images = [image_bytes(i, size=(64, 48)) for i in range(32)]

    async def worker(kind: str, n: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            i = n
            while time.monotonic() < stop:
                t = time.perf_counter()
                img = {"file": (f"{i}.png", images[i % len(images)], "image/png")}
                if kind == "classify":
                    r = await c.post("/classify?k=3", files=img)
                elif kind == "similar":
                    r = await c.post("/similar?k=10", files=img)
                elif kind == "add":
                    r = await c.post("/images", files={"file": (f"{i}.png", image_bytes(100_000 + i), "image/png")}, headers=headers)
                    if r.status_code == 201:
                        added.append(r.json()["images"][0]["id"])
                else:
                    if not added:
                        await asyncio.sleep(0.05)
                        continue
                    r = await c.delete(f"/images/{added.pop(0)}", headers=headers)
                lat[kind].append(time.perf_counter() - t)
                if r.status_code >= 300:
                    errors.append(f"{kind}: {r.status_code} {r.text[:100]}")
                i += 8

    workers = [("classify", i) for i in range(6)] + [("similar", i) for i in range(6)] + [("add", 0), ("add", 1), ("delete", 0)]
    await asyncio.gather(*(worker(k, n) for k, n in workers))
    return {"latency": lat, "errors": errors}


def test_sustained_mixed_load_has_no_errors_and_bounded_memory(tmp_path: Path, small_weights: Path) -> None:
    env = {"ALEXNET_WEIGHTS": str(small_weights), "ALEXNET_INDEX_DIR": str(tmp_path / "index"), "ALEXNET_API_KEY": API_KEY}
    with running_server(env, log=tmp_path / "server.log") as base:
        pid = server_pid(base.rsplit(":", 1)[1])
        asyncio.run(traffic(base, 5))  # warm-up: allocator pools, first batches
        rss_start = rss_mib(pid)
        result = asyncio.run(traffic(base, SECONDS))
        rss_end = rss_mib(pid)
        ready = httpx.get(f"{base}/readyz").json()
    lat = result["latency"]
    assert isinstance(lat, dict)
    summary = {k: (len(v), 1e3 * float(np.percentile(v, 50)), 1e3 * float(np.percentile(v, 99))) for k, v in lat.items() if v}
    print(f"\nload {SECONDS:.0f} s: RSS {rss_start:.0f} -> {rss_end:.0f} MiB; requests, p50 ms, p99 ms: {summary}")
    assert result["errors"] == [], result["errors"][:5]
    assert sum(len(v) for v in lat.values()) > SECONDS  # it really ran
    assert rss_end - rss_start < 300, f"RSS grew from {rss_start:.0f} to {rss_end:.0f} MiB"
    assert ready["status"] == "ready"
