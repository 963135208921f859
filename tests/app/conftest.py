"""The app under test runs its real lifespan, on a small model made here and a fresh index."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.testing import image_bytes

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_settings(tmp_path: Path, weights: Path, **kw: object) -> Settings:
    values: dict[str, object] = dict(
        weights=weights,
        index_dir=tmp_path / "index",
        api_key=API_KEY,
        max_batch=8,
        batch_wait_ms=2.0,
        torch_threads=2,
        max_upload_bytes=2 * 1024 * 1024,
        max_pixels=4_000_000,
    )
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path, small_weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, small_weights))) as c:
        yield c


def upload(
    name: str = "a.png", data: bytes | None = None, ctype: str = "image/png", field: str = "file"
) -> dict[str, tuple[str, bytes, str]]:
    return {field: (name, image_bytes() if data is None else data, ctype)}


class AddingClients:
    """Threads that add distinct images to servers until stopped or their server is gone; ``acked``
    maps every id answered 201 to the seed of its image (for kill -9 tests)."""

    def __init__(self) -> None:
        self.acked: dict[int, int] = {}
        self.lock = threading.Lock()
        self._seeds = iter(range(1000, 10**7))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, bases: list[str]) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(b,), daemon=True) for b in bases]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, base: str) -> None:
        with httpx.Client(base_url=base, timeout=10) as c:
            while not self._stop.is_set():
                with self.lock:
                    seed = next(self._seeds)
                files = [("files", (f"{seed}.png", image_bytes(seed, size=(40, 40)), "image/png"))]
                try:
                    r = c.post("/images", files=files, headers=AUTH)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 201:
                    with self.lock:
                        self.acked[r.json()["images"][0]["id"]] = seed
