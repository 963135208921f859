"""The network against the numbers the paper states (section 3.5, Figure 2)."""

import pytest
import torch
from torch import nn

from model.alexnet import AlexNet, alexnet


@pytest.fixture(scope="module")
def net() -> AlexNet:
    torch.manual_seed(0)
    return alexnet(num_classes=1000).eval()


def test_parameter_count_is_the_papers(net: AlexNet) -> None:
    assert sum(p.numel() for p in net.parameters()) == 60_965_224


def test_output_sizes_per_image_match_the_paper(net: AlexNet) -> None:
    sizes: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            sizes[name] = sizes.get(name, 0) + out[0].numel()

        return record

    for tower in net.towers:
        for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            getattr(tower, layer).conv.register_forward_hook(hook(layer))
        for layer in ("fc6", "fc7"):
            getattr(tower, layer).register_forward_hook(hook(layer))
    with torch.no_grad():
        logits = net(torch.randn(1, 3, 224, 224))
    assert sizes["conv1"] == 96 * 55 * 55  # the paper's 55x55 maps (290,400)
    assert [sizes[k] for k in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7")] == [
        186_624,
        64_896,
        64_896,
        43_264,
        4096,
        4096,
    ]
    assert logits.shape == (1, 1000)


def _tower0_output(net: AlexNet, layer: str, perturb_tower1_conv1: bool) -> torch.Tensor:
    """Run the towers by hand, optionally replacing tower 1's conv1 output with noise."""
    t0, t1 = net.towers
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    h0, h1 = t0.conv1(x), t1.conv1(x)
    if perturb_tower1_conv1:
        h1 = torch.randn_like(h1).abs()
    h0, h1 = t0.conv2(h0), t1.conv2(h1)
    if layer == "conv2":
        return h0
    return t0.conv3(torch.cat([h0, h1], 1))


def test_conv2_sees_only_its_own_tower_and_conv3_sees_both(net: AlexNet) -> None:
    with torch.no_grad():
        torch.testing.assert_close(_tower0_output(net, "conv2", False), _tower0_output(net, "conv2", True))
        assert not torch.allclose(_tower0_output(net, "conv3", False), _tower0_output(net, "conv3", True))


def test_conv4_conv5_are_tower_local_and_fc_layers_see_both(net: AlexNet) -> None:
    t0, t1 = net.towers
    # weight shapes say which inputs a layer sees: conv4/conv5 take one tower's channels
    assert t0.conv4.conv.weight.shape == (192, 192, 3, 3)
    assert t0.conv5.conv.weight.shape == (128, 192, 3, 3)
    assert t0.conv3.conv.weight.shape == (192, 256, 3, 3)  # both towers' 128 + 128
    assert t0.fc6.weight.shape == (2048, 9216)  # both towers' 128 x 6 x 6
    assert t0.fc7.weight.shape == (2048, 4096)
    assert t0.fc8.weight.shape == (1000, 2048) and t1.fc8.weight.shape == (1000, 2048)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        base = net(x)
        t1.fc7.weight.mul_(2)  # tower 1's fc7 changes the shared logits
        changed = net(x)
        t1.fc7.weight.div_(2)
    assert not torch.allclose(base, changed)


def test_initialisation_follows_the_paper() -> None:
    torch.manual_seed(0)
    net = alexnet(num_classes=10, bias_init=1.0)
    t0 = net.towers[0]
    for layer in ("conv2", "conv4", "conv5"):
        assert torch.all(getattr(t0, layer).conv.bias == 1)
    for layer in ("conv1", "conv3"):
        assert torch.all(getattr(t0, layer).conv.bias == 0)
    assert torch.all(t0.fc6.bias == 1) and torch.all(t0.fc7.bias == 1)
    assert torch.all(net.fc8_bias == 0)  # the output layer is not a hidden layer: its bias starts at 0
    w = t0.fc6.weight.detach()
    assert abs(float(w.mean())) < 1e-4 and abs(float(w.std()) - 0.01) < 1e-4
    assert torch.all(alexnet(num_classes=10, bias_init=0.1).towers[1].conv2.conv.bias == 0.1)


def test_adaptive_pool_is_an_exact_no_op_at_224(net: AlexNet) -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = []
        for tower in net.towers:
            h = tower.conv1(x)
            feats.append(h)
        t0 = net.towers[0]
        h = t0.conv5(t0.conv4(t0.conv3(torch.cat([t0.conv2(feats[0]), net.towers[1].conv2(feats[1])], 1))))
    assert h.shape[-2:] == (6, 6)
    assert torch.equal(net.pool(h), h)


@pytest.mark.parametrize(("size", "classes"), [(64, 10), (96, 3), (227, 1)])
def test_any_class_count_and_input_size(size: int, classes: int) -> None:
    net = alexnet(num_classes=classes).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, classes)
        assert net.embed(torch.randn(2, 3, size, size)).shape == (2, 4096)


def test_embed_is_fc7_after_relu_in_eval_mode(net: AlexNet) -> None:
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        e = net.embed(x)
        logits, fc7 = net.forward_with_fc7(x)
        torch.testing.assert_close(e, fc7)
        torch.testing.assert_close(logits, net(x))
    assert e.shape == (3, 4096) and float(e.min()) >= 0.0
    net.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            net.embed(x)
    finally:
        net.eval()


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    net = alexnet(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        net.train()
        a, b = net(x), net(x)
        net.eval()
        c, d = net(x), net(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d)


def test_rejects_zero_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        alexnet(num_classes=0)


@pytest.mark.parametrize("size", [64, 100, 160])
def test_folded_pool_equals_pool_then_fc6(size: int) -> None:
    """Below 6x6 the adaptive pool is folded into fc6's weights; the function must not change."""
    torch.manual_seed(0)
    net = alexnet(num_classes=3).eval()
    t0 = net.tower_pair[0]
    x = torch.randn(2, 256, *{64: (1, 1), 100: (2, 2), 160: (4, 4)}[size]).relu()
    with torch.no_grad():
        direct = t0.fc6(torch.flatten(net.pool(x), 1))
        torch.testing.assert_close(net._fc6(t0, x), direct, rtol=1e-4, atol=1e-5)
    xg = x.clone().requires_grad_()
    net._fc6(t0, xg).sum().backward()
    g_fold = t0.fc6.weight.grad.clone()
    t0.fc6.weight.grad = None
    t0.fc6(torch.flatten(net.pool(x), 1)).sum().backward()
    torch.testing.assert_close(g_fold, t0.fc6.weight.grad, rtol=1e-4, atol=1e-5)


def test_too_small_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="H, W >= 63"):
        alexnet(num_classes=2)(torch.randn(1, 3, 32, 32))


def test_training_works_after_inference_at_a_folded_size() -> None:
    """The cached pool matrix made under inference_mode must not break a later backward pass."""
    from model.alexnet import _pool_matrix

    _pool_matrix.cache_clear()
    net = alexnet(num_classes=3)
    with torch.inference_mode():
        net.eval()(torch.randn(1, 3, 64, 64))
    net.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    assert net.towers[0].fc6.weight.grad is not None
