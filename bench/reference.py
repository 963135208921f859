"""The plain eager reference: the paper's grouped AlexNet from stock ``torch.nn`` layers.

Grouped convolutions stand for the two towers and ``nn.LocalResponseNorm`` (alpha/n
convention, so alpha=5e-4 is the paper's 1e-4). ``from_towers`` copies a two-tower
model's weights in, so both compute the same function and can be compared in one run.
"""

from __future__ import annotations

import torch
from torch import nn

from model.alexnet import AlexNet


def reference_alexnet(num_classes: int = 1000) -> nn.Sequential:
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d((6, 6)),
        nn.Flatten(),
        nn.Linear(9216, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )


@torch.no_grad()
def from_towers(net: AlexNet) -> nn.Sequential:
    """A reference network holding the same weights as the two-tower ``net``."""
    t0, t1 = net.tower_pair
    ref = reference_alexnet(net.config.num_classes)
    convs = [m for m in ref if isinstance(m, nn.Conv2d)]
    for conv, name in zip(convs, ("conv1", "conv2", "conv3", "conv4", "conv5"), strict=True):
        a, b = getattr(t0, name).conv, getattr(t1, name).conv
        conv.weight.copy_(torch.cat([a.weight, b.weight]))
        conv.bias.copy_(torch.cat([a.bias, b.bias]))
    fcs = [m for m in ref if isinstance(m, nn.Linear)]
    for fc, name in zip(fcs[:2], ("fc6", "fc7"), strict=True):
        a, b = getattr(t0, name), getattr(t1, name)
        fc.weight.copy_(torch.cat([a.weight, b.weight]))
        fc.bias.copy_(torch.cat([a.bias, b.bias]))
    fcs[2].weight.copy_(torch.cat([t0.fc8.weight, t1.fc8.weight], dim=1))
    fcs[2].bias.copy_(net.fc8_bias)
    return ref.train(net.training)
