"""What the lifespan loads once (the predictor, the index, the batcher, and what failed), and the
dependencies routes declare to get them: ``ModelDep``, ``IndexDep``, ``Ctx``.

A route that names ``ModelDep`` or ``IndexDep`` is answered 503, saying why, while that part is not
loaded; the route's own code never checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import numpy as np
import torch
from fastapi import Depends, Request
from PIL import Image

from app.batching import Batcher
from app.errors import NotReady
from app.metrics import Metrics
from app.schemas import ModelInfo, Prediction
from app.settings import Settings
from app.uploads import ClientGone, Upload, read_uploads
from index.encoding import STORE_MAX_SIDE, encode_for_store
from index.index import ImageIndex
from index.lifecycle import stored_pixels
from model.decode_cost import DecodeBudget
from model.predictor import Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["ClientGone", "Ctx", "IndexDep", "Inferred", "ModelDep", "ServedModel", "ServiceState", "get_index", "get_model", "get_state"]


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
    decode_budget: DecodeBudget = field(default_factory=DecodeBudget)
    scrub: Callable[[str], str] = str  # what answers may say (app.public.Scrubber)
    others: dict[str, Predictor] = field(default_factory=dict)  # staged and retired weights, by hash (app.switching)
    lifecycle: dict[str, dict[str, Any]] = field(default_factory=dict)  # the staged weights' re-embedding progress
    switches: int = 0  # times this process switched weights

    def all_problems(self) -> list[str]:
        return self.problems + ([self.index_problem] if self.index_problem else [])

    def model_info(self) -> ModelInfo | None:
        return None if self.predictor is None else ModelInfo.of(self.predictor)


@dataclass(frozen=True)
class Prepared:
    """What a request keeps of one decoded image: the model's pixels, and the gallery's copy when it stores it."""

    pixels: torch.Tensor  # (1, 3, S, S) uint8, or (1, 10, 3, S, S) with ten_crop (Predictor.pixels)
    stored: tuple[bytes, str] | None  # encode_for_store's (bytes, suffix)


@dataclass
class Inferred:
    """The uploads of one request and what the network made of them (one row per upload)."""

    uploads: list[Upload]
    fields: dict[str, str]  # the request's text fields
    probs: torch.Tensor  # (n, classes) softmax (averaged over the ten crops with ten_crop)
    fc7: torch.Tensor  # (n, 4096), of the centre crop with ten_crop
    familiarity: torch.Tensor  # (n,) percentile among held-out training images (model.familiarity); NaN: no score


@dataclass
class ServedModel:
    """The loaded network as routes use it: every forward pass goes through the batcher."""

    predictor: Predictor
    batcher: Batcher
    settings: Settings
    budget: DecodeBudget
    others: dict[str, Predictor] = field(default_factory=dict)  # the gallery's other weights, embedded into on add
    metrics: Metrics | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.of(self.predictor)

    async def cpu_work(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Decoding and other CPU work of a request, kept out of the forward passes (see app/batching.py)."""
        return await self.batcher.run_between_forwards(fn, *args, **kwargs)

    async def infer(self, batch: torch.Tensor, *, ten_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities (n, classes), fc7 (n, 4096) and familiarity (n,) of uint8 pixels from ``Predictor.pixels``
        (normalised once per batch inside the forward; ``Predictor.outputs`` combines ten crops; familiarity is the
        centre crop's, like fc7)."""
        logits, fc7, familiarity = await self.batcher.submit(batch.flatten(0, 1) if ten_crop else batch, self.predictor.forward_scored)
        probs, fc7 = self.predictor.outputs(logits, fc7, ten_crop=ten_crop)
        return probs, fc7, familiarity.view(-1, 10)[:, 4] if ten_crop else familiarity

    async def embed_others(self, copies: list[tuple[bytes, str]]) -> list[dict[str, np.ndarray]]:
        """For each stored copy, its fc7 vector under each of the gallery's other weights (staged, retired), computed
        from the copy as re-embedding does (``index.lifecycle``), through the batcher."""
        out: list[dict[str, np.ndarray]] = [{} for _ in copies]
        for weights, other in self.others.items():
            pixels = await self.cpu_work(lambda o=other: torch.cat([stored_pixels(o, c) for c in copies]))  # type: ignore[misc]
            _, fc7, *_ = await self.batcher.submit(pixels, other.forward)
            for row, vector in zip(out, fc7.numpy(), strict=True):
                row[weights] = vector.copy()
        return out

    async def read_and_infer(
        self,
        request: Request,
        *,
        multiple: bool,
        ten_crop: bool = False,
        store: bool = False,
        check_fields: Callable[[dict[str, str]], None] | None = None,
    ) -> Inferred:
        """Read a multipart upload within the settings' limits, decode it between forward passes, and run it.
        The batcher knows the request is coming from its first byte (``Batcher.announce``). ``check_fields``
        refuses bad text fields before the forward pass.

        JPEGs are decoded only as large as needed (``Settings.reduced_decoding``): the preprocessing's shorter
        side, and with ``store`` (the gallery keeps a copy) the copy's longer side. Each image is reduced to the
        model's pixels (and the gallery's copy) in the thread that decoded it, within the process's decode budget,
        and its full-size pixels are freed there."""
        s = self.settings
        reduced = s.reduced_decoding
        pixels = self.predictor.pixels

        def prepare(image: Image.Image) -> Prepared:
            return Prepared(pixels([image], ten_crop), encode_for_store(image) if store else None)

        async with self.batcher.admission.announce():
            self.batcher.admission.admit()  # a full queue refuses before the body is read: overload costs the server little
            uploads, fields = await read_uploads(
                request,
                max_files=s.max_files if multiple else 1,
                max_fields=s.max_fields,
                max_pixels=s.max_pixels,
                multiple=multiple,
                min_side=self.predictor.meta.preset.resize_size if reduced else None,
                min_long_side=STORE_MAX_SIDE if reduced and store else None,
                run=self.cpu_work,
                prepare=prepare,
                budget=self.budget,
            )
            if check_fields is not None:
                check_fields(fields)
            if await request.is_disconnected():  # nobody would read the answer: leave the network to those who will
                raise ClientGone
            probs, fc7, familiarity = await self.infer(torch.cat([u.prepared.pixels for u in uploads]), ten_crop=ten_crop)
        return Inferred(uploads, fields, probs, fc7, familiarity)

    def familiarity(self, done: Inferred) -> list[dict[str, Any]]:
        """Per upload, the ``familiarity`` and ``familiar`` fields of its answer (None and None without a score)."""
        scorer = self.predictor.familiarity
        if scorer is None:
            answers: list[dict[str, Any]] = [{"familiarity": None, "familiar": None} for _ in done.uploads]
        else:
            values = done.familiarity.numpy()
            flags = scorer.familiar(values)
            answers = [{"familiarity": round(float(v), 4), "familiar": bool(f)} for v, f in zip(values, flags, strict=True)]
        if self.metrics is not None:
            for a in answers:
                self.metrics.familiarity.labels("unavailable" if a["familiar"] is None else str(a["familiar"]).lower()).inc()
        return answers

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[Prediction]]:
        return [
            [Prediction(index=p.index, label=p.label, probability=min(1.0, max(0.0, p.probability))) for p in row]
            for row in self.predictor.top_k(probs, k)
        ]


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


Ctx = Annotated[ServiceState, Depends(get_state)]


@dataclass(frozen=True)
class Serving:
    """The model, the index and the other weights a request uses, read together once per request (FastAPI caches a
    dependency within a request): a switch of weights (app.switching) swaps them at one instant, so a request
    never pairs one weights' model with another's vectors."""

    predictor: Predictor | None
    index: ImageIndex | None
    others: dict[str, Predictor]


async def get_serving(state: Ctx) -> Serving:
    return Serving(state.predictor, state.index, state.others)


ServingDep = Annotated[Serving, Depends(get_serving)]


async def get_model(state: Ctx, serving: ServingDep) -> ServedModel:
    if serving.predictor is None or state.batcher is None:
        raise NotReady(f"model not loaded: {'; '.join(state.all_problems()) or 'starting'}", retry=not state.problems)
    return ServedModel(serving.predictor, state.batcher, state.settings, state.decode_budget, serving.others, state.metrics)


async def get_index(state: Ctx, serving: ServingDep) -> ImageIndex:
    if serving.index is None:
        retry = state.index_retryable or not state.all_problems()  # (starting, or the store is away)
        raise NotReady(f"index not available: {'; '.join(state.all_problems()) or 'starting'}", retry=retry)
    return serving.index


ModelDep = Annotated[ServedModel, Depends(get_model)]
IndexDep = Annotated[ImageIndex, Depends(get_index)]
