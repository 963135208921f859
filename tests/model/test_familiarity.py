"""The familiarity score and the softmax temperature (model/familiarity.py): the numbers against their definitions
(Sun et al. 2022: the k-th nearest neighbour's cosine; Guo et al. 2017: the NLL-optimal temperature and the
expected calibration error), and their place in the weights file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.familiarity import Familiarity, expected_calibration_error, fit_temperature
from model.predictor import Predictor
from model.weights import WeightsError, load_familiarity, load_weights, read_meta, save_weights
from training.data import holdout_split, open_source
from training.ood import auroc


def _clusters(seed: int, n: int, centre: float, dim: int = 32, second_half: bool = False) -> torch.Tensor:
    """Non-negative features (like ReLU outputs) around ``centre`` in the first (or second) half of the dimensions."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.zeros(dim)
    mean[(dim // 2 if second_half else 0) : (dim if second_half else dim // 2)] = centre
    return (mean + 0.3 * torch.randn(n, dim, generator=g)).abs()


def _fitted(k: int = 5) -> tuple[Familiarity, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    ref = {"a": _clusters(0, 300, 1.0), "fc7": _clusters(1, 300, 2.0, dim=64)}
    held = {"a": _clusters(2, 400, 1.0), "fc7": _clusters(3, 400, 2.0, dim=64)}
    return Familiarity.fit(ref, held, k=k), ref, held


def test_the_score_is_the_kth_neighbours_cosine_standardised_and_summed() -> None:
    fam, ref, _ = _fitted(k=3)
    query = {"a": _clusters(9, 7, 1.0), "fc7": _clusters(8, 7, 2.0, dim=64)}
    expected = np.zeros(7)
    for name in ("a", "fc7"):
        r = ref[name] / ref[name].norm(dim=1, keepdim=True)
        r = r.half().float().numpy()  # the reference is kept as unit rows in float16
        q = query[name].numpy() / np.linalg.norm(query[name].numpy(), axis=1, keepdims=True)
        kth = np.sort(q @ r.T, axis=1)[:, -3]  # the 3rd most similar reference
        expected += (kth - fam.centre[name]) / fam.spread[name]
    assert np.allclose(fam.raw(query).numpy(), expected, atol=1e-4)


def test_the_stated_share_of_held_out_images_is_flagged_and_far_pictures_all_are() -> None:
    fam, _, held = _fitted()
    percentile = fam.score(held)
    # the stated 5% less 1.645 standard errors of its estimate from 400 images: 3.2% of them, by construction
    assert fam.level == pytest.approx(0.05 - 1.645 * np.sqrt(0.05 * 0.95 / 400))
    assert abs(float(np.mean(~fam.familiar(percentile))) - fam.level) <= 0.005
    assert 0.45 < float(np.median(percentile)) < 0.55
    far = {"a": _clusters(4, 50, 1.0, second_half=True), "fc7": _clusters(5, 50, 2.0, dim=64, second_half=True)}
    assert not fam.familiar(fam.score(far)).any()
    assert auroc(fam.raw(held).numpy(), fam.raw(far).numpy()) == 1.0


def test_auroc_is_the_share_of_pairs_ranked_right_with_ties_half() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(pos, neg) == pytest.approx(pairs)
    assert auroc(np.array([1.0, 2.0]), np.array([0.0])) == 1.0 and auroc(np.array([0.0]), np.array([1.0])) == 0.0


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at() -> None:
    g = torch.Generator().manual_seed(0)
    scores = 2 * torch.randn(20_000, 10, generator=g)
    labels = torch.multinomial(scores.softmax(1), 1, generator=g).squeeze(1)  # calibrated at T = 1 for `scores`
    assert fit_temperature(3.0 * scores, labels) == pytest.approx(3.0, rel=0.05)  # logits 3x too sharp: T = 3
    assert fit_temperature(0.5 * scores, labels) == pytest.approx(0.5, rel=0.05)
    before = expected_calibration_error((3.0 * scores).softmax(1), labels)
    after = expected_calibration_error(scores.softmax(1), labels)
    assert after < 0.02 < 0.1 < before


def test_expected_calibration_error_by_hand() -> None:
    # two images at confidence 0.9 (one right) and two at 0.6 (both right): |0.5 - 0.9| / 2 + |1 - 0.6| / 2
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_held_out_images_are_a_fixed_disjoint_share_of_the_training_split() -> None:
    train, held = holdout_split(100, 12, "train"), holdout_split(100, 12, "holdout")
    assert len(held) == 12 and sorted(train + held) == list(range(100))
    assert holdout_split(100, 12, "holdout") == held
    assert len(holdout_split(100, 60, "holdout")) == 25  # a small data set keeps three quarters for training
    source = open_source("generated:64", split="holdout", size=36, holdout=12)
    assert len(source) == 12 and len(open_source("generated:64", split="train", size=36, holdout=12)) == 52


def test_the_reference_sample_travels_in_the_weights_file_outside_the_hash(familiar_weights: Path, tmp_path: Path) -> None:
    model, meta = load_weights(familiar_weights)
    plain = save_weights(model, replace(meta, familiarity="", temperature={}), tmp_path / "plain.safetensors")
    assert plain.content_hash == meta.content_hash  # a gallery built with either file is the same gallery
    fam = load_familiarity(familiar_weights)
    assert fam is not None and fam.layers == ("conv1", "conv3", "fc7")
    assert {n: tuple(r.shape) for n, r in fam.references.items()} == {"conv1": (48, 96), "conv3": (48, 384), "fc7": (48, 4096)}
    assert load_familiarity(tmp_path / "plain.safetensors") is None
    assert meta.softmax_temperature > 0 and meta.temperature["held_out_trained_on"] is True
    # the file cannot be rewritten describing a reference sample it no longer holds
    with pytest.raises(WeightsError, match="none was given"):
        save_weights(model, meta, tmp_path / "lost.safetensors")


def test_a_damaged_reference_sample_is_refused_naming_the_file(familiar_weights: Path, tmp_path: Path) -> None:
    model, meta = load_weights(familiar_weights)
    fam = load_familiarity(familiar_weights)
    assert fam is not None
    bent = replace(fam, references={**fam.references, "fc7": fam.references["fc7"].flip(0)})
    damaged = tmp_path / "damaged.safetensors"
    save_weights(model, meta, damaged, bent)
    text = read_meta(familiar_weights).familiarity  # the original digest over the bent tensors
    meta_bent = replace(read_meta(damaged), familiarity=text)
    with pytest.raises(WeightsError, match=r"damaged\.safetensors: the familiarity reference tensors do not match"):
        load_familiarity(damaged, meta_bent)


def test_the_predictor_scores_in_serving_precision_and_applies_the_temperature(familiar_weights: Path) -> None:
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (50, 60, 3), dtype=np.uint8)) for i in range(3)]
    shapes = open_source("generated:96", split="train", size=read_meta(familiar_weights).preset.resize_size)
    images += [shapes.pil_image(i) for i in range(3)]
    exact = Predictor.from_model(*load_weights(familiar_weights), familiarity=load_familiarity(familiar_weights))
    served = Predictor(familiar_weights)
    logits, fc7, score = served.forward_scored(served.pixels(images))
    _, served_feats = served.features(served.pixels(images))
    _, feats = exact.features(exact.pixels(images))
    assert served.familiarity is not None and exact.familiarity is not None
    assert np.array_equal(score.numpy(), served.familiarity.score(served_feats))
    # packed fc layers (the serving path) and plain ones agree on the score (in held-out spreads; this random network's are narrow)
    assert np.allclose(served.familiarity.raw(served_feats).numpy(), exact.familiarity.raw(feats).numpy(), atol=0.25)
    probs, _ = served.outputs(logits, fc7)
    assert torch.allclose(probs, (logits / served.temperature).softmax(1))
    assert served.temperature != 1.0 and probs.argmax(1).tolist() == logits.argmax(1).tolist()
    # no score: NaN rows
    plain = Predictor.from_model(*load_weights(familiar_weights))
    assert torch.isnan(plain.forward_scored(plain.pixels(images[:2]))[2]).all()


