"""fc7 extraction over folders and data sets, through the `alexnet index` commands."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from app.testing import ROOT
from index.extract import build_index
from index.index import ImageIndex
from model.predictor import Predictor
from tests.training.test_data import make_fmnist


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model.console", "index", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def make_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls / "deeper").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / cls / "deeper" / "x.jpg")
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "cats" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    Image.open(root / "dogs" / "0.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "dogs" / "disguised.dat", format="PNG")
    (root / "dogs" / "copy.png").write_bytes((root / "dogs" / "0.png").read_bytes())  # an exact duplicate


def test_build_from_folder_skips_non_images_and_stores_reencoded_copies(tmp_path: Path, small_weights: Path) -> None:
    make_folder(tmp_path / "photos")
    idx_dir = tmp_path / "idx"
    r = cli("build", str(tmp_path / "photos"), "--weights", str(small_weights), "--index", str(idx_dir), "--labels-from-folders",
            "--workers", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "added 9, exact duplicates 1, skipped 2" in r.stdout
    assert "notes.txt" in r.stdout and "photo.jpg" in r.stdout
    # not a terminal: the progress is a log line (the last one, at least), never carriage-return redraws
    assert "\r" not in r.stderr and "fc7: 12/12 img" in r.stderr, r.stderr
    stats = json.loads(cli("stats", "--index", str(idx_dir)).stdout)
    assert stats["images"] == 9 and stats["problems"] == []
    with ImageIndex(idx_dir, weights_hash=Predictor(small_weights).weights_hash) as idx:
        rec = idx.get(1)
        assert rec is not None and rec.label == "cats" and rec.source.endswith("cats/0.png")
        assert (idx_dir / rec.file).parent.parent == idx_dir / "images"
        stored = idx.image_data(1)
        assert stored is not None and stored[1] == ".png"
        assert Image.open(io.BytesIO(stored[0])).size == (40, 30)
        # built from uint8 pixels in worker-style decoding, normalised per batch: the same vector as embed()
        vec = idx.vector(1)
        assert vec is not None
        expected = Predictor(small_weights).embed([Image.open(tmp_path / "photos" / "cats" / "0.png")])[0]
        np.testing.assert_allclose(vec, expected, rtol=0, atol=1e-6)
    r = cli(
        "search", str(tmp_path / "photos" / "dogs" / "1.png"), "-k", "3", "--json", "--weights", str(small_weights), "--index", str(idx_dir)
    )
    hits = json.loads(r.stdout)
    assert hits[0]["source"].endswith("dogs/1.png") and hits[0]["score"] > 0.999
    report = cli("eval", "--index", str(idx_dir))
    assert report.returncode == 0 and "\np@1 " in report.stdout and "\nmAP " in report.stdout and "raw pixels" in report.stdout
    metrics = json.loads(cli("eval", "--index", str(idx_dir), "--json").stdout)
    assert metrics["images"] == 9 and set(metrics["fc7"]) == set(metrics["raw_pixels"]) == {"p@1", "map"}  # (k > 8 others: left out)
    assert all(0 <= v <= 1 for v in [*metrics["fc7"].values(), *metrics["raw_pixels"].values()])
    # a labelled folder (the label is the image's folder), embedded with the weights, unreadable files left out
    folder = json.loads(cli("eval", "--folder", str(tmp_path / "photos"), "--weights", str(small_weights), "--json").stdout)
    assert folder["images"] == 10 and folder["labels"] == 3
    r = cli("remove", "1", "--index", str(idx_dir))  # no model needed
    assert r.returncode == 0
    assert cli("remove", "1", "--index", str(idx_dir)).returncode == 1
    assert json.loads(cli("stats", "--index", str(idx_dir)).stdout)["images"] == 8


def test_worker_processes_hand_each_batch_over_whole(tmp_path: Path, small_weights: Path) -> None:
    """Two DataLoader worker processes, batches of 4 that mix images and skipped files: each batch crosses as one
    tensor, and every image gets the vector embed() gives it, under its own source."""
    make_folder(tmp_path / "photos")
    predictor = Predictor(small_weights)
    with ImageIndex(tmp_path / "idx", weights_hash=predictor.weights_hash) as idx:
        report = build_index(idx, predictor, str(tmp_path / "photos"), batch_size=4, workers=2, progress=False)
        assert (report.added, report.duplicates, len(report.skipped)) == (9, 1, 2)
        records = idx.records(limit=20)
        assert len(records) == 9
        for rec in records:
            vec = idx.vector(rec.id)
            assert vec is not None and rec.source is not None
            np.testing.assert_allclose(vec, predictor.embed([Image.open(rec.source)])[0], rtol=0, atol=1e-6, err_msg=rec.source)


def test_add_command_and_near_duplicates(tmp_path: Path, small_weights: Path) -> None:
    make_folder(tmp_path / "p")
    idx = tmp_path / "idx"
    r = cli("add", str(tmp_path / "p" / "cats" / "0.png"), "--weights", str(small_weights), "--index", str(idx), "--label", "mine")
    assert r.returncode == 0 and "id 1" in r.stdout
    r = cli("add", str(tmp_path / "p" / "dogs" / "disguised.dat"), str(tmp_path / "p" / "cats" / "notes.txt"), "--weights",
            str(small_weights), "--index", str(idx), "--near-duplicate", "0.5")  # fmt: skip
    assert r.returncode == 1 and "notes.txt: skipped" in r.stderr and "id 2" in r.stdout


def test_add_a_folder_adds_every_image_in_it(tmp_path: Path, small_weights: Path) -> None:
    make_folder(tmp_path / "p")
    idx = tmp_path / "idx"
    r = cli("add", str(tmp_path / "p" / "dogs"), "--weights", str(small_weights), "--index", str(idx), "--label", "dog")
    # dogs/: 0-2.png, deeper/x.jpg, disguised.dat (a PNG under another name) and copy.png (the bytes of 0.png)
    assert r.returncode == 0, r.stderr
    assert "(exact duplicate: already stored)" in r.stdout and r.stdout.count(": id ") == 6
    stats = json.loads(cli("stats", "--index", str(idx)).stdout)
    assert stats["images"] == 5 and stats["problems"] == []
    with ImageIndex(idx, weights_hash=Predictor(small_weights).weights_hash) as index:
        assert {index.get(i).label for i in range(1, 6)} == {"dog"}  # type: ignore[union-attr]


def test_build_from_fashion_mnist_split(tmp_path: Path, small_weights: Path) -> None:
    make_fmnist(tmp_path / "fm", n_train=10, n_test=12)
    predictor = Predictor(small_weights)
    with ImageIndex(tmp_path / "idx", weights_hash=predictor.weights_hash) as idx:
        report = build_index(idx, predictor, "fashion-mnist:test", data_dir=str(tmp_path / "fm"), workers=0, progress=False)
        assert report.added + report.duplicates == 12 and not report.skipped
        rec = idx.get(1)
        assert rec is not None and rec.source == "fashion-mnist:test:0" and rec.label == "T-shirt/top"


def test_other_weights_are_refused_by_the_command(tmp_path: Path, small_weights: Path) -> None:
    from app.testing import make_weights

    make_folder(tmp_path / "p")
    assert (
        cli("build", str(tmp_path / "p"), "--weights", str(small_weights), "--index", str(tmp_path / "i"), "--workers", "0").returncode == 0
    )
    other = tmp_path / "o.safetensors"
    make_weights(other, seed=3)
    r = cli("search", str(tmp_path / "p" / "cats" / "0.png"), "--weights", str(other), "--index", str(tmp_path / "i"))
    assert r.returncode == 2 and "serves weights" in r.stderr and "alexnet model stage" in r.stderr
