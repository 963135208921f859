"""Data sources: IDX files, folders with bad files, generated data, clear errors."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.datasets import DataError, fashion_mnist, generated_shapes
from training.data import FolderSource, TensorSource, open_source


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fmnist(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    make_fmnist(tmp_path, gz=gz)
    train, test = fashion_mnist(tmp_path, "train"), fashion_mnist(tmp_path, "test")
    assert len(train) == 40 and len(test) == 20 and train.class_names[9] == "Ankle boot"
    assert train.originals.shape == (40, 1, 28, 28) and train.labels.tolist()[:3] == [0, 1, 2]
    src = TensorSource.of(train).at_size(73)
    images, labels = next(src.batches(8, shuffle=False))
    assert images.shape == (8, 1, 73, 73) and images.dtype == torch.uint8 and labels.tolist() == list(range(8))
    assert train.pil_image(0).size == (28, 28)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*four IDX files"):
        fashion_mnist(tmp_path / "none", "train")


def test_truncated_idx_is_refused(tmp_path: Path) -> None:
    make_fmnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist(tmp_path, "train")


def test_folder_skips_and_counts_corrupt_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for cls, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + i, 30), colour).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    src = FolderSource(tmp_path, workers=0).at_size(32)
    assert src.class_names == ("cat", "dog") and len(src) == 7
    got = [b for b in src.batches(4, shuffle=False)]
    assert sum(len(labels) for _, labels in got) == 6
    assert src.skipped == 1
    assert got[0][0].shape[1:] == (3, 32, 32)
    assert "broken.jpg" in caplog.text


def test_missing_folder_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"), split="train", size=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        FolderSource(tmp_path / "empty")


def test_generated_set_is_deterministic_and_balanced() -> None:
    a, b = generated_shapes(n=16, seed=3), generated_shapes(n=16, seed=3)
    assert torch.equal(a.originals, b.originals)
    assert torch.bincount(a.labels).tolist() == [4, 4, 4, 4]


def test_folder_decides_images_by_content_not_name(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "cat" / "photo.dat", format="PNG")  # an image under any name
    (tmp_path / "cat" / "notes.jpg").write_text("not an image at all")
    src = FolderSource(tmp_path, workers=0).at_size(16)
    got = list(src.batches(4, shuffle=False))
    assert sum(len(labels) for _, labels in got) == 1 and src.skipped == 1
