"""Dynamic batching: concurrent requests share forward passes and get the one-by-one answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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
