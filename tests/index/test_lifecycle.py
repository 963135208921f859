"""A gallery moving to new weights (index.registry, index.lifecycle, `alexnet model`), on both stores: stage, re-embed
from the stored copies, activate, roll back, retire; the refusals; a re-embedding SIGKILLed halfway and resumed."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app.testing import ROOT, SMALL_CLASSES, image_bytes
from index import registry
from index.errors import WeightsChanged
from index.index import ImageIndex
from index.lifecycle import compare, embed_stored, reembed
from index.registry import RegistryError
from index.store import NewImage, open_store
from model.predictor import Predictor


def build(directory: Path, url: str | None, predictor: Predictor, n: int, start: int = 0) -> ImageIndex:
    """A gallery of ``n`` small labelled images embedded by ``predictor``."""
    import io

    from PIL import Image

    index = ImageIndex(directory, weights_hash=predictor.weights_hash, store_url=url, factory="flat")
    items = []
    for seed in range(start, start + n):
        image = Image.open(io.BytesIO(image_bytes(seed, size=(40, 36)))).convert("RGB")
        items.append(NewImage.of(image, sha256=f"{seed:064x}", width=40, height=36, source=f"s{seed}", label=SMALL_CLASSES[seed % 4]))
    vectors = embed_stored(predictor, [(it.encoded, it.suffix) for it in items])
    index.add([dataclasses.replace(it, vector=v) for v, it in zip(vectors, items, strict=True)])
    return index


def test_stage_reembed_activate_roll_back_retire(tmp_path: Path, store_url: str | None, two_models: tuple[Path, Path]) -> None:
    p1, p2 = Predictor(two_models[0]), Predictor(two_models[1])
    h1, h2 = p1.weights_hash, p2.weights_hash
    with build(tmp_path / "idx", store_url, p1, 40) as index:
        store = index.store
        entry = registry.register(store, h2, 4096, two_models[1], {"name": "w2"})
        assert entry.state == "staged" and entry.size == two_models[1].stat().st_size
        assert [(e.hash, e.state) for e in registry.listing(store)] == [(h1, "active"), (h2, "staged")]
        with pytest.raises(RegistryError, match="40 stored images have no vector"):
            registry.activate(store, h2)
        # an add made while staged, with both vectors (as the service makes it): the staged gallery stays complete
        unit = np.full(4096, 1 / 64, np.float32)
        [(new_id, created, _)] = store.add_many([NewImage(unit, "f" * 64, image_bytes(99), ".png", 48, 40, others={h2: -unit})], h1)
        assert created and registry.missing_count(store, h2) == 40
        report = reembed(store, p2, batch=16, progress=False)
        assert (report.computed, report.stored, report.remaining) == (40, 40, 0)
        ids = [int(i) for i in store.all_ids() if i != new_id]
        # the vectors are the staged model's, of each stored copy
        expected = np.stack(embed_stored(p2, [store.image_data(i) for i in ids]))  # type: ignore[arg-type]
        found, stored = store.vectors(ids, h2)
        assert found.tolist() == ids and np.allclose(stored, expected, atol=1e-5)
        assert np.array_equal(store.vector(new_id, h2), -unit) and np.array_equal(store.vector(new_id, h1), unit)  # type: ignore[arg-type]
        assert reembed(store, p2, progress=False).computed == 0  # nothing left: nothing computed again
        # a delete removes both weights' vectors
        assert store.delete(ids[0]) is not None and store.vector(ids[0], h2) is None
        figures = compare(store, p1, p2, sample=20, queries=10)
        assert figures["sampled"] == 20 and 0 <= figures["top1_agreement"] <= 1 and 0 <= figures["neighbour_overlap@10"] <= 1
        assert figures["active"]["weights"] == h1 and figures["staged"]["weights"] == h2
        assert figures["staged"]["accuracy"] is not None and figures["staged"]["forward_ms_batch1"] > 0

        assert registry.activate(store, h2) == h1
        assert store.get_meta("weights_hash") == h2
        assert {e.hash: e.state for e in registry.listing(store)} == {h1: "retired", h2: "active"}
        with pytest.raises(WeightsChanged):  # a writer still on the old weights, unaware of the switch: retried, never stored half
            store.add_many([NewImage(np.ones(4096, np.float32), "e" * 64, image_bytes(98), ".png", 48, 40)], h1)
    with ImageIndex(tmp_path / "idx", weights_hash=h2, store_url=store_url) as index2:
        assert index2.weights_hash == h2 and len(index2) == 40
        q = index2.store.vector(ids[5], h2)
        assert index2.search(q, k=1)[0][0].id == ids[5]
        # roll back: the same operation; the old vectors were kept, and their file is needed for replicas to load them
        with pytest.raises(RegistryError, match="not fully stored"):
            registry.activate(index2.store, h1)
        assert registry.ensure_file(index2.store, h1, two_models[0]) and not registry.ensure_file(index2.store, h1, two_models[0])
        assert registry.activate(index2.store, h1) == h2
        with pytest.raises(RegistryError, match="active"):
            registry.retire(index2.store, h1)
        assert registry.retire(index2.store, h2) == 40
        assert [(e.hash, e.state) for e in registry.listing(index2.store)] == [(h1, "active")]
        assert index2.store.vector(ids[5], h2) is None and index2.store.vector(ids[5], h1) is not None


def test_weights_reach_a_replica_through_the_store(tmp_path: Path, pg_url: str, two_models: tuple[Path, Path]) -> None:
    """A file staged on one machine is fetched, checked and loadable on another (no shared filesystem)."""
    p1 = Predictor(two_models[0])
    with build(tmp_path / "a", pg_url, p1, 3) as index:
        h2 = Predictor(two_models[1]).weights_hash
        registry.register(index.store, h2, 4096, two_models[1], {})
    store = open_store(tmp_path / "b", pg_url)
    try:
        path = registry.download(store, h2, tmp_path / "b" / "weights")
        assert path.read_bytes() == two_models[1].read_bytes() and Predictor(path).weights_hash == h2
    finally:
        store.close()


def test_a_killed_reembedding_resumes_without_computing_an_image_twice(
    tmp_path: Path, store_url: str | None, two_models: tuple[Path, Path]
) -> None:
    p1, p2 = Predictor(two_models[0]), Predictor(two_models[1])
    h2 = p2.weights_hash
    n = 600
    with build(tmp_path / "idx", store_url, p1, n) as index:
        registry.register(index.store, h2, 4096, two_models[1], {})
        store = index.store
        env = {**os.environ, "ALEXNET_TORCH_THREADS": "1", **({"ALEXNET_STORE_URL": store_url} if store_url else {})}
        index_dir = str(tmp_path / "idx")
        command = [sys.executable, "-m", "model.console", "model", "reembed", h2[:12], "--index", index_dir, "--batch-size", "4"]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while registry.vector_count(store, h2) < n // 3:
            assert proc.poll() is None and time.monotonic() < deadline, "the re-embedding ended before it could be killed"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = registry.vector_count(store, h2)
        assert n // 3 <= done_before < n
        resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        computed = int(re.search(r"re-embedded (\d+) images", resumed.stdout).group(1))  # type: ignore[union-attr]
        assert computed == n - done_before  # every image stored before the kill was left alone
        ids = [int(i) for i in store.all_ids()]
        found, vectors = store.vectors(ids, h2)
        assert found.tolist() == ids
        uninterrupted = np.stack(embed_stored(p2, [store.image_data(i) for i in ids]))  # type: ignore[arg-type]
        assert np.allclose(vectors, uninterrupted, atol=1e-5)


def test_one_reembedding_at_a_time(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    p1, p2 = Predictor(two_models[0]), Predictor(two_models[1])
    with build(tmp_path / "idx", None, p1, 2) as index:
        registry.register(index.store, p2.weights_hash, 4096, two_models[1], {})
        with index.store.exclusive(f"reembed-{p2.weights_hash[:16]}") as mine:
            assert mine
            with pytest.raises(RegistryError, match=r"re-embedding .* already"):
                reembed(index.store, p2, progress=False)
