"""Run by test_crash.py as a real process: add images forever, print each acknowledged add."""

from __future__ import annotations

import sys
from pathlib import Path

from index.index import ImageIndex
from tests.index.helpers import DIM, item

if __name__ == "__main__":
    directory, start = Path(sys.argv[1]), int(sys.argv[2])
    idx = ImageIndex(directory, weights_hash="c" * 64, dim=DIM, snapshot_every=7)  # frequent snapshots: crash inside them too
    seed = start
    while True:
        (r,) = idx.add([item(seed)])
        print(f"ACK {r.id} {seed}", flush=True)
        if seed % 5 == 0:
            idx.delete(r.id)
            print(f"DEL {r.id} {seed}", flush=True)
        seed += 1
