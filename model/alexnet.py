"""The 2012 AlexNet as the paper draws it: two towers, each holding half of every layer.

References: Krizhevsky, Sutskever, Hinton, NIPS 2012, section 3.5 and Figure 2.

Where this departs from the paper, and why:
- conv1 uses padding 2 so that a 224x224 input gives the paper's 55x55 maps
  (the paper's 224 with no padding does not divide; 227 would).
- An adaptive average pool to 6x6 stands before fc6 so that inputs other than
  224 are accepted; at 224 the map is already 6x6 and the pool is an exact no-op.
- fc8's two halves are summed on tower 0's device and its bias lives there once,
  so the parameter count is the paper's 60,965,224 for 1000 classes.
- Dropout follows the paper (outputs of fc6 and fc7), not torchvision (inputs).
- Inputs are normalised per channel by the training set's mean *and* standard deviation
  (``model.preprocess.Preset``); the paper subtracts the mean only. Dividing by the std keeps
  inputs near unit scale whatever the data set (Fashion-MNIST's grey, low-contrast pixels as
  well as ImageNet's), so that the paper's N(0, 0.01) initialisation and learning rates carry
  over; it is a per-channel scaling the first layer could absorb, not a change of the function class.
- ``bias_init`` (1 in the paper, section 5) is a recipe parameter: Caffe found 1 can stall
  training and used 0.1. fc8's bias starts at 0, as the paper's constant 1 is for the hidden layers.

Exchange between the towers happens only at conv3, fc6, fc7 and fc8, as in the
paper, and each tower receives only the other tower's half there (``_cross``); on two
devices those are the only cross-device copies besides the input and the output's gather.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.layers import ConvBlock, relu_dropout

__all__ = ["MIN_INPUT", "AlexNet", "AlexNetConfig", "FoldedFc6", "alexnet", "pool5_size"]

# The smallest input for which every pooling layer still has a 3x3 window (pool5 sees 3x3).
MIN_INPUT = 63


@functools.lru_cache(maxsize=32)
def _pool_matrix(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Adaptive average pooling (h, w) -> (6, 6) as a (36, h*w) matrix."""
    # cached across calls, so never an inference tensor: a first call under inference_mode
    # (serving) must not poison later training steps
    with torch.inference_mode(False), torch.no_grad():
        basis = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
        pooled = F.adaptive_avg_pool2d(basis, (6, 6)).view(h * w, 36)  # row s: where input s goes
        return pooled.t().contiguous().to(device=device, dtype=dtype)


def pool5_size(input_size: int) -> int:
    """Side of the pool5 map for a square input: conv1 (11, stride 4, padding 2) and three 3/2 pools."""
    side = (input_size + 2 * 2 - 11) // 4 + 1
    for _ in range(3):
        side = (side - 3) // 2 + 1
    return side


class FoldedFc6(nn.Linear):
    """fc6 stored in its folded form, ``W P``, for inputs whose pool5 map is ``pool5`` (h, w) with h and w
    dividing 6 (``AlexNet.fold_fc6``): the adaptive pool then copies each input to ``copies`` = 36 / (h w)
    of fc6's inputs, so ``(256 h w) -> 2048`` weights carry the whole function."""

    def __init__(self, in_features: int, out_features: int, pool5: tuple[int, int]) -> None:
        super().__init__(in_features, out_features)
        self.pool5 = pool5

    @property
    def copies(self) -> int:
        return 36 // (self.pool5[0] * self.pool5[1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, folded for a {self.pool5[0]}x{self.pool5[1]} pool5 map"


@dataclass(frozen=True)
class AlexNetConfig:
    num_classes: int = 1000
    dropout: float = 0.5  # section 4.2
    # Section 5: "We initialized the neuron biases in the second, fourth, and fifth
    # convolutional layers, as well as in the fully-connected hidden layers, with the
    # constant 1". Caffe found 1 can stall training and used 0.1: a recipe choice.
    bias_init: float = 1.0
    weight_std: float = 0.01  # section 5: zero-mean Gaussian, standard deviation 0.01


