"""Placement of the two towers: outputs and training steps must not depend on it."""

import copy

import pytest
import torch

from model.alexnet import alexnet

CUDA2 = torch.cuda.is_available() and torch.cuda.device_count() >= 2
CUDA1 = torch.cuda.is_available()

PLACEMENTS = [
    pytest.param(["cpu", "cpu"], id="two-cpu-devices"),
    pytest.param(["cuda:0"], id="one-gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA1, reason="no GPU")]),
    pytest.param(["cuda:0", "cuda:1"], id="two-gpus", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA2, reason="needs two GPUs")]),
]


@pytest.mark.parametrize("devices", PLACEMENTS)
def test_outputs_do_not_depend_on_placement(devices: list[str]) -> None:
    torch.manual_seed(0)
    ref = alexnet(num_classes=7).eval()
    placed = copy.deepcopy(ref).place(devices)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = ref(x), placed(x)
    assert got.device == torch.device(devices[0])
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("devices", PLACEMENTS)
def test_training_step_does_not_depend_on_placement(devices: list[str]) -> None:
    torch.manual_seed(0)
    ref = alexnet(num_classes=5, dropout=0.0, bias_init=0.1)
    placed = copy.deepcopy(ref).place(devices)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    for net in (ref, placed):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        loss = torch.nn.functional.cross_entropy(net(x), y.to(net.devices[0]))
        loss.backward()
        opt.step()
    for (name, a), (_, b) in zip(ref.named_parameters(), placed.named_parameters(), strict=True):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-4, atol=1e-6, msg=name)


def test_place_accepts_a_comma_string_and_rejects_three_devices() -> None:
    net = alexnet(num_classes=3).place("cpu,cpu")
    assert net.devices == (torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="one or two devices"):
        net.place(["cpu", "cpu", "cpu"])
