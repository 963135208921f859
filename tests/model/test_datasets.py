"""Fashion-MNIST downloads, opt-in only, from a local HTTP server on 127.0.0.1, checksums verified."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from torchvision.datasets import FashionMNIST

from app.testing import make_weights
from model import console
from model.datasets import FASHION_MNIST_CLASSES, DataError, fashion_mnist
from tests.training.test_data import make_fmnist


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """(directory, URL) of a directory served over HTTP on 127.0.0.1, holding a small Fashion-MNIST look-alike;
    torchvision's checksums are replaced by those of these files."""
    served = tmp_path / "served"
    make_fmnist(served, n_train=30, n_test=20)
    resources = [(name, hashlib.md5((served / name).read_bytes()).hexdigest()) for name, _ in FashionMNIST.resources]
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("ALEXNET_DOWNLOAD", raising=False)
    monkeypatch.delenv("ALEXNET_FASHION_MNIST_MIRROR", raising=False)
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_nothing_downloads_unasked_and_the_error_names_both_ways(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*--download or ALEXNET_DOWNLOAD=1"):
        fashion_mnist(tmp_path / "data", "test")
    assert not (tmp_path / "data").exists()


def test_download_on_request_then_read_locally(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    served, url = mirror
    test = fashion_mnist(tmp_path / "data", "test", download=True, mirror=url)
    assert len(test) == 20 and test.originals.shape == (20, 1, 28, 28)
    for f in served.iterdir():
        f.unlink()  # the mirror is gone: what was downloaded is read from disk
    assert len(fashion_mnist(tmp_path / "data", "train")) == 30


def test_the_commands_download_when_the_settings_ask(
    tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ALEXNET_DOWNLOAD and ALEXNET_FASHION_MNIST_MIRROR reach the command through the settings the dispatcher reads."""
    weights = tmp_path / "w.safetensors"
    make_weights(weights, class_names=FASHION_MNIST_CLASSES)
    argv = ["evaluate", str(weights), "--data", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--limit", "8"]
    assert console.main(argv) == 2  # not asked: the data is missing and nothing downloads
    assert "--download or ALEXNET_DOWNLOAD=1" in capsys.readouterr().err
    monkeypatch.setenv("ALEXNET_DOWNLOAD", "1")
    monkeypatch.setenv("ALEXNET_FASHION_MNIST_MIRROR", mirror[1])
    assert console.main(argv) == 0
    assert "(8 images)" in capsys.readouterr().out
    assert len(fashion_mnist(tmp_path / "data", "test")) == 20


def test_a_file_that_fails_its_checksum_is_refused(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    served, url = mirror
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        fashion_mnist(tmp_path / "data", "test", download=True, mirror=url)
    assert not (tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()
