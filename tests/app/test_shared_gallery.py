"""Many service processes on one gallery, with real processes: a CLI beside a server and ``--workers 2``
on SQLite; three replicas on a real PostgreSQL, a replica killed during adds, PostgreSQL stopped
during adds. Every acknowledged add becomes searchable everywhere within the lag bound."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.testing import ROOT, PostgresServer, image_bytes, running_server, start_server, stop_server
from tests.app.conftest import API_KEY, AUTH, AddingClients

pytestmark = pytest.mark.slow

LAG_BOUND_S = 10.0  # what the tests wait at most; the bench measures the real lag (p99 well under 1 s)


def env_for(weights: Path, index_dir: Path, store_url: str | None = None) -> dict[str, str]:
    env = {
        "ALEXNET_WEIGHTS": str(weights),
        "ALEXNET_INDEX_DIR": str(index_dir),
        "ALEXNET_API_KEY": API_KEY,
        "ALEXNET_TORCH_THREADS": "1",
        "ALEXNET_FOLLOW_INTERVAL_S": "0.1",
    }
    if store_url:
        env["ALEXNET_STORE_URL"] = store_url
    return env


def add(base: str, seed: int) -> int:
    files = [("files", (f"{seed}.png", image_bytes(seed, size=(40, 40)), "image/png"))]
    r = httpx.post(f"{base}/images", files=files, headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    return int(r.json()["images"][0]["id"])


def top_hit(base: str, seed: int) -> int | None:
    r = httpx.post(f"{base}/similar?k=1", files={"file": ("q.png", image_bytes(seed, size=(40, 40)), "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    return int(results[0]["id"]) if results else None


def eventually(cond: Callable[[], bool], what: str, timeout: float = LAG_BOUND_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def store_truth(index_dir: Path | None = None, url: str | None = None) -> tuple[int, set[int]]:
    """(the newest change number, the ids stored), read from the store itself."""
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            head = conn.execute("SELECT coalesce(max(seq), 0) FROM alexnet_changes").fetchone()[0]  # type: ignore[index]
            ids = {r[0] for r in conn.execute("SELECT id FROM alexnet_images").fetchall()}
    else:
        import sqlite3

        with sqlite3.connect(index_dir / "store.sqlite") as conn:  # type: ignore[operator]
            head = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            ids = {r[0] for r in conn.execute("SELECT id FROM images").fetchall()}
    return int(head), ids


def searchable(bases: list[str], acked: dict[int, int], truth: Callable[[], tuple[int, set[int]]]) -> None:
    """Every acknowledged add is stored, and every server's FAISS index holds exactly the store's images
    (it has applied the store's newest change), within the lag bound. (Search by the image itself cannot
    tell: a randomly initialised test model maps these images to fc7 vectors within 1e-6 in cosine.)"""
    head, ids = truth()
    assert set(acked) <= ids, f"acknowledged adds missing from the store: {sorted(set(acked) - ids)[:10]}"
    for base in bases:

        def current(b: str = base) -> bool:
            index = httpx.get(f"{b}/readyz", timeout=10).json().get("index") or {}
            return index.get("applied_change", -1) >= head and index.get("indexed") == len(ids)

        eventually(current, f"{base} holds the store's {len(ids)} images (change {head})")
        for image_id in list(acked)[:5]:
            assert httpx.get(f"{base}/images/{image_id}/meta", timeout=10).status_code == 200


# -- SQLite: several processes on one index directory ------------------------------------------------


def test_a_cli_add_reaches_the_running_server_and_survives_its_restart(tmp_path: Path, small_weights: Path) -> None:
    index_dir = tmp_path / "index"
    env = env_for(small_weights, index_dir)
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(77, size=(40, 40)))
    with running_server(env) as base:
        first = add(base, 1)
        r = subprocess.run(
            [sys.executable, "-m", "model.console", "index", "add", str(photo), "--weights", str(small_weights), "--index", str(index_dir)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        cli_id = int(r.stdout.split("id ")[1].split()[0])
        searchable([base], {first: 1, cli_id: 77}, lambda: store_truth(index_dir))
        assert top_hit(base, 77) == cli_id  # two images: search tells them apart
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["status"] == "ready" and ready["index"]["applied_change"] == 2
    with running_server(env) as base:  # the snapshot written at shutdown holds the CLI's add
        assert top_hit(base, 77) == cli_id and top_hit(base, 1) == first


def test_two_workers_share_one_gallery(tmp_path: Path, small_weights: Path) -> None:
    index_dir = tmp_path / "index"
    with running_server(env_for(small_weights, index_dir), args=("--workers", "2")) as base:
        pids = set()
        for _ in range(200):
            with httpx.Client() as c:  # a new connection each time: the kernel hands them to either worker
                pids.add(c.get(f"{base}/readyz").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers answer"
        acked: dict[int, int] = {}
        lock = threading.Lock()

        def client(first: int) -> None:
            for seed in range(first, first + 8):
                image_id = add(base, seed)
                with lock:
                    acked[image_id] = seed

        threads = [threading.Thread(target=client, args=(100 * t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(acked) == 24 and len(set(acked)) == 24  # one id sequence across the workers
        for _ in range(6):  # new connections reach both workers: each must hold every image
            searchable([base], acked, lambda: store_truth(index_dir))


# -- PostgreSQL: replicas on one database --------------------------------------------------------------


@pytest.fixture
def replicas(tmp_path: Path, small_weights: Path, pg_url: str) -> Iterator[tuple[list[str], Callable[[int], None], str]]:
    """Three ``alexnet serve`` processes on one PostgreSQL database, each with its own index directory:
    (base URLs, restart(i) which SIGKILLs replica i and starts it again, the database URL)."""
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    envs = [env_for(small_weights, tmp_path / f"replica{i}", pg_url) for i in range(3)]
    for e in envs:
        p, b = start_server(e, log=tmp_path / "replicas.log")
        procs.append(p)
        bases.append(b)

    def restart(i: int) -> None:
        stop_server(procs[i], kill=True)
        procs[i], _ = start_server(envs[i], log=tmp_path / "replicas.log", port=int(bases[i].rsplit(":", 1)[1]))

    try:
        yield bases, restart, pg_url
    finally:
        for p in procs:
            stop_server(p)


def test_three_replicas_share_adds_deletes_and_duplicates(replicas: tuple[list[str], Callable[[int], None], str]) -> None:
    bases, _, url = replicas
    for base in bases:
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    acked = {add(base, 10 + i): 10 + i for i, base in enumerate(bases)}
    searchable(bases, acked, lambda: store_truth(url=url))
    for base in bases:
        for image_id, seed in acked.items():  # three images: search tells them apart
            assert top_hit(base, seed) == image_id
    # the same bytes through two replicas at the same moment: stored once
    ids: list[int] = []
    barrier = threading.Barrier(2)

    def dup(base: str) -> None:
        barrier.wait()
        ids.append(add(base, 500))

    threads = [threading.Thread(target=dup, args=(b,)) for b in bases[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 2 and ids[0] == ids[1]
    # a delete through one replica is seen everywhere
    victim = next(iter(acked))
    assert httpx.delete(f"{bases[2]}/images/{victim}", headers=AUTH).status_code == 200
    for base in bases:
        assert httpx.get(f"{base}/images/{victim}").status_code == 404
    searchable(bases, {}, lambda: store_truth(url=url))
    for base in bases:
        assert victim not in [h["id"] for h in httpx.get(f"{base}/similar/{ids[0]}?k=100").json()["results"]]
    other = next(i for i in acked if i != victim)
    r = httpx.get(f"{bases[0]}/images/{other}")  # image bytes come from the database: no shared filesystem
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_sigkill_of_a_replica_during_adds_loses_nothing(replicas: tuple[list[str], Callable[[int], None], str]) -> None:
    bases, restart, url = replicas
    clients = AddingClients()
    acked = clients.acked
    for round_ in range(3):
        clients.start([bases[2], bases[2], bases[0]])
        before = len(acked)
        eventually(lambda before=before: len(acked) >= before + 6, "adds going", timeout=60)  # type: ignore[misc]
        time.sleep(0.1 * round_)
        restart(2)  # SIGKILL somewhere inside an add, then a fresh start
        clients.stop()
        for base in bases:
            r = httpx.get(f"{base}/readyz", timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    searchable(bases, acked, lambda: store_truth(url=url))  # survivors and the restarted replica alike
    assert len(acked) >= 18


def test_postgres_down_during_adds_answers_503_then_recovers(
    replicas: tuple[list[str], Callable[[int], None], str], postgres: PostgresServer
) -> None:
    bases, _, url = replicas
    acked = {add(bases[0], 2000): 2000}
    searchable(bases, acked, lambda: store_truth(url=url))
    postgres.stop()
    try:
        r = httpx.post(f"{bases[1]}/images", files=[("files", ("x.png", image_bytes(2001, size=(40, 40)), "image/png"))],
                       headers=AUTH, timeout=30)  # fmt: skip
        assert r.status_code == 503 and "cannot be reached" in r.json()["detail"] and r.headers.get("retry-after"), r.text
        for base in bases:  # searches go on from each replica's FAISS index
            assert top_hit(base, 2000) == next(iter(acked))
            eventually(lambda b=base: httpx.get(f"{b}/readyz").json()["status"] == "degraded", f"{base} reports the store")  # type: ignore[misc]
            ready = httpx.get(f"{base}/readyz").json()
            assert "store_error" in ready["index"] and "adds answer 503" in ready["detail"]
    finally:
        postgres.start()
    for base in bases:  # the replicas recover by themselves
        eventually(lambda b=base: httpx.get(f"{b}/readyz").json()["status"] == "ready", f"{base} recovers", timeout=30)  # type: ignore[misc]
    acked[add(bases[1], 2002)] = 2002
    searchable(bases, acked, lambda: store_truth(url=url))
