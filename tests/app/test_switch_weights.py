"""New weights without downtime, with real processes: a client loop on the running servers while second weights are
staged, re-embedded over 2,000 images, compared and activated, then rolled back. On two replicas of one PostgreSQL,
and on the SQLite default with one process and with ``--workers 2``. Checks: no error; every answer's neighbours and
scores are those of the weights hash it names (against the store); the adds made during re-embedding are found under
the new weights; every server answers with the new hash within the bound; a replica started meanwhile serves the
active weights and sees the progress."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.testing import ROOT, SMALL_CLASSES, image_bytes, start_server, stop_server
from index.store import open_store
from model.weights import read_meta
from tests.app.conftest import AUTH
from tests.app.test_shared_gallery import env_for

pytestmark = pytest.mark.slow

GALLERY = 2000
SWITCH_BOUND_S = 30.0  # what the test waits at most for every server to answer with the new hash


def alexnet(*args: str, url: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALEXNET_TORCH_THREADS": "1", **({"ALEXNET_STORE_URL": url} if url else {})}
    r = subprocess.run([sys.executable, "-m", "model.console", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def eventually(cond: Callable[[], bool], what: str, timeout: float) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def serving(base: str) -> str:
    return str(httpx.get(f"{base}/readyz", timeout=10).json().get("model", {}).get("weights_hash", ""))


class ClientLoop(threading.Thread):
    """/similar/{id} and /classify against every server in turn, recording every answer."""

    def __init__(self, bases: list[str], ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.bases, self.ids = bases, ids
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random(0)
        with httpx.Client(timeout=30) as client:
            while not self.stopping.is_set():
                for base in self.bases:
                    query = rng.choice(self.ids)
                    r = client.get(f"{base}/similar/{query}?k=5")
                    if r.status_code != 200:
                        self.failures.append(f"GET /similar/{query}: {r.status_code} {r.text[:200]}")
                    else:
                        self.answers.append({"query": query, **r.json()})
                    files = {"file": ("q.png", image_bytes(rng.randrange(10**6), size=(40, 40)), "image/png")}
                    r = client.post(f"{base}/classify", files=files)
                    if r.status_code != 200:
                        self.failures.append(f"POST /classify: {r.status_code} {r.text[:200]}")


def check_answers(loop: ClientLoop, index_dir: Path, url: str | None) -> set[str]:
    """Every /similar answer: the query itself first, and every score the cosine of the stored vectors of the hash the
    answer names. The hashes seen."""
    store = open_store(index_dir, url, readonly=True)
    seen = set()
    try:
        for a in loop.answers:
            weights = a["model"]["weights_hash"]
            seen.add(weights)
            hits = [(h["id"], h["score"]) for h in a["results"]]
            ids = [a["query"], *[i for i, _ in hits]]
            found, vectors = store.vectors(ids, weights)
            by_id = dict(zip(found.tolist(), vectors, strict=True))
            assert a["query"] in by_id and all(i in by_id for i, _ in hits), f"an answer names {weights[:12]}, whose vectors lack its hits"
            q = by_id[a["query"]]
            for i, score in hits:
                assert abs(float(q @ by_id[i]) - score) < 1e-3, f"answer with {weights[:12]}: score of {i} is not that hash's cosine"
    finally:
        store.close()
    return seen


def make_gallery(folder: Path, n: int) -> None:
    for label in SMALL_CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / SMALL_CLASSES[i % 4] / f"{i}.png").write_bytes(image_bytes(i, size=(36, 36)))


@pytest.mark.parametrize("setup", ["sqlite", "sqlite-workers-2", "postgres-2-replicas"])
def test_switch_and_roll_back_under_load(tmp_path: Path, two_models: tuple[Path, Path], setup: str, request: pytest.FixtureRequest) -> None:
    w1, w2 = two_models
    h1, h2 = read_meta(w1).content_hash, read_meta(w2).content_hash
    url = str(request.getfixturevalue("pg_url")) if setup.startswith("postgres") else None
    dirs = [tmp_path / "index-a", tmp_path / "index-b"] if url else [tmp_path / "index"]
    make_gallery(tmp_path / "images", GALLERY)
    alexnet("index", "build", str(tmp_path / "images"), "--weights", str(w1), "--index", str(dirs[0]), "--labels-from-folders",
            *(["--store-url", url] if url else []), url=url)  # fmt: skip
    store_args = ["--index", str(dirs[0]), *(["--store-url", url] if url else [])]
    args = ("--workers", "2") if setup.endswith("workers-2") else ()
    servers = [start_server(env_for(w1, d, url), args=args, log=tmp_path / f"server-{k}.log") for k, d in enumerate(dirs)]
    bases = [base for _, base in servers]
    late = None
    try:
        ids = [int(r["id"]) for r in httpx.get(f"{bases[0]}/images?limit=1000", timeout=30).json()["images"]]
        loop = ClientLoop(bases, ids)
        loop.start()
        env = {**os.environ, "ALEXNET_TORCH_THREADS": "1", **({"ALEXNET_STORE_URL": url} if url else {})}
        command = [sys.executable, "-m", "model.console", "model", "stage", str(w2), *store_args, "--active-weights", str(w1)]
        stage = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # the servers load the staged weights; adds from now on carry vectors of both
        eventually(lambda: all(h2 in httpx.get(f"{b}/readyz", timeout=10).json().get("weights", {}).get("staged", {}) for b in bases),
                   "every server sees the staged weights", SWITCH_BOUND_S)  # fmt: skip
        added = []
        for seed in range(20):
            files = [("files", (f"new{seed}.png", image_bytes(10**7 + seed, size=(36, 36)), "image/png"))]
            r = httpx.post(f"{bases[seed % len(bases)]}/images", files=files, headers=AUTH, timeout=30)
            assert r.status_code == 201, r.text
            added.append(int(r.json()["images"][0]["id"]))
        # a replica started during the migration serves the active weights and sees the staged ones' progress
        late = start_server(env_for(w1, tmp_path / "index-late" if url else dirs[0], url), log=tmp_path / "late.log")
        ready = httpx.get(f"{late[1]}/readyz", timeout=10).json()
        assert ready["model"]["weights_hash"] == h1
        eventually(lambda: h2 in httpx.get(f"{late[1]}/readyz", timeout=10).json().get("weights", {}).get("staged", {}),
                   "the late replica sees the staged weights", SWITCH_BOUND_S)  # fmt: skip
        out, _ = stage.communicate(timeout=600)
        assert stage.returncode == 0, out
        assert "0 left" in out
        compared = alexnet("model", "compare", *store_args, "--sample", "100", url=url)
        assert "top-1 agreement" in compared.stdout and "mAP by label" in compared.stdout

        alexnet("model", "activate", h2[:12], *store_args, url=url)
        everyone = [*bases, late[1]]
        lag = eventually(lambda: all(serving(b) == h2 for b in everyone), "every server answers with the new weights", SWITCH_BOUND_S)
        # the adds made during re-embedding are in the new weights' vectors and in every server's index of them (small random
        # networks give near-equal fc7 vectors to all images, so a search by one finds ties, not necessarily itself)
        store = open_store(dirs[0], url, readonly=True)
        try:
            assert len(store.vectors(added, h2)[0]) == len(added)
        finally:
            store.close()
        for base in bases:
            assert httpx.get(f"{base}/readyz", timeout=10).json()["index"]["images"] == GALLERY + len(added)
        time.sleep(1.0)
        alexnet("model", "activate", h1[:12], *store_args, url=url)  # roll back, under the same loop
        eventually(lambda: all(serving(b) == h1 for b in bases), "every server answers with the old weights again", SWITCH_BOUND_S)
        time.sleep(1.0)
        loop.stopping.set()
        loop.join(60)
        assert loop.failures == [], loop.failures[:5]
        assert check_answers(loop, dirs[0], url) == {h1, h2}
        print(f"{setup}: {len(loop.answers)} searches checked; every server on the new weights {lag:.2f} s after activate")
    finally:
        if late is not None:
            stop_server(late[0])
        for proc, _ in servers:
            stop_server(proc)
