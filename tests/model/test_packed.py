"""model/packed.py: oneDNN-packed fc layers compute what nn.Linear computes, and the Predictor uses them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from model.alexnet import alexnet, pool5_size
from model.packed import PackedLinear, pack_linears, packing_available
from model.predictor import Predictor

pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch lacks oneDNN's packed linear kernels")


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_nn_linear_at_every_batch(bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(300, 70, bias=bias)
    packed = PackedLinear(linear)
    for n in (1, 2, 5, 16, 33):
        x = torch.randn(n, 300)
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x[:, ::1].t().contiguous().t()), linear(x), rtol=1e-5, atol=1e-5)  # strided input


def test_packed_linear_refuses_training() -> None:
    packed = PackedLinear(nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="inference"):
        packed(torch.randn(2, 8, requires_grad=True))


def test_pool5_size_follows_the_network() -> None:
    net = alexnet(num_classes=3).eval()
    for size in (63, 64, 100, 224, 227, 256):
        t0 = net.tower_pair[0]
        x = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            h = t0.conv5(t0.conv4(t0.conv3(torch.cat([t0.conv2(t0.conv1(x))] * 2, 1))))
        assert h.shape[-1] == pool5_size(size), size


def test_packed_model_matches_the_plain_one_and_keeps_the_fc6_fold_for_small_inputs() -> None:
    torch.manual_seed(0)
    net = alexnet(num_classes=10).eval()
    for size, expected in ((224, 6), (64, 4)):  # at 64 px pool5 is 1x1: fc6 keeps its fold (AlexNet._fc6)
        packed = copy.deepcopy(net)
        assert pack_linears(packed, size) == expected
        assert isinstance(packed.tower_pair[0].fc7, PackedLinear)
        assert isinstance(packed.tower_pair[0].fc6, PackedLinear) == (size == 224)
        x = torch.randn(3, 3, size, size)
        with torch.inference_mode():
            (la, fa), (lb, fb) = packed.forward_with_fc7(x), net.forward_with_fc7(x)
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval"):
        pack_linears(alexnet(num_classes=3), 224)


def test_predictor_packs_fp32_on_the_cpu_only(small_weights: Path) -> None:
    packed, plain = Predictor(small_weights), Predictor(small_weights, pack=False)
    assert packed.packed_layers == 4 and plain.packed_layers == 0  # fc7, fc8 of both towers (small model)
    assert Predictor(small_weights, precision="int8").packed_layers == 0
    x = torch.randint(0, 256, (4, 3, packed.meta.preset.crop_size, packed.meta.preset.crop_size), dtype=torch.uint8)
    for a, b in zip(packed.forward(x), plain.forward(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
