"""int8 serving: calibrated static int8 convolutions (model/quantize.py) against the fp32 network they come from."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from model import quantize
from model.alexnet import AlexNet, alexnet
from model.layers import ConvBlock
from model.predictor import Predictor
from model.quantize import Int8ConvBlock, Int8Linear, calibrate, quantize_static
from model.weights import load_weights, read_meta, save_weights


def _network(seed: int = 0) -> AlexNet:
    """An AlexNet whose activations carry signal through every layer (He initialisation, zero biases), unlike
    the paper's N(0, 0.01) start, under which every output is the same and any precision agrees."""
    torch.manual_seed(seed)
    net = alexnet(num_classes=10)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias) if m.bias is not None else None
    return net.eval()


def _images(n: int, seed: int) -> Tensor:
    """Smooth random images (blurred noise, normalised), 64 px."""
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.avg_pool2d(torch.randn(n, 3, 80, 80, generator=g), 9, stride=1)[:, :, :64, :64]
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def pair() -> tuple[AlexNet, nn.Module, dict[str, object]]:
    net = _network()
    cal = calibrate(net, [_images(16, seed=s) for s in range(2)])
    return net, quantize_static(net, cal), cal


def test_conv2_to_fc7_run_in_int8_and_stay_int8_from_conv3_to_pool5(pair: tuple[AlexNet, nn.Module, dict[str, object]]) -> None:
    net, q, _ = pair
    for tower in q.tower_pair:  # type: ignore[attr-defined]
        assert type(tower.conv1) is ConvBlock  # conv1 stays fp32 unless calibrated with first_conv
        assert all(isinstance(getattr(tower, n), Int8ConvBlock) for n in ("conv2", "conv3", "conv4", "conv5"))
        assert isinstance(tower.fc6, Int8Linear) and isinstance(tower.fc7, Int8Linear)
        assert tower.fc8._packed_params.dtype == torch.float16  # the logits: fp16 weights, fp32 activations, no range
    quantized: dict[str, bool] = {}
    hooks = [
        getattr(q.tower_pair[0], n).register_forward_hook(lambda _m, _a, out, n=n: quantized.__setitem__(n, out.is_quantized))  # type: ignore[attr-defined]
        for n in ("conv2", "conv3", "conv4", "conv5")
    ]
    with torch.inference_mode():
        q(_images(2, seed=9))
    for h in hooks:
        h.remove()
    # LRN follows conv2 (fp32); conv3 and conv4 hand int8 to the next layer; pool5 goes back to fp32 for fc6
    assert quantized == {"conv2": False, "conv3": True, "conv4": True, "conv5": False}
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the fp32 network is left as it was


def test_int8_agrees_with_fp32_on_images_it_was_not_calibrated_on(pair: tuple[AlexNet, nn.Module, dict[str, object]]) -> None:
    net, q, _ = pair
    x = _images(24, seed=5)
    with torch.inference_mode():
        (l32, f32), (l8, f8) = net.forward_with_fc7(x), q.forward_with_fc7(x)  # type: ignore[operator]
    cosine = nn.functional.cosine_similarity(f32, f8, dim=1)
    assert float(cosine.min()) > 0.99, cosine
    assert float((l8 - l32).norm() / l32.norm()) < 0.08
    assert float((l8.argmax(1) == l32.argmax(1)).float().mean()) >= 0.9
    # a deliberately bad range (conv3's input squeezed 50x) must hurt: the check above can fail
    _, _, cal = pair
    ranges = dict(cal["ranges"])  # type: ignore[call-overload]
    for t in (0, 1):
        lo, hi = ranges[f"towers.{t}.conv3.in"]
        ranges[f"towers.{t}.conv3.in"] = [lo / 50, hi / 50]
    bad = quantize_static(net, {**cal, "ranges": ranges})
    with torch.inference_mode():
        worse = nn.functional.cosine_similarity(f32, bad.forward_with_fc7(x)[1], dim=1)  # type: ignore[operator]
    assert float(worse.mean()) < float(cosine.mean()) - 0.01


