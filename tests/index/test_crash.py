"""kill -9 during a stream of adds: every acknowledged add survives; index, store and files agree."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.index import ImageIndex
from tests.index.helpers import DIM, item

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigkill_during_adds_loses_no_acknowledged_add(tmp_path: Path) -> None:
    rng = random.Random(0)
    acked: dict[int, int] = {}  # id -> seed
    deleted: set[int] = set()
    start = 0

    def record(line: str) -> None:
        kind, image_id, seed = line.split()
        if kind == "ACK":
            acked[int(image_id)] = int(seed)
        else:
            deleted.add(int(image_id))

    for _round in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.index.crash_writer", str(tmp_path), str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        wanted = rng.randint(3, 25)
        lines = 0
        while lines < wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            record(line)
            lines += 1
        time.sleep(rng.random() * 0.05)  # somewhere inside the next add
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # lines written before the kill count as acknowledged too
        proc.wait()
        for line in rest.splitlines():
            record(line)
        assert lines >= 3, "the writer did not get going"
        start = max(acked.values()) + 1
        with ImageIndex(tmp_path, weights_hash="c" * 64, dim=DIM) as idx:
            assert idx.check() == [], f"round {_round}"
            for image_id, seed in acked.items():
                rec = idx.get(image_id)
                if image_id in deleted:
                    assert rec is None
                    continue
                if rec is None and seed % 5 == 0:
                    continue  # killed inside its (unacknowledged) delete, after the delete committed
                assert rec is not None and rec.source == f"test:{seed}", f"acknowledged add {image_id} lost in round {_round}"
                hit = idx.search(item(seed).vector, k=1)[0][0]
                assert hit.id == image_id
            on_disk = {p.name for p in (tmp_path / "images").rglob("*") if p.is_file()}
            assert len(on_disk) == len(idx)
