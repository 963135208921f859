"""Weights files: round trips through real files, tamper detection, no pickle."""

import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open

from app.testing import make_weights
from model.preprocess import Preset
from model.weights import WeightsError, WeightsMeta, import_torchvision, load_weights, read_meta, save_weights


def test_round_trip_keeps_tensors_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    meta = make_weights(path, num_classes=4, crop=64)
    model, loaded = load_weights(path)
    assert loaded == meta and len(loaded.content_hash) == 64
    assert loaded.preset == Preset.for_crop(64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert loaded.class_names == ("red", "green", "blue", "white")
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        for key in ("architecture", "class_names", "preset", "recipe", "metrics", "content_hash"):
            assert key in md
        assert json.loads(md["recipe"])["name"] == "test-random"
        torch.testing.assert_close(f.get_tensor("fc8_bias"), model.state_dict()["fc8_bias"])
    assert not model.training


def test_tampered_tensor_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    make_weights(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip a byte in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"w\.safetensors.*content hash mismatch"):
        load_weights(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    make_weights(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"w\.safetensors"):
        load_weights(path)


def test_missing_file_and_garbage_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, not a weights file")
    with pytest.raises(WeightsError, match=r"junk\.safetensors"):
        read_meta(junk)


def test_pickle_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(1)}, path)  # zip-pickle under a safetensors name
    with pytest.raises(WeightsError, match="never unpickled"):
        load_weights(path)


def test_a_header_length_that_starts_like_a_pickle_is_still_read(tmp_path: Path) -> None:
    """safetensors begins with its header's length, little-endian: a length of 0x..80 bytes makes the file's first
    byte 0x80, pickle's protocol marker. Such files (a trained model's did) must load, and a raw pickle must not."""
    names = ("a", "b", "c")
    tiny = torch.nn.Module()
    tiny.fc8_bias = torch.nn.Parameter(torch.zeros(3))  # the one tensor save_weights needs to count the classes
    for pad in range(256):  # find the metadata length that puts 0x80 first
        meta = WeightsMeta(architecture="alexnet-2tower", class_names=names, recipe={"note": "x" * pad})
        path = tmp_path / f"w{pad}.safetensors"
        save_weights(tiny, meta, path)
        if path.read_bytes()[:1] == b"\x80":
            break
        path.unlink()
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    read = read_meta(path)
    assert read.class_names == names and read.recipe["note"] == "x" * pad
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))  # starts 80 04
    with pytest.raises(WeightsError, match="never unpickled"):
        read_meta(raw)


def test_class_names_must_match_outputs(tmp_path: Path) -> None:
    from model.alexnet import alexnet

    meta = WeightsMeta(architecture="alexnet-2tower", class_names=("a", "b"))
    with pytest.raises(WeightsError, match="2 class names for a model with 3 outputs"):
        save_weights(alexnet(num_classes=3), meta, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_unknown_architecture_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    make_weights(path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        md = dict(f.metadata())
    md["architecture"] = "vgg16"
    save_file(tensors, str(path), metadata=md)
    with pytest.raises(WeightsError, match="unknown architecture 'vgg16'"):
        load_weights(path)


def test_import_torchvision_gives_torchvisions_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()  # random weights: no download
    pth = tmp_path / "alexnet-owt-test.pth"
    torch.save(tv.state_dict(), pth)
    out = tmp_path / "imported.safetensors"
    meta = import_torchvision(pth, out)
    assert meta.num_classes == 1000 and meta.class_names[0] == "tench" and meta.architecture == "alexnet-torchvision"
    model, loaded = load_weights(out)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))
        logits, fc7 = model.forward_with_fc7(x)
        torch.testing.assert_close(logits, tv(x))
        assert fc7.shape == (2, 4096) and float(fc7.min()) >= 0
    assert loaded.content_hash == meta.content_hash


def test_import_torchvision_refuses_other_state_dicts(tmp_path: Path) -> None:
    pth = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, pth)
    with pytest.raises(WeightsError, match="not torchvision's AlexNet"):
        import_torchvision(pth, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