def test_an_images_answer_does_not_depend_on_its_batch(pair: tuple[AlexNet, nn.Module, dict[str, object]]) -> None:
    """A service's batches vary in size from call to call. Every range is fixed ahead of time, so an image gets the
    same logits alone or with others (dynamic quantisation, ``quantize_fc``, measures ranges per batch: it moves)."""
    net, q, _ = pair
    x = _images(5, seed=3)
    with torch.inference_mode():
        whole = q(x)
        one_by_one = torch.cat([q(x[i : i + 1]) for i in range(5)])
        dynamic = quantize.quantize_fc(net)
        dyn_whole, dyn_alone = dynamic(x), torch.cat([dynamic(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(one_by_one, whole, rtol=1e-5, atol=1e-5)
    assert float((dyn_alone - dyn_whole).abs().max()) > 1e-3  # the check above can fail


def test_ranges_clip_a_long_tail_where_that_lowers_the_error_and_keep_zero_on_the_grid() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(200_000, generator=g).exp()  # log-normal: a long tail, like ReLU activations' largest values

    def error(lo: float, hi: float) -> float:
        scale, zero = quantize._qparams(lo, hi, 255)
        return float((torch.fake_quantize_per_tensor_affine(values, scale, zero, 0, 255) - values).pow(2).mean())

    lo, hi = quantize._best_range(values, 255)
    assert lo == 0.0 and hi < 0.9 * float(values.max())  # the rarest values are clipped ...
    assert error(lo, hi) < 0.9 * error(0.0, float(values.max()))  # ... because that quantises the rest finer
    lone = torch.cat([torch.rand(100_000, generator=g), torch.tensor([1000.0])])
    assert quantize._best_range(lone, 255)[1] == 1000.0  # one huge value: clipping it costs more than it saves
    scale, zero = quantize._qparams(-1.0, 3.0, 255)
    assert zero == 64 and scale == pytest.approx(4 / 255)  # 0.0 is exactly representable (zero point 64)
    assert quantize._qparams(0.0, 2.0, 127) == (pytest.approx(2 / 127), 0)


def test_first_conv_and_seven_bit_activations(pair: tuple[AlexNet, nn.Module, dict[str, object]], monkeypatch: pytest.MonkeyPatch) -> None:
    """conv1 in int8 on request; a CPU without VNNI gets 7-bit activations, also from a file calibrated on one with it."""
    net, _, _ = pair
    x = _images(8, seed=6)
    cal = calibrate(net, [_images(16, seed=0)], first_conv=True)
    monkeypatch.setattr(quantize, "_levels", lambda: 127)
    q = quantize_static(net, cal)
    assert isinstance(q.tower_pair[0].conv1, Int8ConvBlock) and q.tower_pair[0].conv2.qconv.zero_point == 0  # type: ignore[attr-defined]
    assert q.tower_pair[0].conv2.in_scale == pytest.approx(cal["ranges"]["towers.0.conv2.in"][1] / 127)  # type: ignore[attr-defined,index]
    with torch.inference_mode():
        cosine = nn.functional.cosine_similarity(net.embed(x), q.embed(x), dim=1)  # type: ignore[operator]
    assert float(cosine.min()) > 0.97


def test_bad_calibrations_are_refused_with_a_reason(pair: tuple[AlexNet, nn.Module, dict[str, object]]) -> None:
    net, _, cal = pair
    ranges = {k: v for k, v in cal["ranges"].items() if k != "towers.1.conv4.in"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"no range for towers\.1\.conv4\.in.*calibrate"):
        quantize_static(net, {**cal, "ranges": ranges})
    with pytest.raises(ValueError, match="levels must be 127 or 255"):
        quantize_static(net, {**cal, "levels": 16})
    with pytest.raises(ValueError, match="eval mode"):
        calibrate(copy.deepcopy(net).train(), [_images(2, seed=0)])
    with pytest.raises(ValueError, match="at least one image"):
        calibrate(net, [])
    with pytest.raises(ValueError, match="two-tower AlexNet"):
        calibrate(nn.Sequential(nn.Conv2d(3, 3, 3)), [_images(2, seed=0)])


def test_calibration_travels_in_the_weights_file_and_the_predictor_uses_it(
    small_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, meta = load_weights(small_weights)
    assert meta.calibration == {}
    with caplog.at_level(logging.WARNING, logger="model.predictor"):
        fc_only = Predictor(small_weights, precision="int8")  # not calibrated: int8 fc, fp32 convolutions
    assert "no int8 calibration" in caplog.text and "alexnet calibrate" in caplog.text
    assert not any(isinstance(m, Int8ConvBlock) for m in fc_only.model.modules())

    path = tmp_path / "calibrated.safetensors"
    cal = calibrate(model, [_images(8, seed=0)])
    saved = save_weights(model, replace(meta, calibration=cal), path)
    assert saved.content_hash == meta.content_hash  # metadata, not tensors
    assert read_meta(path).calibration == cal  # through JSON and back, exactly
    int8 = Predictor(path, precision="int8")
    assert sum(isinstance(m, Int8ConvBlock) for m in int8.model.modules()) == 8
    assert not any(isinstance(m, Int8ConvBlock) for m in Predictor(path).model.modules())  # fp32 ignores it
    images = _images(4, seed=1)
    fp32 = Predictor(path)
    (l32, _), (l8, _) = fp32.forward(images), int8.forward(images)
    assert torch.isfinite(l8).all() and l8.shape == l32.shape


def test_many_calibration_images_are_sampled_not_refused(pair: tuple[AlexNet, nn.Module, dict[str, object]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """torch.quantile refuses more than 2^24 values, which 64 batches of 128 images would pass: each tensor's values
    are sampled down first (here to 5,000, to be quick)."""
    net, _, _ = pair
    monkeypatch.setattr(quantize, "_MAX_VALUES", 5000)
    monkeypatch.setattr(quantize, "_SAMPLE", 3000)
    sizes: list[int] = []
    real = quantize._best_range
    monkeypatch.setattr(quantize, "_best_range", lambda v, levels: sizes.append(v.numel()) or real(v, levels))
    cal = calibrate(net, [_images(2, seed=s) for s in range(3)])
    assert cal["images"] == 6 and len(cal["ranges"]) == 24
    assert max(sizes) == 5000  # 3 batches of up to 3,000 values each, sampled down to 5,000
    assert all(hi > 0 for _, hi in cal["ranges"].values())


def test_at_64_px_fc6_is_folded_and_answers_as_the_paper_shaped_one(pair: tuple[AlexNet, nn.Module, dict[str, object]]) -> None:
    """At 64 px pool5 is 1x1 and the paper's fc6 reads 36 copies of each value: the int8 model for that size holds
    fc6 folded (256 inputs), like training, and gives the same answers as the unfolded int8 model."""
    net, unfolded, cal = pair
    folded = quantize_static(net, cal, input_size=64)
    fc6 = folded.tower_pair[0].fc6  # type: ignore[attr-defined]
    assert isinstance(fc6, Int8Linear) and fc6.pool5 == (1, 1) and fc6.qlinear.in_features == 256
    assert net.fc6_folded is None  # the served copy is folded, not the caller's network
    x = _images(8, seed=4)
    with torch.inference_mode():
        f32, f_unfolded, f_folded = net.embed(x), unfolded.embed(x), folded.embed(x)  # type: ignore[operator]
        cosine = nn.functional.cosine_similarity(f32, f_folded, dim=1)
        assert float(cosine.min()) > 0.99
        assert float(nn.functional.cosine_similarity(f_unfolded, f_folded, dim=1).min()) > 0.995
        with pytest.raises(ValueError, match="folded for a 1x1 pool5 map"):
            folded(_images(2, seed=0).repeat(1, 1, 2, 2))  # 128 px: a 3x3 pool5
