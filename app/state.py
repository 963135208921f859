"""What the lifespan loads once: the predictor, the index, the batcher; and what failed, if anything."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import torch
from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from app.batching import Batcher
from app.metrics import Metrics
from app.schemas import ModelInfo, Prediction
from app.settings import Settings
from index.index import ImageIndex
from model.predictor import Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Ctx", "ServiceState", "get_state"]


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    predictor: Predictor | None = None
    index: ImageIndex | None = None
    batcher: Batcher | None = None
    problems: list[str] = field(default_factory=list)
    index_problem: str | None = None  # why the index is not open
    index_retryable: bool = False  # the store could not be reached: app.main.retry_open_index tries again

    def all_problems(self) -> list[str]:
        return self.problems + ([self.index_problem] if self.index_problem else [])

    # -- readiness -------------------------------------------------------------------------

    def require_model(self) -> tuple[Predictor, Batcher]:
        if self.predictor is None or self.batcher is None:
            raise HTTPException(503, f"model not loaded: {'; '.join(self.all_problems()) or 'starting'}")
        return self.predictor, self.batcher

    def require_index(self) -> ImageIndex:
        if self.index is None:
            retry = {"Retry-After": "5"} if self.index_retryable or not self.all_problems() else None  # (starting, or the store is away)
            raise HTTPException(503, f"index not available: {'; '.join(self.all_problems()) or 'starting'}", headers=retry)
        return self.index

    def model_info(self) -> ModelInfo:
        p, _ = self.require_model()
        return ModelInfo(architecture=p.meta.architecture, weights_hash=p.weights_hash, num_classes=p.meta.num_classes)

    # -- the network, through the batcher -------------------------------------------------------

    async def cpu_work(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Decoding and other CPU work of a request, kept out of the forward passes (see app/batching.py)."""
        if self.batcher is None:
            return await run_in_threadpool(fn, *args, **kwargs)
        return await self.batcher.run_between_forwards(fn, *args, **kwargs)

    @asynccontextmanager
    async def announced(self) -> AsyncIterator[None]:
        """Around reading and decoding an upload that will go through ``infer`` (see app/batching.py)."""
        if self.batcher is None:
            yield
            return
        async with self.batcher.announce():
            yield

    async def infer(self, images: list, *, ten_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities (n, classes) and L2-normalised-ready fc7 (n, 4096) of PIL images."""
        predictor, batcher = self.require_model()
        # uint8 pixels: normalised once per batch inside the forward (Predictor.pixels)
        batch = await batcher.run_between_forwards(predictor.pixels, images, ten_crop)
        if ten_crop:
            n = len(images)
            logits, fc7 = await batcher.submit(batch.flatten(0, 1))
            probs = logits.softmax(dim=1).view(n, 10, -1).mean(dim=1)
            return probs, fc7.view(n, 10, -1)[:, 4]  # fc7 of the centre crop
        logits, fc7 = await batcher.submit(batch)
        return logits.softmax(dim=1), fc7

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[Prediction]]:
        predictor, _ = self.require_model()
        return [
            [Prediction(index=p.index, label=p.label, probability=min(1.0, max(0.0, p.probability))) for p in row]
            for row in predictor.top_k(probs, k)
        ]


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


Ctx = Annotated[ServiceState, Depends(get_state)]
