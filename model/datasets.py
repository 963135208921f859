"""Data sets, read the same way by training, index building and the benchmarks.

- ``ImageSet``: labelled images held in memory as uint8 (N, C, H, W) at their original size.
- ``fashion_mnist``: Fashion-MNIST from its four IDX files (Debian's ``dataset-fashion-mnist``
  package, or a directory of the files).
- ``generated_shapes``: a small generated set for tests and smoke runs.
- ``image_files`` and ``read_image``: a folder's files, each decided to be an image or not by its
  bytes (``model.decode``), never by its name.

They live in ``model`` because every package already depends on it and it depends on none of
them: ``index`` reads Fashion-MNIST without importing ``training``.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from model.decode import DEFAULT_MAX_PIXELS, Decoded, DecodeError, decode_image

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DataError",
    "ImageSet",
    "download_fashion_mnist",
    "fashion_mnist",
    "generated_shapes",
    "image_files",
    "read_image",
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


DOWNLOAD_DIR = Path("data/fashion-mnist")  # where a download goes when no --data-dir is given


class DataError(ValueError):
    """A data set that is missing or unusable; the message says what and how to get it."""


@dataclass
class ImageSet:
    """Labelled images in memory: uint8 (N, C, H, W) with C in {1, 3}, at their original size."""

    originals: Tensor
    labels: Tensor  # (N,) int64
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.originals.dtype != torch.uint8 or self.originals.dim() != 4 or self.originals.shape[1] not in (1, 3):
            raise DataError(f"images must be uint8 (N, 1|3, H, W), got {self.originals.dtype} {tuple(self.originals.shape)}")
        if len(self.labels) != len(self.originals):
            raise DataError(f"{len(self.originals)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> ImageSet:
        """The first ``n`` images (as the same type)."""
        return type(self)(self.originals[:n], self.labels[:n], self.class_names)

    def pil_image(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL image (grey or RGB, as stored)."""
        arr = self.originals[i].permute(1, 2, 0).numpy()
        return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def pixel_sample(self, max_images: int = 2000, seed: int = 0) -> Tensor:
        """(N, 3) float RGB values in [0, 1] from up to ``max_images`` images, for colour statistics."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:max_images]
        x = self.originals[idx].float().div_(255)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return x.permute(0, 2, 3, 1).reshape(-1, 3)


# -- Fashion-MNIST ------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzip or plain) as an array of its declared shape."""
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
    for folder in (root, root / "FashionMNIST" / "raw"):  # (the second: where torchvision's reader downloads to)
        for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                return folder / name
    return None


def _complete(root: Path) -> bool:
    return all(_find_idx(root, s) for stems in _FMNIST_FILES.values() for s in stems)


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """Where Fashion-MNIST is read from when no directory is named: the Debian package's, else an earlier
    download's (``data/fashion-mnist``); ``root`` itself when named."""
    if root is not None:
        return Path(root)
    return FASHION_MNIST_DIR if _complete(FASHION_MNIST_DIR) or not _complete(DOWNLOAD_DIR) else DOWNLOAD_DIR


def fetch_fashion_mnist(root: str | Path | None = None, *, mirror: str | None = None) -> Path:
    """Make sure all four files are on disk and return the directory holding them: ``root`` (downloading what it
    lacks), or with no ``root`` the Debian package's directory when complete, else ``data/fashion-mnist``.
    The commands call this for ``--download`` (``ALEXNET_DOWNLOAD``); nothing else downloads."""
    found = fashion_mnist_root(root)
    if not _complete(found):
        found = Path(root) if root is not None else DOWNLOAD_DIR
        download_fashion_mnist(found, mirror=mirror)
    return found


def download_fashion_mnist(root: Path, *, mirror: str | None = None) -> None:
    """The four files into ``root/FashionMNIST/raw`` with torchvision's downloader, each checked against
    torchvision's MD5 checksum (a file that does not match is refused). ``mirror``: where from (default
    torchvision's first mirror)."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import download_and_extract_archive

    mirror = mirror or FashionMNIST.mirrors[0]
    raw = root / "FashionMNIST" / "raw"
    for filename, md5 in FashionMNIST.resources:
        if (raw / filename).is_file():
            continue
        try:
            download_and_extract_archive(mirror.rstrip("/") + "/" + filename, download_root=raw, filename=filename, md5=md5)
        except (OSError, RuntimeError, ValueError) as e:  # unreachable, HTTP errors, a checksum that does not match
            (raw / filename).unlink(missing_ok=True)
            raise DataError(f"downloading Fashion-MNIST's {filename} from {mirror} failed: {e}") from e


def fashion_mnist(root: str | Path | None = None, split: str = "train", *, download: bool = False, mirror: str | None = None) -> ImageSet:
    """Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split from its IDX files (.gz or plain), in ``root``
    or where ``fashion_mnist_root`` finds them. ``download``: fetch what is missing first (``fetch_fashion_mnist``)."""
    if split not in _FMNIST_FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    stems = _FMNIST_FILES[split]
    root = fetch_fashion_mnist(root, mirror=mirror) if download else fashion_mnist_root(root)
    paths = [_find_idx(root, s) for s in stems]
    if any(p is None for p in paths):
        missing = [s + ".gz" for s, p in zip(stems, paths, strict=True) if p is None]
        raise DataError(
            f"Fashion-MNIST not found in {root}: missing {', '.join(missing)}. Either install it: on Debian/Ubuntu "
            f"`sudo apt-get install dataset-fashion-mnist` (puts it in {FASHION_MNIST_DIR}), or put the four IDX files "
            "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            "in a directory and pass it with --data-dir; or let it be downloaded (checksums verified) with --download "
            "or ALEXNET_DOWNLOAD=1 and a writable --data-dir."
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} do not pair up")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{root}: label {labels.max()} out of range for Fashion-MNIST's 10 classes")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


def generated_shapes(n: int = 256, size: int = 32, seed: int = 0, classes: tuple[str, ...] = ("red", "green", "blue", "white")) -> ImageSet:
    """A small generated set: a noisy square whose colour is the class."""
    g = torch.Generator().manual_seed(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (235, 235, 235)}
    labels = torch.arange(n) % len(classes)
    images = torch.randint(0, 60, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for i in range(n):
        s = int(torch.randint(size // 3, size - 2, (1,), generator=g))
        y0, x0 = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=g))
        colour = torch.tensor(colours.get(classes[int(labels[i])], (128, 128, 128)), dtype=torch.uint8)
        images[i, :, y0 : y0 + s, x0 : x0 + s] = colour.view(3, 1, 1)
    return ImageSet(images, labels.long(), classes)


# -- folders ----------------------------------------------------------------------------------------


def image_files(root: Path) -> list[Path]:
    """Every file under ``root`` (sorted; hidden files and folders left out). Whether a file is an image
    is decided by its bytes when it is read (``read_image``), so a photo named ``.dat`` still counts."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def read_image(
    path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None, min_long_side: int | None = None
) -> Decoded:
    """Read and decode one file with the service's decoder (``DecodeError`` when it is not a usable image).
    ``min_side``, ``min_long_side``: a JPEG may be decoded at a reduced DCT scale that keeps its sides that long."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DecodeError("corrupt", f"unreadable: {e}") from e
    return decode_image(data, max_pixels=max_pixels, min_side=min_side, min_long_side=min_long_side)
