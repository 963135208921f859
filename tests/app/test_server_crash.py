"""kill -9 of a real server while clients add images (RELIABILITY.md 18): after every restart each
add that was answered 201 is there, with its image, and index, store and files agree."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest

from app.testing import start_server
from index.index import ImageIndex
from model.weights import read_meta
from tests.app.conftest import API_KEY, AddingClients


@pytest.mark.slow
def test_sigkill_of_the_server_loses_no_answered_add(tmp_path: Path, small_weights: Path) -> None:
    index_dir = tmp_path / "index"
    env = {
        "ALEXNET_WEIGHTS": str(small_weights),
        "ALEXNET_INDEX_DIR": str(index_dir),
        "ALEXNET_API_KEY": API_KEY,
        "ALEXNET_SNAPSHOT_EVERY": "5",  # snapshots are written often: kills land inside them too
        "ALEXNET_TORCH_THREADS": "1",
    }
    rng = random.Random(0)
    clients = AddingClients()
    answered = clients.acked  # id -> seed of the image
    rounds = 5
    for round_ in range(rounds):
        proc, base = start_server(env, log=tmp_path / "server.log")
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        with httpx.Client(base_url=base, timeout=10) as c:  # everything answered before is there
            for image_id in answered:
                assert c.get(f"/images/{image_id}").status_code == 200, f"answered add {image_id} lost before round {round_}"
        clients.start([base] * 3)
        before = len(answered)
        deadline = time.monotonic() + 60
        while len(answered) < before + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.random() * 0.5)
        proc.kill()  # SIGKILL, somewhere inside an add, a commit or a snapshot
        proc.wait()
        clients.stop()
        assert len(answered) >= before + 5, f"the clients did not get going in round {round_}"
    weights_hash = read_meta(small_weights).content_hash
    with ImageIndex(index_dir, weights_hash=weights_hash) as idx:
        assert idx.check() == []
        for image_id, seed in answered.items():
            rec = idx.get(image_id)
            assert rec is not None and rec.source == f"upload:{seed}.png", f"answered add {image_id} lost"
            assert (index_dir / rec.file).is_file()
        assert len({p.name for p in (index_dir / "images").rglob("*") if p.is_file()}) == len(idx)
    assert len(answered) >= rounds * 5