class Tower(nn.Module):
    """One of the two towers: half of every layer's kernels and neurons."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 48, 11, stride=4, padding=2, lrn=True, pool=True)  # (B, 48, 27, 27)
        self.conv2 = ConvBlock(48, 128, 5, padding=2, lrn=True, pool=True)  # own tower -> (B, 128, 13, 13)
        self.conv3 = ConvBlock(256, 192, 3, padding=1)  # both towers -> (B, 192, 13, 13)
        self.conv4 = ConvBlock(192, 192, 3, padding=1)  # own tower
        self.conv5 = ConvBlock(192, 128, 3, padding=1, pool=True)  # own tower -> (B, 128, 6, 6)
        self.fc6 = nn.Linear(256 * 6 * 6, 2048)  # both towers
        self.fc7 = nn.Linear(4096, 2048)  # both towers
        self.fc8 = nn.Linear(2048, num_classes, bias=False)  # this tower's half of fc8's input

    @property
    def device(self) -> torch.device:
        weight = self.conv1.conv.weight  # (fc weights may be quantised packed params; an int8 conv's is a method)
        return (weight() if callable(weight) else weight).device


class AlexNet(nn.Module):
    """The paper's AlexNet. ``forward`` gives logits; ``embed`` gives fc7 after its ReLU."""

    architecture = "alexnet-2tower"

    def __init__(self, config: AlexNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or AlexNetConfig()
        if self.config.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.config.num_classes}")
        self.towers = nn.ModuleList([Tower(self.config.num_classes) for _ in range(2)])
        self.fc8_bias = nn.Parameter(torch.zeros(self.config.num_classes))
        self.pool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 224x224 input
        self.transfers: list[tuple[str, int, int, tuple[int, ...]]] | None = None  # see _cross
        self.reset_parameters()

    # -- initialisation -------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Section 5: weights N(0, 0.01); bias ``bias_init`` in conv2/4/5 and the hidden fully connected layers
        (fc6, fc7), 0 in conv1, conv3 and the output layer fc8."""
        c = self.config
        for tower in self.towers:
            for name, module in tower.named_modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(module.weight, 0.0, c.weight_std)
                    if module.bias is not None:
                        layer = name.split(".")[0]
                        ones = layer in {"conv2", "conv4", "conv5", "fc6", "fc7"}
                        nn.init.constant_(module.bias, c.bias_init if ones else 0.0)
        nn.init.zeros_(self.fc8_bias)  # "fully-connected hidden layers" only: fc8 is the output layer

    # -- placement ------------------------------------------------------------------

    def place(self, devices: Sequence[str | torch.device] | str | torch.device) -> AlexNet:
        """Put both towers on one device, or tower 0 and tower 1 on two devices."""
        if isinstance(devices, (str, torch.device)):
            devices = [d.strip() for d in str(devices).split(",")] if isinstance(devices, str) else [devices]
        devs = [torch.device(d) for d in devices]
        if len(devs) == 1:
            devs = devs * 2
        if len(devs) != 2:
            raise ValueError(f"place() takes one or two devices, got {len(devs)}: {list(devices)}")
        for tower, dev in zip(self.towers, devs, strict=True):
            tower.to(dev)
        self.fc8_bias.data = self.fc8_bias.data.to(devs[0])
        return self

    # -- fc6 in folded form (training at small inputs) ------------------------------------

    def fold_fc6(self, pool5: tuple[int, int]) -> AlexNet:
        """Hold fc6 as ``W P`` (``FoldedFc6``) for inputs whose pool5 map is ``pool5``; in place.

        When h and w divide 6, every one of fc6's 9216 inputs is a copy of one of the 256 h w pool5 values,
        and the ``copies`` = 36 / (h w) weights that read the same value always receive the same gradient.
        An element-wise optimiser (SGD, Adam, AdamW) then gives each of them the same update, so their sum
        ``W P`` moves by ``copies`` times one update: training ``W P`` with the learning rate times ``copies``
        and the weight decay divided by it (``training.schedule.make_optimizer``) follows the same path as
        training W, and a step reads and writes 37.7M fewer weights, gradients and optimiser moments.
        """
        h, w = pool5
        if h < 1 or w < 1 or 6 % h or 6 % w or (h, w) == (6, 6):
            raise ValueError(f"fc6 folds for a pool5 map whose sides divide 6 and are under 6, not {h}x{w}")
        for tower in self.tower_pair:
            fc6 = tower.fc6
            if type(fc6) is not nn.Linear:
                raise ValueError(f"fc6 is {type(fc6).__name__}, not an unfolded nn.Linear")
            pool = _pool_matrix(h, w, fc6.weight.device, fc6.weight.dtype)  # (36, hw)
            folded = FoldedFc6(256 * h * w, fc6.out_features, (h, w)).to(fc6.weight.device)
            with torch.no_grad():
                folded.weight.copy_((fc6.weight.view(fc6.out_features, 256, 36) @ pool).flatten(1))
                folded.bias.copy_(fc6.bias)
            tower.fc6 = folded
        return self

    def unfold_fc6(self) -> AlexNet:
        """Back to the paper's (2048, 9216) fc6, in place: each folded weight spread evenly over its copies,
        so that ``W P`` and every output at the folded size are unchanged. No-op when fc6 is not folded."""
        for tower in self.tower_pair:
            fc6 = tower.fc6
            if not isinstance(fc6, FoldedFc6):
                continue
            h, w = fc6.pool5
            pool = _pool_matrix(h, w, fc6.weight.device, fc6.weight.dtype)  # (36, hw); P^T P = copies * I
            full = nn.Linear(256 * 36, fc6.out_features).to(fc6.weight.device)
            with torch.no_grad():
                full.weight.copy_((fc6.weight.view(fc6.out_features, 256, h * w) @ pool.t()).flatten(1) / fc6.copies)
                full.bias.copy_(fc6.bias)
            tower.fc6 = full
        return self

    @property
    def fc6_folded(self) -> tuple[int, int] | None:
        fc6 = self.tower_pair[0].fc6
        return fc6.pool5 if isinstance(fc6, FoldedFc6) else None

    @property
    def tower_pair(self) -> tuple[Tower, Tower]:
        return cast(Tower, self.towers[0]), cast(Tower, self.towers[1])

    @property
    def devices(self) -> tuple[torch.device, torch.device]:
        t0, t1 = self.tower_pair
        return t0.device, t1.device

    # -- forward --------------------------------------------------------------------

    def _cross(self, x: Tensor, to: int, layer: str) -> Tensor:
        """Every activation that crosses from one tower to the other goes through here: to tower ``to``'s
        device, recorded when ``self.transfers`` is a list (tests check the paper's wiring with it)."""
        if self.transfers is not None:
            self.transfers.append((layer, 1 - to, to, tuple(x.shape)))
        return x.to(self.devices[to])

    def _fc7_halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each tower's half of fc7 after ReLU and dropout: 2 x (B, 2048), each on its own tower's device."""
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < MIN_INPUT:
            raise ValueError(f"expected images of shape (B, 3, H, W) with H, W >= {MIN_INPUT}, got {tuple(x.shape)}")
        t0, t1 = self.tower_pair
        d0, d1 = self.devices
        h = [t0.conv1(x.to(d0)), t1.conv1(x.to(d1))]  # 2 x (B, 48, 27, 27)
        h = [t0.conv2(h[0]), t1.conv2(h[1])]  # 2 x (B, 128, 13, 13)  own tower only
        # exchange 1: conv3 sees both towers (each receives only the other's half)
        h = [
            t0.conv3(torch.cat([h[0], self._cross(h[1], 0, "conv3")], 1)),  # (B, 192, 13, 13)
            t1.conv3(torch.cat([self._cross(h[0], 1, "conv3"), h[1]], 1)),
        ]
        h = [t0.conv4(h[0]), t1.conv4(h[1])]  # own tower only  2 x (B, 192, 13, 13)
        h = [t0.conv5(h[0]), t1.conv5(h[1])]  # own tower only  2 x (B, 128, 6, 6)
        p, drop = self.config.dropout, self.training
        # exchange 2: fc6 sees both towers
        x0 = torch.cat([h[0], self._cross(h[1], 0, "fc6")], 1)  # (B, 256, 6, 6)
        x1 = torch.cat([self._cross(h[0], 1, "fc6"), h[1]], 1)
        h = [relu_dropout(self._fc6(t0, x0), p, drop), relu_dropout(self._fc6(t1, x1), p, drop)]  # 2 x (B, 2048)
        # exchange 3: fc7 sees both towers
        x0 = torch.cat([h[0], self._cross(h[1], 0, "fc7")], 1)  # (B, 4096)
        x1 = torch.cat([self._cross(h[0], 1, "fc7"), h[1]], 1)
        return relu_dropout(t0.fc7(x0), p, drop), relu_dropout(t1.fc7(x1), p, drop)

    def _fc7(self, x: Tensor) -> Tensor:
        """fc7 activations after ReLU and dropout: (B, 4096), on tower 0's device (the output's gather)."""
        h0, h1 = self._fc7_halves(x)
        return torch.cat([h0, self._cross(h1, 0, "fc7-out")], 1)

    def _fc8(self, h0: Tensor, h1: Tensor) -> Tensor:
        # exchange 4: each tower computes fc8 of its own half of fc7; the partial sums meet on tower 0
        t0, t1 = self.tower_pair
        return t0.fc8(h0) + self._cross(t1.fc8(h1), 0, "fc8") + self.fc8_bias  # (B, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self._fc8(*self._fc7_halves(x))

    def forward_with_fc7(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and fc7 (after ReLU) from one pass: ((B, classes), (B, 4096))."""
        h0, h1 = self._fc7_halves(x)
        return self._fc8(h0, h1), torch.cat([h0, self._cross(h1, 0, "fc7-out")], 1)

    def embed(self, x: Tensor) -> Tensor:
        """fc7 after its ReLU, in eval mode (dropout off): (B, 4096)."""
        if self.training:
            raise RuntimeError("embed() is defined in eval mode; call model.eval() first")
        return self._fc7(x)

    def _fc6(self, tower: Tower, x: Tensor) -> Tensor:
        """fc6 of the adaptively pooled (B, 256, 6, 6) map, for any pool5 size (h, w).

        At 224 px the map is 6x6 and the pool is skipped. When h*w < 36 (small inputs,
        e.g. 1x1 at 64 px) the pool only repeats values, so it is folded into the
        weights instead: fc6(P x) = (W P) x with P the pool's (36, h*w) matrix. The same
        function and the same gradients, with fc6's cost cut by 36 / (h*w).
        """
        hw = x.shape[-2] * x.shape[-1]
        folded = getattr(tower.fc6, "pool5", None)  # FoldedFc6, or an int8 fc6 made from one (model/quantize.py)
        if folded is not None:
            if tuple(x.shape[-2:]) != folded:
                ph, pw = folded
                raise ValueError(f"fc6 is folded for a {ph}x{pw} pool5 map, got {tuple(x.shape[-2:])}; call unfold_fc6() first")
            return tower.fc6(torch.flatten(x, 1))
        if x.shape[-2:] == (6, 6):
            return tower.fc6(torch.flatten(x, 1))  # (B, 9216)
        if hw >= 36 or type(tower.fc6) is not nn.Linear:  # (a quantised fc6 has no float weight to fold)
            return tower.fc6(torch.flatten(self.pool(x), 1))
        pool = _pool_matrix(x.shape[-2], x.shape[-1], x.device, x.dtype)  # (36, hw)
        w = (tower.fc6.weight.view(-1, x.shape[1], 36) @ pool).flatten(1)  # (2048, 256 * hw)
        return F.linear(torch.flatten(x, 1), w, tower.fc6.bias)


def alexnet(*, num_classes: int = 1000, dropout: float = 0.5, bias_init: float = 1.0) -> AlexNet:
    """Build the paper's two-tower AlexNet, freshly initialised."""
    return AlexNet(AlexNetConfig(num_classes=num_classes, dropout=dropout, bias_init=bias_init))
