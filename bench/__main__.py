"""Run every benchmark, print the tables and write bench/results.json.

python -m bench            (or: make bench)
python -m bench --quick    every figure with shorter measuring windows, except search at 10^6 vectors (about 2.5
                           minutes more: `python -m bench search`); under 10 minutes on 2 cores
python -m bench filter     one benchmark by name (filter: listings and searches by label and source at 10^5 images;
                           lifecycle: re-embedding, /similar meanwhile, the switch, the stored copy's fidelity;
                           familiarity: how well the score tells the unfamiliar, and what it costs a request)
python -m bench gallery    the shared-gallery benchmark (several processes on one store), run only when named
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

BENCHES = [
    "bench.model_bench",
    "bench.decode_bench",
    "bench.service_bench",
    "bench.photo_bench",
    "bench.search_bench",
    "bench.filter_bench",
    "bench.lifecycle_bench",
    "bench.familiarity_bench",
]
# --quick: each bench's shorter measuring windows (the figures are the same, noisier), and search at 10^5 vectors only
QUICK = {
    "bench.service_bench": ["--seconds", "3", "--concurrency", "1,16"],
    "bench.photo_bench": ["--seconds", "2", "--warmup", "0.5"],
    "bench.search_bench": ["--sizes", "100000", "--queries", "200"],
    "bench.filter_bench": ["--store", "sqlite"],
    "bench.lifecycle_bench": ["--images", "1024", "--seconds", "3"],
    "bench.familiarity_bench": ["--seconds", "6"],
}
ON_REQUEST = ["bench.gallery_bench"]  # run only when named: `python -m bench gallery` (~8 minutes)


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    only = [a for a in sys.argv[1:] if a != "--quick"]
    results: dict[str, object] = {}
    for name in BENCHES + ON_REQUEST:
        if (only and not any(o in name for o in only)) or (not only and name in ON_REQUEST):
            continue
        start = time.perf_counter()
        print(f"\n=== {name} ===")
        results[name] = importlib.import_module(name).main(QUICK.get(name, []) if quick else [])
        print(f"({time.perf_counter() - start:.0f} s)")
    out = Path(__file__).with_name("results.json")
    if only and out.is_file():  # a partial run updates its parts and keeps the others
        results = {**json.loads(out.read_text()), **results}
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
