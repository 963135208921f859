"""torchvision's single-tower AlexNet ("One weird trick", Krizhevsky 2014), for imported weights.

It exists only so that a user holding torchvision's ImageNet file
``alexnet-owt-*.pth`` can serve real ImageNet predictions at once (see
``model.weights.import_torchvision``). It offers the same surface as
``model.alexnet.AlexNet``: ``forward``, ``forward_with_fc7``, ``embed`` and ``place``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models import AlexNet as _TVAlexNet

__all__ = ["TorchvisionAlexNet"]


class TorchvisionAlexNet(_TVAlexNet):
    architecture = "alexnet-torchvision"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(num_classes=num_classes)

    def place(self, devices: Sequence[str | torch.device] | str | torch.device) -> TorchvisionAlexNet:
        devs = [d.strip() for d in devices.split(",")] if isinstance(devices, str) else devices
        devs = [devs] if isinstance(devs, torch.device) else list(devs)
        if len(set(map(str, devs))) != 1:
            raise ValueError("the single-tower torchvision AlexNet runs on one device only")
        return self.to(torch.device(devs[0]))

    def forward_with_fc7(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.flatten(self.avgpool(self.features(x)), 1)  # (B, 9216)
        fc7 = self.classifier[:6](x)  # dropout, fc6, relu, dropout, fc7, relu -> (B, 4096)
        return self.classifier[6](fc7), fc7

    def embed(self, x: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError("embed() is defined in eval mode; call model.eval() first")
        return self.forward_with_fc7(x)[1]
