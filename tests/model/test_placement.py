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


def test_only_the_other_towers_half_crosses_and_only_at_conv3_fc6_fc7_fc8() -> None:
    """Section 3.5: the towers communicate only in certain layers. Every cross-tower copy goes through
    AlexNet._cross; at 224 px these are exactly the paper's exchanges, each carrying one half."""
    torch.manual_seed(0)
    net = alexnet(num_classes=10).eval()
    net.transfers = []
    with torch.no_grad():
        net(torch.randn(2, 3, 224, 224))
    assert net.transfers == [
        ("conv3", 1, 0, (2, 128, 13, 13)),
        ("conv3", 0, 1, (2, 128, 13, 13)),
        ("fc6", 1, 0, (2, 128, 6, 6)),
        ("fc6", 0, 1, (2, 128, 6, 6)),
        ("fc7", 1, 0, (2, 2048)),
        ("fc7", 0, 1, (2, 2048)),
        ("fc8", 1, 0, (2, 10)),  # tower 1's partial sum of fc8; its fc7 half never goes to tower 0 and back
    ]
    net.transfers = []
    with torch.no_grad():
        net.embed(torch.randn(2, 3, 224, 224))
    assert [t[0] for t in net.transfers] == ["conv3", "conv3", "fc6", "fc6", "fc7", "fc7", "fc7-out"]


def _tower_outputs(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each tower's output of each layer, by forward hooks: {"0.conv2": ..., "1.fc6": ...}."""
    out: dict[str, torch.Tensor] = {}
    hooks = []
    for t, tower in enumerate(net.towers):
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
            def hook(_m: object, _i: object, o: torch.Tensor, key: str = f"{t}.{name}") -> None:
                out[key] = o.detach().clone()

            hooks.append(getattr(tower, name).register_forward_hook(hook))
    with torch.no_grad():
        out["logits"] = net(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("other", [0, 1])
def test_own_tower_layers_see_only_their_own_tower(other: int) -> None:
    """Change one tower's weights in a layer: the other tower's outputs change only from the next exchange on."""
    torch.manual_seed(0)
    net = alexnet(num_classes=10, bias_init=0.1).eval()
    x = torch.randn(1, 3, 224, 224)
    base = _tower_outputs(net, x)
    me = 1 - other
    # layer changed in tower `other` -> (outputs of tower `me` that must not change, the first that must)
    cases = {
        "conv1": (["conv1", "conv2"], "conv3"),
        "conv2": (["conv2"], "conv3"),
        "conv3": (["conv3", "conv4", "conv5"], "fc6"),
        "conv4": (["conv4", "conv5"], "fc6"),
        "conv5": (["conv5"], "fc6"),
        "fc6": (["fc6"], "fc7"),
        "fc7": (["fc7"], "logits"),
    }
    for layer, (same, changed) in cases.items():
        module = getattr(net.towers[other], layer)
        weight = module.conv.weight if hasattr(module, "conv") else module.weight
        saved = weight.detach().clone()
        with torch.no_grad():
            weight.mul_(1.5).add_(0.01)
        got = _tower_outputs(net, x)
        with torch.no_grad():
            weight.copy_(saved)
        for name in same:
            torch.testing.assert_close(got[f"{me}.{name}"], base[f"{me}.{name}"], msg=f"tower {me}'s {name} saw tower {other}'s {layer}")
        key = changed if changed == "logits" else f"{me}.{changed}"
        assert not torch.allclose(got[key], base[key]), f"tower {me}'s {changed} should see tower {other}'s {layer}"
