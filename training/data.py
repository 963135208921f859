"""Training's view of the data sets (``model.datasets``): sources that yield uint8 batches.

The data sets themselves (Fashion-MNIST's IDX files, image folders, the generated set) are read
in ``model.datasets``, which the index builder shares. Every source yields batches of
``(uint8 images (B, C, R, R), int64 labels (B,))`` at the preset's ``resize_size`` R (C is 1 for grey sources, 3 otherwise): the paper's
"rescale the shorter side to 256 and take the central 256x256 patch". The random
crop, flip and PCA lighting are then applied to whole batches on the training
device (``training.augment``).

References: Krizhevsky et al. 2012, section 2.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from model.datasets import DataError, ImageSet, fashion_mnist, generated_shapes, image_files, read_image
from model.decode import DecodeError
from model.preprocess import resize_shorter

log = logging.getLogger(__name__)

__all__ = ["FolderSource", "Source", "TensorSource", "holdout_split", "open_source"]


class Source:
    """A labelled image collection that yields uint8 batches at a fixed square size."""

    class_names: tuple[str, ...]
    size: int
    loaded: int = 0  # images this process has read (decoded) through ``batches``

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
        skip: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of ``batch_size`` images in one order (the same on every process for the same generator).
        ``shard=(rank, world)``: this process reads only its share of each batch (every world-th image, as
        ``DistributedSampler`` does); ``drop_last``: leave out a last batch smaller than ``batch_size``;
        ``skip``: start after that many batches without reading them (resuming inside an epoch)."""
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {shard}: rank must be in [0, world)")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        chunks = list(order.split(batch_size))
        if drop_last and chunks and len(chunks[-1]) < batch_size:
            chunks.pop()
        return self._read([c[rank::world] for c in chunks[skip:]])

    def _read(self, plan: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 images, labels) of each batch of indices in ``plan``, counting them in ``loaded``."""
        raise NotImplementedError

    def pixel_sample(self, max_images: int = 2000, seed: int = 0) -> Tensor:
        """(N, 3) float RGB values in [0, 1] from up to ``max_images`` images, for statistics."""
        raise NotImplementedError

    def pil_image(self, i: int) -> Image.Image:
        """Image ``i`` as the original PIL image (for evaluation through the serving preprocessing)."""
        raise NotImplementedError

    def label(self, i: int) -> int:
        raise NotImplementedError


# -- in-memory sources ---------------------------------------------------------------------


@dataclass
class TensorSource(ImageSet, Source):
    """An ``ImageSet`` as a training source: resized once (``at_size``), then served in batches."""

    size: int = 0  # resize target; set by ``at_size``
    _resized: Tensor | None = None

    @classmethod
    def of(cls, images: ImageSet) -> TensorSource:
        return cls(images.originals, images.labels, images.class_names)

    def at_size(self, size: int) -> TensorSource:
        """The same images, resized (shorter side) and centre-cropped to ``size``, computed once."""
        src = TensorSource(self.originals, self.labels, self.class_names, size)
        resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        src._resized = torch.cat([resize(chunk) for chunk in self.originals.split(4096)])
        return src

    def _read(self, plan: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        if self._resized is None:
            raise RuntimeError("call at_size() first")
        for idx in plan:
            self.loaded += len(idx)
            yield self._resized[idx], self.labels[idx]


# -- folders ----------------------------------------------------------------------------------


class _FolderDataset(Dataset[tuple[Tensor, int] | None]):
    def __init__(self, files: list[tuple[Path, int]], size: int) -> None:
        self.files, self.size = files, size
        resize = v2.Lambda(partial(resize_shorter, size=size))  # a reduced decode sampled as the full one
        self.transform = v2.Compose([resize, v2.CenterCrop(size), v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.files[i]
        try:  # the service's decoder; a JPEG much larger than ``size`` is decoded at a reduced scale
            return self.transform(read_image(path, min_side=self.size).image), label
        except DecodeError as e:
            log.warning("skipping %s (%s)", path, e)
            return None


def _collate(items: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor, int]:
    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), skipped
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), skipped


class FolderSource(Source):
    """An ImageFolder tree: ``root/<class>/<image>`` (ImageNet's ``train/<wnid>/`` layout)."""

    def __init__(self, root: str | Path, class_names: tuple[str, ...] | None = None, workers: int = 2) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist (expected {self.root}/<class>/<image files>)")
        found = tuple(sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")))
        self.class_names = class_names or found
        if not self.class_names:
            raise DataError(f"image folder {self.root} has no class subfolders (expected {self.root}/<class>/<image files>)")
        unknown = set(found) - set(self.class_names)
        if unknown:
            raise DataError(f"{self.root}: classes {sorted(unknown)} are not among the training classes")
        index = {c: i for i, c in enumerate(self.class_names)}
        self.files = [(p, index[c]) for c in found for p in image_files(self.root / c)]  # images or not: decided by content
        if not self.files:
            raise DataError(f"image folder {self.root} holds no files")
        self.workers = workers
        self.size = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def at_size(self, size: int) -> FolderSource:
        self.size = size
        return self

    def subset(self, n: int, seed: int = 0) -> FolderSource:
        """``n`` of the images, picked at random (the same ones for the same seed), in folder order."""
        keep = sorted(np.random.default_rng(seed).permutation(len(self.files))[:n].tolist())
        sub = copy.copy(self)
        sub.files = [self.files[i] for i in keep]
        return sub

    def _read(self, plan: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(
            _FolderDataset(self.files, self.size),
            batch_sampler=[idx.tolist() for idx in plan if len(idx)],  # only this process's share is ever decoded
            num_workers=self.workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        for images, labels, skipped in loader:
            self.loaded += len(labels) + skipped
            if skipped:
                self.skipped += skipped
            if len(labels):
                yield images, labels

    def pixel_sample(self, max_images: int = 2000, seed: int = 0) -> Tensor:
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(self.files))[:max_images]
        ds = _FolderDataset(self.files, 64)
        chunks = [item[0] for i in picks if (item := ds[int(i)]) is not None]
        if not chunks:
            raise DataError(f"{self.root}: no readable images to compute colour statistics from")
        x = torch.stack(chunks).float().div_(255)
        return x.permute(0, 2, 3, 1).reshape(-1, 3)

    def pil_image(self, i: int) -> Image.Image:
        return read_image(self.files[i][0]).image

    def label(self, i: int) -> int:
        return self.files[i][1]


def holdout_split(n: int, holdout: int, split: str) -> list[int]:
    """The indices of the training images that ``split`` ("train" or "holdout") keeps when ``holdout`` of ``n`` are held
    out: a fixed random choice (seed 0), in the data set's order. A small data set keeps at least three quarters of its
    images for training: ``holdout`` is capped at a quarter of them (training and export cap it alike)."""
    if holdout < 0:
        raise DataError(f"cannot hold out {holdout} training images")
    if holdout > n // 4:
        log.warning("holding out %d of %d training images, not %d: at most a quarter of them are held out", n // 4, n, holdout)
        holdout = n // 4
    held = set(np.random.default_rng(0).permutation(n)[n - holdout :].tolist()) if holdout else set()
    return [i for i in range(n) if (i in held) == (split == "holdout")]


def open_source(
    spec: str,
    *,
    split: str,
    data_dir: str | Path | None = None,
    size: int,
    class_names: tuple[str, ...] | None = None,
    workers: int = 2,
    holdout: int = 0,
) -> Source:
    """``fashion-mnist``, ``generated[:N]``, or a folder path (``DIR``, with ``DIR/train`` and ``DIR/val`` if present).
    With ``holdout``, split "train" leaves out that many training images and split "holdout" is exactly those."""
    part = "train" if split == "holdout" else split
    if spec == "fashion-mnist" or spec.startswith("generated"):
        if spec == "fashion-mnist":
            images: ImageSet = fashion_mnist(data_dir, "test" if part in ("val", "test") else "train")
        else:
            n = int(spec.split(":", 1)[1]) if ":" in spec else 256
            images = generated_shapes(n=n if part == "train" else max(32, n // 4), seed=0 if part == "train" else 1)
        if part == "train" and (holdout or split == "holdout"):
            keep = torch.tensor(holdout_split(len(images.labels), holdout, split))
            images = ImageSet(images.originals[keep], images.labels[keep], images.class_names)
        return TensorSource.of(images).at_size(size)
    root = Path(spec)
    sub = root / part if (root / part).is_dir() else root / "val" if part == "test" and (root / "val").is_dir() else root
    source = FolderSource(sub, class_names=class_names, workers=workers).at_size(size)
    if part == "train" and (holdout or split == "holdout"):
        source = copy.copy(source)
        source.files = [source.files[i] for i in holdout_split(len(source.files), holdout, split)]
    return source
