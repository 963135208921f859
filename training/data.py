"""Data sources for training: an ImageFolder tree, Fashion-MNIST's IDX files, a generated set.

Every source yields batches of ``(uint8 images (B, C, R, R), int64 labels (B,))`` at the
preset's ``resize_size`` R (C is 1 for grey sources, 3 otherwise): the paper's
"rescale the shorter side to 256 and take the central 256x256 patch". The random
crop, flip and PCA lighting are then applied to whole batches on the training
device (``training.augment``).

References: Krizhevsky et al. 2012, section 2.
"""

from __future__ import annotations

import copy
import gzip
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from model.preprocess import to_rgb

log = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DataError",
    "FolderSource",
    "Source",
    "TensorSource",
    "fashion_mnist",
    "generated_shapes",
    "open_source",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"}


class DataError(ValueError):
    """A data set that is missing or unusable; the message says what and how to get it."""


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
class TensorSource(Source):
    """Images held in memory as uint8 (N, C, H, W) at their original size; resized once on demand."""

    originals: Tensor  # (N, C, H, W) uint8, C in {1, 3}
    labels: Tensor  # (N,) int64
    class_names: tuple[str, ...]  # type: ignore[misc]
    size: int = 0  # resize target; set by ``at_size``
    _resized: Tensor | None = None

    def __post_init__(self) -> None:
        if self.originals.dtype != torch.uint8 or self.originals.dim() != 4 or self.originals.shape[1] not in (1, 3):
            raise DataError(f"images must be uint8 (N, 1|3, H, W), got {self.originals.dtype} {tuple(self.originals.shape)}")
        if len(self.labels) != len(self.originals):
            raise DataError(f"{len(self.originals)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def at_size(self, size: int) -> TensorSource:
        """The same images, resized (shorter side) and centre-cropped to ``size``, computed once."""
        src = TensorSource(self.originals, self.labels, self.class_names, size)
        resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        src._resized = torch.cat([resize(chunk) for chunk in self.originals.split(4096)])
        return src

    def subset(self, n: int) -> TensorSource:
        return TensorSource(self.originals[:n], self.labels[:n], self.class_names)

    def _read(self, plan: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        if self._resized is None:
            raise RuntimeError("call at_size() first")
        for idx in plan:
            self.loaded += len(idx)
            yield self._resized[idx], self.labels[idx]

    def pixel_sample(self, max_images: int = 2000, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:max_images]
        x = self.originals[idx].float().div_(255)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return x.permute(0, 2, 3, 1).reshape(-1, 3)

    def pil_image(self, i: int) -> Image.Image:
        arr = self.originals[i].permute(1, 2, 0).numpy()
        return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)

    def label(self, i: int) -> int:
        return int(self.labels[i])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable IDX file ({e})") from e
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: holds {body.size} bytes, header says {dims} (truncated?)")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def fashion_mnist(root: str | Path = FASHION_MNIST_DIR, split: str = "train") -> TensorSource:
    """Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split from its IDX files (.gz or plain)."""
    root = Path(root)
    if split not in _FMNIST_FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    stems = _FMNIST_FILES[split]
    paths = [_find_idx(root, s) for s in stems]
    if any(p is None for p in paths):
        missing = [s + ".gz" for s, p in zip(stems, paths, strict=True) if p is None]
        raise DataError(
            f"Fashion-MNIST not found in {root}: missing {', '.join(missing)}. "
            "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs it in "
            f"{FASHION_MNIST_DIR}); or put the four IDX files (train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a "
            "directory and pass it with --data-dir."
        )
    images, labels = _read_idx(paths[0]), _read_idx(paths[1])  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} do not pair up")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{root}: label {labels.max()} out of range for Fashion-MNIST's 10 classes")
    return TensorSource(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


def generated_shapes(
    n: int = 256, size: int = 32, seed: int = 0, classes: tuple[str, ...] = ("red", "green", "blue", "white")
) -> TensorSource:
    """A small generated set for tests: a noisy square whose colour is the class."""
    g = torch.Generator().manual_seed(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (235, 235, 235)}
    labels = torch.arange(n) % len(classes)
    images = torch.randint(0, 60, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for i in range(n):
        s = int(torch.randint(size // 3, size - 2, (1,), generator=g))
        y0, x0 = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=g))
        colour = torch.tensor(colours.get(classes[int(labels[i])], (128, 128, 128)), dtype=torch.uint8)
        images[i, :, y0 : y0 + s, x0 : x0 + s] = colour.view(3, 1, 1)
    return TensorSource(images, labels.long(), classes)


# -- folders ----------------------------------------------------------------------------------


class _FolderDataset(Dataset[tuple[Tensor, int] | None]):
    def __init__(self, files: list[tuple[Path, int]], size: int) -> None:
        self.files, self.size = files, size
        self.transform = v2.Compose([v2.Lambda(to_rgb), v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.files[i]
        try:
            with Image.open(path) as im:
                im.draft("RGB", (self.size, self.size))  # JPEG: decode at reduced scale when much larger
                return self.transform(im.convert("RGB") if im.mode == "CMYK" else im), label
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            log.warning("skipping unreadable image %s (%s)", path, e)
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
        self.files = [
            (p, index[c]) for c in found for p in sorted((self.root / c).rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.files:
            raise DataError(f"image folder {self.root} holds no image files")
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
        with Image.open(self.files[i][0]) as im:
            im.load()
            return im.copy()

    def label(self, i: int) -> int:
        return self.files[i][1]


def open_source(
    spec: str, *, split: str, data_dir: str | Path | None = None, size: int, class_names: tuple[str, ...] | None = None, workers: int = 2
) -> Source:
    """``fashion-mnist``, ``generated[:N]``, or a folder path (``DIR``, with ``DIR/train`` and ``DIR/val`` if present)."""
    if spec == "fashion-mnist":
        return fashion_mnist(data_dir or FASHION_MNIST_DIR, "test" if split in ("val", "test") else "train").at_size(size)
    if spec.startswith("generated"):
        n = int(spec.split(":", 1)[1]) if ":" in spec else 256
        return generated_shapes(n=n if split == "train" else max(32, n // 4), seed=0 if split == "train" else 1).at_size(size)
    root = Path(spec)
    sub = root / split if (root / split).is_dir() else root / "val" if split == "test" and (root / "val").is_dir() else root
    return FolderSource(sub, class_names=class_names, workers=workers).at_size(size)
