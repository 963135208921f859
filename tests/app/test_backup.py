"""`alexnet index backup` in the middle of a stream of adds, `alexnet index restore`, and a server on the restored gallery."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.testing import ROOT, image_bytes, running_server
from tests.app.conftest import API_KEY, AddingClients

pytestmark = pytest.mark.slow


def index_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model.console", "index", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_backup_while_adding_then_restore_and_serve(tmp_path: Path, small_weights: Path) -> None:
    env = {"ALEXNET_WEIGHTS": str(small_weights), "ALEXNET_INDEX_DIR": str(tmp_path / "live"), "ALEXNET_API_KEY": API_KEY}
    clients = AddingClients()
    with running_server(env) as base:
        clients.start([base, base])
        deadline = time.monotonic() + 60
        while len(clients.acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        with clients.lock:
            before = dict(clients.acked)  # acknowledged before the backup began
        r = index_cli("backup", str(tmp_path / "bak"), "--index", str(tmp_path / "live"))
        time.sleep(1)  # adds go on after it
        clients.stop()
    assert r.returncode == 0, r.stderr
    assert len(before) >= 20 and len(clients.acked) > len(before)
    assert index_cli("backup", str(tmp_path / "bak"), "--index", str(tmp_path / "live")).returncode == 2  # never overwritten

    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("")
    refused = index_cli("restore", str(tmp_path / "bak"), "--index", str(tmp_path / "occupied"))
    assert refused.returncode == 2 and "not empty" in refused.stderr
    r = index_cli("restore", str(tmp_path / "bak"), "--index", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    assert index_cli("stats", "--index", str(tmp_path / "restored")).returncode == 0  # consistent: store, files, index

    with running_server({**env, "ALEXNET_INDEX_DIR": str(tmp_path / "restored")}) as base, httpx.Client(base_url=base, timeout=30) as c:
        for image_id, seed in before.items():
            meta = c.get(f"/images/{image_id}/meta")
            assert meta.status_code == 200, (image_id, meta.text)
            assert meta.json()["sha256"] == hashlib.sha256(image_bytes(seed, size=(40, 40))).hexdigest()
            assert c.get(f"/images/{image_id}").status_code == 200
        some = next(iter(before))
        assert c.get(f"/similar/{some}?k=1").status_code == 200
