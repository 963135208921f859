"""Batched fc7 extraction over a folder tree or a data set, into an ``ImageIndex``.

A DataLoader decodes and preprocesses in worker processes while the model runs; files
that are not images (decided by content, not extension) or cannot be decoded are
skipped and listed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from index.encoding import STORE_MAX_SIDE
from index.index import AddResult, ImageIndex
from index.store import NewImage
from model.console import progress as progress_bar
from model.datasets import fashion_mnist, image_files, read_image
from model.decode import DEFAULT_MAX_PIXELS, DecodeError
from model.predictor import Predictor, usable_cores
from model.preprocess import pixels_transform

log = logging.getLogger(__name__)

__all__ = ["Batch", "BuildReport", "add_images", "build_index", "images_from_source"]


@dataclass
class Item:
    tensor: Tensor  # uint8 pixels for the forward pass
    image: NewImage  # everything the add needs but the vector

    @property
    def source(self) -> str:
        return self.image.source or ""


@dataclass
class BuildReport:
    added: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


class _Decoder:
    """Picklable per-item work for DataLoader workers: decode, preprocess, re-encode."""

    def __init__(self, transform: Callable[[Image.Image], Tensor], max_pixels: int, min_side: int | None) -> None:
        self.transform, self.max_pixels, self.min_side = transform, max_pixels, min_side

    def from_file(self, path: Path, label: str | None) -> Item | tuple[str, str]:
        try:  # as the service decodes an upload to the gallery: as large as the model and the stored copy need
            d = read_image(
                path, max_pixels=self.max_pixels, min_side=self.min_side, min_long_side=STORE_MAX_SIDE if self.min_side else None
            )
        except DecodeError as e:
            return str(path), str(e)
        return self.from_image(d.image, d.sha256, str(path), label, (d.width, d.height))

    def from_image(self, image: Image.Image, sha256: str, source: str, label: str | None, size: tuple[int, int]) -> Item:
        pending = NewImage.of(image, sha256=sha256, width=size[0], height=size[1], source=source, label=label)
        return Item(self.transform(image), pending)


class _FolderDataset(Dataset[Item | tuple[str, str]]):
    def __init__(self, files: list[Path], decoder: _Decoder, labels: dict[Path, str] | None) -> None:
        self.files, self.decoder, self.labels = files, decoder, labels or {}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item | tuple[str, str]:
        return self.decoder.from_file(self.files[i], self.labels.get(self.files[i]))


class _DataSetDataset(Dataset[Item | tuple[str, str]]):
    def __init__(self, spec: str, decoder: _Decoder, data_dir: str | None) -> None:
        name, _, split = spec.partition(":")
        if name != "fashion-mnist":
            raise ValueError(f"unknown data set {name!r} (known: fashion-mnist:test, fashion-mnist:train)")
        self.source = fashion_mnist(data_dir, split or "test")
        self.name = f"fashion-mnist:{split or 'test'}"
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Item | tuple[str, str]:
        image = self.source.pil_image(i)
        sha = hashlib.sha256(image.tobytes()).hexdigest()
        label = self.source.class_names[self.source.label(i)]
        return self.decoder.from_image(image.convert("RGB"), sha, f"{self.name}:{i}", label, image.size)


@dataclass
class Batch:
    """What a DataLoader worker hands over for one batch: the pixels in one tensor (one shared-memory segment
    between the processes, not one per image), the adds without their vectors, and the files skipped."""

    pixels: Tensor  # (n, 3, H, W) uint8; n may be 0
    images: list[NewImage]
    skipped: list[tuple[str, str]]  # (source, reason)


def _collate(items: list[Item | tuple[str, str]]) -> Batch:
    good = [it for it in items if isinstance(it, Item)]
    bad = [it for it in items if not isinstance(it, Item)]
    pixels = torch.stack([it.tensor for it in good]) if good else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
    return Batch(pixels, [it.image for it in good], bad)


def images_from_source(
    source: str,
    predictor: Predictor,
    *,
    data_dir: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    labels_from_folders: bool = False,
    limit: int | None = None,
    reduced_decoding: bool = True,
) -> Dataset[Item | tuple[str, str]]:
    # uint8 pixels: a quarter of the bytes between processes; the forward normalises each batch
    preset = predictor.meta.preset
    decoder = _Decoder(pixels_transform(preset), max_pixels, preset.resize_size if reduced_decoding else None)
    if source.startswith("fashion-mnist"):
        ds: Dataset[Item | tuple[str, str]] = _DataSetDataset(source, decoder, data_dir)
    else:
        root = Path(source)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        files = image_files(root) if root.is_dir() else [root]
        labels = {p: p.parent.name for p in files if p.parent != root} if labels_from_folders and root.is_dir() else None
        ds = _FolderDataset(files, decoder, labels)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))  # type: ignore[arg-type]
    return ds


def _batches(ds: Dataset[Item | tuple[str, str]], batch_size: int, workers: int) -> Iterator[Batch]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate, shuffle=False,
                        worker_init_fn=_background if workers else None)  # fmt: skip
    yield from loader


def add_images(
    index: ImageIndex, predictor: Predictor, items: list[Item], *, near_duplicate_threshold: float | None = None
) -> list[AddResult]:
    """Embed a batch of decoded items and add them (durably) to the index."""
    if not items:
        return []
    return index.add(_embedded(predictor, _collate(list(items))), near_duplicate_threshold=near_duplicate_threshold)


def _embedded(predictor: Predictor, batch: Batch) -> list[NewImage]:
    """The batch's adds with their fc7 vectors, one forward pass."""
    if not batch.images:
        return []
    _, fc7 = predictor.forward(batch.pixels)
    return [replace(image, vector=v) for v, image in zip(fc7.numpy().astype(np.float32), batch.images, strict=True)]