def test_imported_torchvision_weights_get_the_score_from_an_image_folder(tmp_path: Path) -> None:
    from model.preprocess import Preset
    from model.torchvision_alexnet import TorchvisionAlexNet
    from model.weights import WeightsMeta
    from training.cli import main

    torch.manual_seed(0)
    names = ("blue", "green", "red", "white")  # the generated shapes' classes, in the folder's (sorted) order
    path = tmp_path / "imported.safetensors"
    meta = WeightsMeta("alexnet-torchvision", names, Preset.for_crop(64, mean=(0.5,) * 3, std=(0.25,) * 3), {"source": "test"})
    saved = save_weights(TorchvisionAlexNet(num_classes=4), meta, path)
    shapes = open_source("generated:48", split="train", size=36)
    for i in range(len(shapes)):
        folder = tmp_path / "photos" / shapes.class_names[shapes.label(i)]
        folder.mkdir(parents=True, exist_ok=True)
        shapes.pil_image(i).save(folder / f"{i}.png")
    assert load_familiarity(path) is None  # imported: no reference set, so no score
    assert main(["familiarity", str(path), "--data", str(tmp_path / "photos"), "--holdout", "12"]) == 0
    fam = load_familiarity(path)
    assert fam is not None and fam.layers == ("conv1", "conv3", "fc7")  # torchvision's features[2] and features[7]
    assert {n: r.shape[1] for n, r in fam.references.items()} == {"conv1": 64, "conv3": 384, "fc7": 4096}
    assert fam.info["held_out_images"] == 12 and fam.info["held_out_trained_on"] is False
    assert read_meta(path).content_hash == saved.content_hash
    predictor = Predictor(path)
    noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(2)]
    scores = predictor.forward_scored(predictor.pixels([shapes.pil_image(0), *noise]))[2]
    assert scores[0] > scores[1] and scores[0] > scores[2]
