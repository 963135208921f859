"""The exponential moving average of a model's weights that a recipe may evaluate and export instead of the weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """An exponential moving average of a model's weights (what is evaluated and exported when the recipe asks
    for it): after each step, average <- average + (1 - d) * (weights - average), with d ramped up from 0 over
    the first steps ((1 + step) / (10 + step)) so that the random initialisation is forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        avg = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        cur = [t for t in model.state_dict().values() if t.is_floating_point()]
        torch._foreach_lerp_(avg, cur, 1 - d)
