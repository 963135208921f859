"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def setup_threads() -> int:
    n = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def time_call(fn: Callable[[], object], *, warmup: int = 2, min_repeats: int = 3, min_seconds: float = 1.0) -> list[float]:
    """Per-call seconds: at least ``min_repeats`` calls and ``min_seconds`` of measuring."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def time_in_turns(fns: dict[str, Callable[[], object]], *, turns: int = 5, seconds: float = 0.25) -> dict[str, list[float]]:
    """Per-call seconds of each function, measured in ``turns`` rounds of at least ``seconds`` (and 2 calls) each, the
    functions taking turns: a machine's slow phase then slows all of them, and their ratios stay fair."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(turns):
        for name, fn in fns.items():
            times[name] += time_call(fn, warmup=0, min_repeats=2, min_seconds=seconds)
    return times


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and mean top-5 overlap (fractions) of two logit batches."""
    k = min(5, a.shape[1])
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    top1 = float((ta[:, 0] == tb[:, 0]).float().mean())
    overlap = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb, strict=True)) / (k * len(a))
    return top1, overlap


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
