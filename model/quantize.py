"""Reduced precision for serving: int8 (``ALEXNET_PRECISION=int8``), static and calibrated.

Static quantisation, calibrated ahead of time (``quantize_static``), where the weights file carries the
activation ranges (``WeightsMeta.calibration``, written at export or by ``alexnet calibrate``):
- weights: symmetric int8 per output channel, from the weights themselves;
- activations: one affine uint8 range per tensor, fixed by ``calibrate`` on 512 training images (the
  range whose quantisation error on those images is smallest, which clips the rarest values);
- conv2-conv5 run as fbgemm's fused int8 conv+ReLU; conv3 -> conv4 -> conv5 -> pool5 stay int8 from one
  layer to the next (a tensor's range is one layer's output and the next one's input); the LRN after
  conv2 runs in fp32;
- conv1 stays fp32 by default: it sees the signed, normalised pixels and its error spreads through every
  later layer (``first_conv`` puts it in int8 too; bench/RESULTS.md has both);
- fc6 and fc7 (96% of the weights with fc8; at batch 1 the pass is bound by reading them) run in int8
  with static input ranges, so an image's answer never depends on the batch it shares; fc8, the logits,
  has fp16 weights and fp32 arithmetic. At small inputs fc6 is folded first, as in training.
The convolutions in fp32 already run at the cores' FMA peak; int8 is the way past it.

Weights without calibration get ``quantize_fc``: dynamic int8 fc layers (input ranges measured per
batch) and fp32 convolutions. Dynamic int8 convolutions were faster but agreed too little with fp32
(96% top-5 overlap). ``bench/model_bench.py`` measures agreement and speed.

On CPUs without VNNI, fbgemm's int8 products can saturate 16-bit sums, so activations then use
7 bits, as PyTorch's own x86 configuration does.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from model.layers import ConvBlock, LocalResponseNorm

__all__ = ["PRECISIONS", "Int8ConvBlock", "Int8Linear", "calibrate", "quantize_fc", "quantize_static"]

PRECISIONS = ("fp32", "int8")
# torch.ao's quantised tensors are deprecated in favour of torchao, but are what this torch ships, and serve
# here as documented; the warning says nothing a user of this service can act on
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning)
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
_SAMPLE = 1 << 18  # values kept per tensor and batch for choosing its range
_MAX_VALUES = 1 << 22  # and per tensor in all (torch.quantile refuses inputs past 2^24 values)


def _engine() -> None:
    # fbgemm, not "x86": x86 runs these convolutions through oneDNN, whose packed weights are for one input shape;
    # a batch of another size then ran several times slower, every call (bench/RESULTS.md)
    for engine in ("fbgemm", "x86"):
        if engine in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = engine
            return


def quantize_fc(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (on the CPU, eval mode) whose ``nn.Linear`` layers run with int8 weights."""
    _engine()
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is deprecated in favour of torchao, but is what this torch ships
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8, inplace=False)


# -- calibration -------------------------------------------------------------------------------


def _levels() -> int:
    try:
        vnni = bool(torch.cpu._is_vnni_supported())
    except AttributeError:
        vnni = False
    return 255 if vnni else 127


