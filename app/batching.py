"""Dynamic batching: images from requests that arrive together go through the network as one batch.

Each request puts its preprocessed images on a queue and awaits a future. One worker
takes what is queued, waits at most ``max_wait`` for more (up to ``max_batch`` images),
runs one forward pass in a worker thread (the event loop never blocks on the network),
and hands each request its rows of logits and fc7.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["BatchStats", "Batcher"]


@dataclass
class _Job:
    images: Tensor  # (n, 3, S, S)
    future: asyncio.Future[tuple[Tensor, Tensor]]


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    sizes: list[int] = field(default_factory=list)


class Batcher:
    def __init__(
        self,
        forward: Callable[[Tensor], tuple[Tensor, Tensor]],
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

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

    async def submit(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (n, classes) and fc7 (n, 4096) for a preprocessed (n, 3, S, S) batch."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[tuple[Tensor, Tensor]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(images, future))
        return await future

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        count = len(jobs[0].images)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                job = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                break
            jobs.append(job)
            count += len(job.images)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            batch = torch.cat([j.images for j in jobs])
            try:
                logits, fc7 = await loop.run_in_executor(self._executor, self.forward, batch)
            except Exception as e:  # hand the error to every waiting request
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            if self.on_batch:
                self.on_batch(len(batch))
            start = 0
            for j in jobs:
                n = len(j.images)
                if not j.future.done():
                    j.future.set_result((logits[start : start + n], fc7[start : start + n]))
                start += n
