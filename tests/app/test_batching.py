"""Dynamic batching: concurrent requests share forward passes and get the one-by-one answers."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.batching import Batcher
from app.main import create_app
from tests.app.conftest import image_bytes, make_settings, upload


def test_concurrent_requests_are_batched_with_identical_answers(tmp_path: Path, small_weights: Path) -> None:
    n = 12
    with TestClient(create_app(make_settings(tmp_path, small_weights, batch_wait_ms=200.0, max_batch=16))) as client:
        alone = []
        for i in range(n):
            r = client.post("/classify?k=4", files=upload(f"{i}.png", image_bytes(i)))
            alone.append(r.json()["results"][0]["predictions"])
        batcher = client.app.state.service.batcher
        before = batcher.stats.batches
        with ThreadPoolExecutor(n) as pool:
            together = list(pool.map(lambda i: client.post("/classify?k=4", files=upload(f"{i}.png", image_bytes(i))), range(n)))
        passes = batcher.stats.batches - before
    assert all(r.status_code == 200 for r in together)
    assert passes < n, f"{n} concurrent requests took {passes} forward passes"
    for a, t in zip(alone, together, strict=True):
        got = t.json()["results"][0]["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in a]
        assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in a], abs=1e-5)


def _echo(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.flatten(1)[:, :2].clone(), batch.flatten(1).clone()


def test_the_batcher_waits_for_announced_requests_and_not_for_others() -> None:
    async def scenario(announce: bool) -> list[int]:
        sizes: list[int] = []
        b = Batcher(_echo, max_batch=8, max_wait_s=0.002, max_wait_busy_s=0.5, on_batch=lambda n, s: sizes.append(n))
        b.start()

        async def late_request() -> None:  # still "decoding" for 100 ms after the first one is queued
            if announce:
                async with b.announce():
                    await asyncio.sleep(0.1)
                    await b.submit(torch.ones(1, 3, 2, 2))
            else:
                await asyncio.sleep(0.1)
                await b.submit(torch.ones(1, 3, 2, 2))

        await asyncio.gather(b.submit(torch.zeros(1, 3, 2, 2)), late_request())
        await b.stop()
        return sizes

    assert asyncio.run(scenario(announce=True)) == [2]  # one pass: it waited for the announced one
    assert asyncio.run(scenario(announce=False)) == [1, 1]  # 2 ms, then on without it


def test_a_request_that_fails_to_decode_does_not_hold_the_batch() -> None:
    async def scenario() -> tuple[list[int], float]:
        sizes: list[int] = []
        b = Batcher(_echo, max_batch=8, max_wait_s=0.002, max_wait_busy_s=5.0, on_batch=lambda n, s: sizes.append(n))
        b.start()

        async def failing() -> None:
            try:
                async with b.announce():
                    await asyncio.sleep(0.05)
                    raise ValueError("not an image")
            except ValueError:
                pass

        start = time.perf_counter()
        await asyncio.gather(b.submit(torch.zeros(1, 3, 2, 2)), failing())
        took = time.perf_counter() - start
        await b.stop()
        return sizes, took

    sizes, took = asyncio.run(scenario())
    assert sizes == [1] and took < 1.0  # released when the announcement closed, not after 5 s


def test_exclusive_work_waits_for_the_running_forward() -> None:
    events: list[str] = []

    def slow_forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        events.append("forward start")
        time.sleep(0.2)
        events.append("forward end")
        return _echo(batch)

    async def scenario() -> None:
        b = Batcher(slow_forward, max_batch=1, max_wait_s=0.0, exclusive=True)
        b.start()
        job = asyncio.ensure_future(b.submit(torch.zeros(1, 3, 2, 2)))
        while "forward start" not in events:
            await asyncio.sleep(0.005)
        await b.run_between_forwards(events.append, "decode")
        await job
        await b.stop()

    asyncio.run(scenario())
    assert events == ["forward start", "forward end", "decode"]