def build_index(
    index: ImageIndex,
    predictor: Predictor,
    source: str,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    data_dir: str | None = None,
    labels_from_folders: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> BuildReport:
    """Embed every image of ``source`` (a folder, a file, or ``fashion-mnist:test``) into ``index``.

    ``workers`` processes (default: one per core, at most 2) decode, preprocess and re-encode the stored copy while
    the model runs, at the lowest priority (``_background``)."""
    if predictor.weights_hash != index.weights_hash:
        raise ValueError(f"weights {predictor.weights_hash[:12]} differ from the index's {index.weights_hash[:12]}")
    ds = images_from_source(source, predictor, data_dir=data_dir, labels_from_folders=labels_from_folders, limit=limit)
    workers = min(2, usable_cores()) if workers is None else workers
    return _build(index, predictor, ds, batch_size, workers, progress)


def _background(_: int) -> None:
    """A DataLoader worker's start: the lowest priority, so that the workers take the cores while the model waits
    for a batch, not in the middle of its parallel regions, whose threads would all wait for the one they delay.
    (The model keeps every core: given one core less when decoding was costly, as ``model.predictor.CoreSplit``
    does for re-embedding, extraction ran slower; bench/RESULTS.md.)"""
    try:
        os.nice(19)
    except OSError:  # not allowed here: the default priority
        pass


def _build(
    index: ImageIndex, predictor: Predictor, ds: Dataset[Item | tuple[str, str]], batch_size: int, workers: int, progress: bool
) -> BuildReport:
    """One batch is stored (its files and rows made durable) in a writer thread while the model runs on the next,
    as the DataLoader's workers decode the ones after it; batches are stored in order, one at a time."""
    report = BuildReport()

    def store(new: list[NewImage], done: int) -> None:
        for r in index.add(new):
            if r.created:
                report.added += 1
            else:
                report.duplicates += 1
        bar.update(done)

    with (
        progress_bar(total=len(ds), desc="fc7", unit="img", disable=not progress) as bar,  # type: ignore[arg-type]
        ThreadPoolExecutor(1, thread_name_prefix="store") as writer,
    ):
        pending: Future[None] | None = None
        for batch in _batches(ds, batch_size, workers):
            for src, reason in batch.skipped:
                log.warning("skipped %s: %s", src, reason)
            report.skipped.extend(batch.skipped)
            new = _embedded(predictor, batch)
            if pending is not None:
                pending.result()  # (an error in the store stops the build here)
            pending = writer.submit(store, new, len(batch.images) + len(batch.skipped))
        if pending is not None:
            pending.result()
    index.save_snapshot()
    return report
