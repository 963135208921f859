"""Predictor and preprocessing on real PIL images."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from model.predictor import Predictor
from model.preprocess import Preset, eval_transform, normalise_pixels, ten_crop_transform, to_rgb
from model.vectors import l2_normalise


@pytest.fixture(scope="module")
def predictor(small_weights: Path) -> Predictor:
    return Predictor(small_weights)


def _image(seed: int, size: tuple[int, int] = (90, 70)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_eval_transform_resizes_shorter_side_then_centre_crops() -> None:
    preset = Preset(crop_size=224, resize_size=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    im = Image.new("RGB", (512, 300), (255, 0, 0))
    t = eval_transform(preset)(im)
    assert t.shape == (3, 224, 224)
    torch.testing.assert_close(t[0], torch.ones(224, 224))


def test_ten_crop_is_corners_centre_and_mirrors() -> None:
    preset = Preset(crop_size=4, resize_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8).repeat(3).reshape(8, 8, 3)
    crops = ten_crop_transform(preset)(Image.fromarray(arr))
    assert crops.shape == (10, 3, 4, 4)
    top_left = torch.from_numpy(arr[:4, :4, 0].astype(np.float32) / 255)
    torch.testing.assert_close(crops[0, 0], top_left)
    top_right = torch.from_numpy(arr[:4, 4:, 0].astype(np.float32) / 255)
    # crops 5..9 are the same five patches of the mirrored image: the mirror's top-left is top-right
    torch.testing.assert_close(crops[5, 0], top_right.flip(-1))


def test_pixels_normalised_in_the_forward_equal_preprocess_to_the_last_bit(predictor: Predictor) -> None:
    # what the service sends through the batcher (uint8, normalised per batch) against the per-image path
    images = [_image(1), _image(2, (300, 41)), Image.new("L", (70, 90), 9), _image(3, (64, 64))]
    pixels, floats = predictor.pixels(images), predictor.preprocess(images)
    assert pixels.dtype == torch.uint8 and pixels.shape == floats.shape
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(normalise_pixels(pixels, predictor.meta.preset), floats)
    for a, b in zip(predictor.forward(pixels), predictor.forward(floats), strict=True):
        assert torch.equal(a, b)
    ten = predictor.pixels(images[:2], ten_crop=True)
    assert ten.shape == (2, 10, *floats.shape[1:])
    assert torch.equal(
        normalise_pixels(ten.flatten(0, 1), predictor.meta.preset), predictor.preprocess(images[:2], ten_crop=True).flatten(0, 1)
    )
    assert predictor.pixels([]).shape == (0, *floats.shape[1:])
    with pytest.raises(ValueError, match="uint8"):
        normalise_pixels(floats, predictor.meta.preset)


def test_modes_become_rgb() -> None:
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("1", (4, 4), 1)).mode == "RGB"
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_classify_gives_top_k_sorted_probabilities(predictor: Predictor) -> None:
    preds = predictor.classify([_image(1), _image(2)], k=3)
    assert len(preds) == 2 and all(len(p) == 3 for p in preds)
    for p in preds:
        probs = [x.probability for x in p]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert {x.label for x in p} <= set(predictor.class_names)
    with pytest.raises(ValueError, match="between 1 and 4"):
        predictor.classify([_image(1)], k=5)


def test_ten_crop_averages_the_softmax_of_ten_distinct_patches(predictor: Predictor) -> None:
    """Section 4.1: the four corners and the centre, and their mirrors; the softmax averaged over the ten."""
    image = _image(3)
    crops = predictor.preprocess([image], ten_crop=True)[0]  # (10, 3, S, S)
    assert len({c.numpy().tobytes() for c in crops}) == 10  # ten different patches
    corners = {c.flip(-1).numpy().tobytes() for c in crops[:4]}
    assert {c.numpy().tobytes() for c in crops[5:9]} == corners  # the mirrored image's corners mirror the corners
    assert torch.equal(crops[4], predictor.preprocess([image])[0])  # the centre crop is the single crop's
    each = torch.cat([predictor.probabilities(c[None]) for c in crops])  # one patch at a time
    preds = predictor.classify([image], k=4, ten_crop=True)[0]
    got = {p.index: p.probability for p in preds}
    assert [got[i] for i in range(4)] == pytest.approx(each.mean(0).tolist(), abs=1e-5)
    single = {p.index: p.probability for p in predictor.classify([image], k=4)[0]}
    assert max(abs(got[i] - single[i]) for i in range(4)) > 1e-6  # (ignoring ten_crop would give these)


def test_batch_and_single_give_the_same_answers(predictor: Predictor) -> None:
    images = [_image(i) for i in range(5)]
    batch = predictor.classify(images, k=4)
    for im, expected in zip(images, batch, strict=True):
        got = predictor.classify([im], k=4)[0]
        assert [p.index for p in got] == [p.index for p in expected]
        assert [p.probability for p in got] == pytest.approx([p.probability for p in expected], abs=1e-5)


def test_embed_is_unit_length(predictor: Predictor) -> None:
    e = predictor.embed([_image(4), _image(5)])
    assert e.shape == (2, 4096) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_zero_vector_stays_zero_never_nan() -> None:
    v = l2_normalise(np.zeros((2, 8), dtype=np.float32))
    assert not np.isnan(v).any() and not v.any()


def test_concurrent_callers_get_consistent_results(predictor: Predictor) -> None:
    images = [_image(i) for i in range(4)]
    expected = predictor.embed(images)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(predictor.embed(images))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


def test_int8_fc_layers_stay_close_to_fp32(small_weights: Path) -> None:
    fp32, int8 = Predictor(small_weights), Predictor(small_weights, precision="int8")
    images = [_image(i) for i in range(8)]
    p32 = fp32.probabilities(fp32.preprocess(images))
    p8 = int8.probabilities(int8.preprocess(images))
    assert float((p32 - p8).abs().max()) < 0.05
    e32, e8 = fp32.embed(images), int8.embed(images)
    assert float(np.min(np.sum(e32 * e8, axis=1))) > 0.98  # cosine of the fc7 vectors
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(small_weights, precision="fp8")


def test_ten_crop_corners_come_from_the_central_square_and_softmaxes_are_averaged(predictor: Predictor) -> None:
    """Section 4.1 on a non-square photo: 600x400 at 256/224 is resized to 384x256; the paper's patches lie
    in the central 256x256 square (x 64..320), so the corners start at x 64 and 96, not 0 and 160."""
    preset = Preset(crop_size=224, resize_size=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8))
    resized = torch.from_numpy(np.asarray(v2.Resize(256, antialias=True)(photo), dtype=np.float32) / 255).permute(2, 0, 1)
    assert resized.shape == (3, 256, 384)
    crops = ten_crop_transform(preset)(photo)
    corners = [(64, 0), (96, 0), (64, 32), (96, 32), (80, 16)]  # (x, y): top-left, top-right, bottom-left, bottom-right, centre
    expected = [resized[:, y : y + 224, x : x + 224] for x, y in corners]
    for j in range(5):
        torch.testing.assert_close(crops[j], expected[j], msg=f"crop {j}")
    # the reflections: the five crops of the mirrored square (its top-left is the original top-right, mirrored)
    for j, source in enumerate([1, 0, 3, 2, 4]):
        torch.testing.assert_close(crops[5 + j], expected[source].flip(-1), msg=f"reflection {j}")
    # the averaged prediction is the mean of the ten softmaxes, computed here by hand
    ten = predictor.preprocess([photo.resize((300, 200))], ten_crop=True)[0]  # (10, 3, S, S)
    by_hand = torch.stack([predictor.forward(ten[j : j + 1])[0].softmax(1)[0] for j in range(10)]).mean(0)
    torch.testing.assert_close(predictor.probabilities(ten[None])[0], by_hand, rtol=1e-5, atol=1e-6)


def test_fp32_serving_folds_fc6_once_at_small_inputs_and_answers_as_the_file_does(small_weights: Path) -> None:
    """At 64 px pool5 is 1x1: the served model holds fc6 folded (256 inputs per tower, not 9216), so a forward
    pass no longer reads 37.7M weights to fold it; the logits and fc7 stay those of the paper's fc6."""
    from model.alexnet import AlexNet, FoldedFc6
    from model.weights import load_weights

    served = Predictor(small_weights)
    assert isinstance(served.model, AlexNet)
    assert all(isinstance(t.fc6, FoldedFc6) and t.fc6.in_features == 256 for t in served.model.tower_pair)
    model, meta = load_weights(small_weights)
    assert isinstance(model, AlexNet)
    reference = Predictor.from_model(model, meta)  # the file's layers, as they are
    assert type(model.tower_pair[0].fc6) is torch.nn.Linear
    x = served.pixels([_image(i) for i in range(5)])
    (la, fa), (lb, fb) = served.forward(x), reference.forward(x)
    assert torch.allclose(la, lb, atol=1e-4, rtol=1e-4) and torch.allclose(fa, fb, atol=1e-4, rtol=1e-4)
    assert float((fa - fb).abs().max()) < 1e-3 * float(fb.abs().max())
