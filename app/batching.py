"""Dynamic batching: images from requests that arrive together go through the network as one batch.

Each request puts its preprocessed images on a queue and awaits a future. One worker
takes what is queued, waits at most ``max_wait`` for more (up to ``max_batch`` images),
runs one forward pass in a worker thread (the event loop never blocks on the network),
and hands each request its rows of logits and fc7.

Requests announce themselves when they start reading their upload (``admission.announce``, app/overload.py). While
announced requests are still decoding, the worker waits for them up to ``max_wait_busy``:
with clients that send their next request when the last is answered, half of them would
otherwise always be one batch behind the other half, and batches would stay half full
(figures in bench/RESULTS.md, "Design figures").

With ``exclusive`` (the default on the CPU), decoding and preprocessing wait while a forward
pass runs (``run_between_forwards``). The forward's OpenMP threads are statically partitioned
over the cores, so a decoder running beside a forward pass slows the whole pass down to the
speed of its slowest thread; decoding between forwards keeps each pass at full speed
(bench/RESULTS.md, "Design figures"). The wait is bounded, so a decoder is never starved by
back-to-back forwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.overload import Admission

T = TypeVar("T")

__all__ = ["BatchStats", "Batcher"]


Forward = Callable[[Tensor], tuple[Tensor, ...]]  # row-aligned outputs: logits, fc7 (and familiarity)


@dataclass
class _Job:
    images: Tensor  # (n, 3, S, S)
    future: asyncio.Future[tuple[Tensor, ...]]
    forward: Forward | None = None  # another network than the batcher's (the served one while weights switch, or staged ones)


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0


class Batcher:
    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_wait_busy_s: float = 0.03,
        exclusive: bool = False,
        on_batch: Callable[[int, float], None] | None = None,  # (images, seconds) of each forward pass
        max_queue: int = 0,  # the overload bound in images (app/overload.py; 0: no bound)
    ) -> None:
        self.forward = forward
        self._own = forward  # (a job that names this network runs ``self.forward``, which tests may slow down)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_wait_busy_s = max(max_wait_busy_s, max_wait_s)
        self.admission = Admission(max_queue)  # what is in flight, and who is refused (app/overload.py)
        self.exclusive = exclusive
        self._idle = threading.Event()  # set while no forward pass runs
        self._idle.set()
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Images waiting for a forward pass."""
        return self.admission.queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    def _forward(self, batch: Tensor, forward: Forward | None = None) -> tuple[Tensor, ...]:
        self._idle.clear()
        try:
            return (forward or self.forward)(batch)
        finally:
            self._idle.set()

    async def run_between_forwards(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU work (decoding, preprocessing) in a worker thread, after the running forward pass
        if ``exclusive`` (waiting at most 1 s)."""

        def gated() -> T:
            if self.exclusive:
                self._idle.wait(1.0)
            return fn(*args, **kwargs)

        return await run_in_threadpool(gated)

    async def submit(self, images: Tensor, forward: Forward | None = None) -> tuple[Tensor, ...]:
        """Logits (n, classes) and fc7 (n, 4096), and whatever else ``forward`` gives row by row, for a preprocessed
        (n, 3, S, S) batch, from ``forward`` (default: the batcher's own). Jobs of one network are batched together;
        each network's batch runs on its own."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        self.admission.enqueue(len(images))  # (Overloaded when the queue would overflow)
        future: asyncio.Future[tuple[Tensor, ...]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(images, future, None if forward == self._own else forward))
        return await future

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        self.admission.taken(len(jobs[0].images))
        count = len(jobs[0].images)
        start = time.monotonic()
        while count < self.max_batch:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            else:
                elapsed = time.monotonic() - start
                busy = self.admission.arriving > 0 and elapsed < self.max_wait_busy_s
                if not busy and elapsed >= self.max_wait_s:
                    break
                # while requests are arriving, look again every 2 ms (one may fail to decode and never come)
                timeout = min(0.002, self.max_wait_busy_s - elapsed) if busy else self.max_wait_s - elapsed
                try:
                    job = await asyncio.wait_for(self._queue.get(), max(timeout, 0.0001))
                except TimeoutError:
                    continue
            self.admission.taken(len(job.images))
            jobs.append(job)
            count += len(job.images)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            jobs = [j for j in jobs if not j.future.cancelled()]
            groups: dict[Forward | None, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.forward, []).append(j)
            for forward, group in groups.items():
                await self._run_group(loop, forward, group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, forward: Forward | None, jobs: list[_Job]) -> None:
        """One forward pass over the jobs of one network."""
        batch = torch.cat([j.images for j in jobs])
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._forward, batch, forward)
        except Exception as e:  # hand the error to every waiting request
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.stats.batches += 1
        self.stats.images += len(batch)
        if self.on_batch:
            self.on_batch(len(batch), time.perf_counter() - started)
        start = 0
        for j in jobs:
            n = len(j.images)
            if not j.future.done():
                j.future.set_result(tuple(o[start : start + n] for o in outputs))
            start += n