def _qparams(lo: float, hi: float, levels: int) -> tuple[float, int]:
    """Scale and zero point of the affine quint8 grid that spans [lo, hi] (which always holds 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / levels, 1e-8)
    return scale, int(min(levels, max(0, round(-lo / scale))))


def _best_range(values: Tensor, levels: int) -> tuple[float, float]:
    """The clipping range for ``values`` whose quantise-dequantise error (mean square) is smallest,
    among ranges cut at quantiles of the two tails."""
    v = values.float()
    lo_all, hi_all = float(v.min()), float(v.max())
    best: tuple[float, tuple[float, float]] | None = None
    for q in (1.0, 0.99999, 0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99):
        lo = min(0.0, float(torch.quantile(v, 1 - q))) if q < 1 else min(0.0, lo_all)
        hi = max(0.0, float(torch.quantile(v, q))) if q < 1 else max(0.0, hi_all)
        scale, zp = _qparams(lo, hi, levels)
        err = float((torch.fake_quantize_per_tensor_affine(v, scale, zp, 0, levels) - v).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, (lo, hi))
    assert best is not None
    return best[1]


def _at_most(values: Tensor, n: int, g: torch.Generator) -> Tensor:
    """``values``, or ``n`` of them drawn at random (with replacement) where there are more."""
    return values[torch.randint(values.numel(), (n,), generator=g)] if values.numel() > n else values


def calibrate(model: nn.Module, batches: Iterable[Tensor], *, first_conv: bool = False) -> dict[str, Any]:
    """Activation ranges for ``quantize_static``: run the fp32 ``model`` (a two-tower AlexNet in eval mode)
    over ``batches`` (normalised images) and choose, for every convolution's input and output and for fc7's and fc8's
    inputs, the range whose quantisation error is smallest (on a random sample of at most 2^22 values each).
    JSON-friendly: ``{"levels": .., "first_conv": .., "images": .., "ranges": {"towers.0.conv2.in": [lo, hi], ...}}``."""
    from model.alexnet import AlexNet

    if not isinstance(model, AlexNet):
        raise ValueError(f"int8 convolutions are built for the two-tower AlexNet, not {type(model).__name__}")
    if model.training:
        raise ValueError("calibrate() runs the model in eval mode: call model.eval() first")
    levels = _levels()
    samples: dict[str, list[Tensor]] = {}
    g = torch.Generator().manual_seed(0)

    def keep(name: str, t: Tensor) -> None:
        samples.setdefault(name, []).append(_at_most(t.detach().float().reshape(-1).cpu(), _SAMPLE, g))

    hooks = []
    for t, tower in enumerate(model.tower_pair):
        for name in CONVS:
            conv = getattr(tower, name).conv
            key = f"towers.{t}.{name}"
            hooks.append(conv.register_forward_pre_hook(lambda _m, args, key=key: keep(f"{key}.in", args[0])))
            hooks.append(conv.register_forward_hook(lambda _m, _a, out, key=key: keep(f"{key}.out", out.relu())))
        for name in ("fc7", "fc8"):  # their inputs: fc6's and fc7's outputs after ReLU (fc6's input is pool5's)
            key = f"towers.{t}.{name}.in"
            hooks.append(getattr(tower, name).register_forward_pre_hook(lambda _m, args, key=key: keep(key, args[0])))
    seen = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                model(batch.to(model.devices[0]))
                seen += batch.shape[0]
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError("calibrate() needs at least one image")
    ranges = {k: list(_best_range(_at_most(torch.cat(v), _MAX_VALUES, g), levels)) for k, v in sorted(samples.items())}
    return {"levels": levels, "first_conv": first_conv, "images": seen, "ranges": ranges}


# -- the int8 model ----------------------------------------------------------------------------


class Int8ConvBlock(nn.Module):
    """A ``ConvBlock`` with its convolution and ReLU in int8 (fbgemm's fused quantised conv+ReLU).

    Takes fp32 (quantised here with the calibrated input range) or an already quantised tensor from the
    previous block; returns fp32 where LRN follows or ``keep_int8`` is off, else int8 for the next block."""

    def __init__(self, block: ConvBlock, in_range: tuple[float, float], out_range: tuple[float, float], levels: int,
                 keep_int8: bool) -> None:  # fmt: skip
        super().__init__()
        from torch.ao.nn.intrinsic.quantized import ConvReLU2d

        conv = block.conv
        self.in_scale, self.in_zero_point = _qparams(*in_range, levels)
        self.qconv = ConvReLU2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding)
        self.qconv.set_weight_bias(_per_channel(conv.weight), None if conv.bias is None else conv.bias.detach().float().cpu())
        scale, zp = _qparams(*out_range, levels)
        self.qconv.scale, self.qconv.zero_point = scale, zp
        self.lrn = next((m for m in block if isinstance(m, LocalResponseNorm)), None)
        self.pool = next((m for m in block if isinstance(m, nn.MaxPool2d)), None)
        self.keep_int8 = keep_int8 and self.lrn is None

    @property
    def conv(self) -> nn.Module:
        return self.qconv

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_quantized:
            x = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last), self.in_scale, self.in_zero_point,
                                          torch.quint8)  # fmt: skip
        y = self.qconv(x)
        if self.lrn is not None:
            y = self.lrn(y.dequantize())
        if self.pool is not None:
            y = self.pool(y)  # max pooling commutes with the (monotone) quantisation
        return y.dequantize() if y.is_quantized and not self.keep_int8 else y


class Int8Linear(nn.Module):
    """fc6 or fc7 (with its ReLU) in int8 with a static input range: the same answer for an image whatever batch
    it shares, unlike dynamic quantisation, whose input range is the batch's. fp32 in, fp32 out."""

    def __init__(self, linear: nn.Linear, in_range: tuple[float, float], out_range: tuple[float, float], levels: int) -> None:
        super().__init__()
        from torch.ao.nn.intrinsic.quantized import LinearReLU

        self.in_scale, self.in_zero_point = _qparams(*in_range, levels)
        self.qlinear = LinearReLU(linear.in_features, linear.out_features, dtype=torch.qint8)
        self.qlinear.set_weight_bias(_per_channel(linear.weight), None if linear.bias is None else linear.bias.detach().float().cpu())
        self.qlinear.scale, self.qlinear.zero_point = _qparams(*out_range, levels)
        self.pool5: tuple[int, int] | None = getattr(linear, "pool5", None)  # folded fc6 (``AlexNet.fold_fc6``)

    def forward(self, x: Tensor) -> Tensor:
        q = torch.quantize_per_tensor(x.contiguous(), self.in_scale, self.in_zero_point, torch.quint8)
        return self.qlinear(q).dequantize()


def _per_channel(weight: Tensor) -> Tensor:
    """Symmetric int8, one scale per output channel (row)."""
    w = weight.detach().float().cpu()
    scales = (w.flatten(1).abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    return torch.quantize_per_channel(w, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)


def _range(ranges: dict[str, list[float]], tower: int, point: str) -> tuple[float, float]:
    key = f"towers.{tower}.{point}"
    if key not in ranges:
        raise ValueError(f"the int8 calibration has no range for {key}: calibrate the weights again")
    lo, hi = ranges[key]
    return float(lo), float(hi)


def quantize_static(model: nn.Module, calibration: dict[str, Any], input_size: int | None = None) -> nn.Module:
    """A copy of a two-tower AlexNet for CPU inference in int8 (``calibration`` from ``calibrate``). conv1 stays
    fp32 unless it was calibrated with ``first_conv``. With ``input_size`` (the crop the model is served at) small
    enough that pool5 is under 6x6, fc6 is folded first (``AlexNet.fold_fc6``), as training does: 36x less of it
    to read at 64 px; the model then takes that size only."""
    from model.alexnet import AlexNet, pool5_size

    if not isinstance(model, AlexNet):
        raise ValueError(f"int8 convolutions are built for the two-tower AlexNet, not {type(model).__name__}")
    ranges, levels = calibration.get("ranges", {}), int(calibration.get("levels", 255))
    if levels not in (127, 255):
        raise ValueError(f"calibration levels must be 127 or 255, got {levels}")
    if levels > _levels():
        levels = 127  # calibrated on a VNNI CPU, served on one without: 7-bit grid over the same ranges
    if model.fc6_folded:
        raise ValueError("fc6 is folded (training form): call unfold_fc6() before quantize_static")
    q = copy.deepcopy(model).cpu().eval()
    side = pool5_size(input_size) if input_size else 6
    if side < 6 and 6 % side == 0:  # small inputs (1x1 pool5 at 64 px): fc6 reads 256 side^2 values, not 9216 copies of them
        q.fold_fc6((side, side))
    _engine()
    convs = CONVS if calibration.get("first_conv") else CONVS[1:]
    for t, tower in enumerate(q.tower_pair):
        for i, name in enumerate(convs):
            out = f"{convs[i + 1]}.in" if name in ("conv3", "conv4") else f"{name}.out"  # (int8 handed on as it is)
            block = Int8ConvBlock(getattr(tower, name), _range(ranges, t, f"{name}.in"), _range(ranges, t, out), levels,
                                  keep_int8=name in ("conv3", "conv4"))  # fmt: skip
            setattr(tower, name, block)
        # fc6 reads pool5 (conv5's output range); fc6's output is fc7's input, fc7's is fc8's
        for name, inp, out in (("fc6", "conv5.out", "fc7.in"), ("fc7", "fc7.in", "fc8.in")):
            setattr(tower, name, Int8Linear(getattr(tower, name), _range(ranges, t, inp), _range(ranges, t, out), levels))
        # fc8 with fp16 weights and fp32 activations: half the bytes to read (at batch 1 the pass reads every weight
        # once), and no activation range, so still the same answer at any batch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            tower.fc8 = torch.ao.quantization.quantize_dynamic(nn.Sequential(tower.fc8), {nn.Linear}, dtype=torch.float16)[0]
    return q
