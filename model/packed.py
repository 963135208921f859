"""fp32 serving on the CPU: fc6, fc7 and fc8 with their weights pre-packed for oneDNN.

``nn.Linear`` on the CPU calls MKL's sgemm, which is slow for the small batches a service
runs. oneDNN's inner product with the weight reordered once into its blocked layout (the kernel
PyTorch's own compiler uses for CPU linear layers) is faster there (bench/RESULTS.md, "Packed fc
layers"). Same fp32 arithmetic, summed in another order: outputs agree to about 1e-6 relative.

The kernels are private PyTorch ops (``torch.ops.mkldnn._reorder_linear_weight`` and
``_linear_pointwise``). Where a PyTorch release lacks them, or they fail or disagree with
``nn.Linear`` on a trial input, the layers stay ``nn.Linear`` and a warning says so: slower,
never wrong, so PyTorch needs only a minimum version.

Inference only (the packed weight has no gradient). ``bench/model_bench.py`` measures it.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from model.alexnet import AlexNet, pool5_size

__all__ = ["PackedLinear", "pack_linears", "packing_available"]

log = logging.getLogger(__name__)


def packing_available() -> bool:
    """oneDNN's packed linear kernels are in this build of PyTorch."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """An ``nn.Linear`` for CPU inference whose weight is stored in oneDNN's layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.weight.device.type != "cpu" or linear.weight.dtype != torch.float32:
            raise ValueError(f"PackedLinear takes an fp32 CPU nn.Linear, got {linear.weight.dtype} on {linear.weight.device}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            # packed for batch 1: the fastest there; a packing for batch 16 is a little faster at 16 and slower at 1
            # (bench/RESULTS.md, "ONNX Runtime at its best")
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().clone(), 1)
            self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference; train the nn.Linear it was made from")
        out: Tensor = torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None} (oneDNN packed)"


def pack_linears(model: AlexNet, input_size: int) -> int:
    """Replace, in place, the fc layers of a CPU fp32 two-tower AlexNet in eval mode by ``PackedLinear``;
    the number replaced (0 where this PyTorch lacks the kernels).

    fc6 stays an ``nn.Linear`` when inputs smaller than 224 px give a pool5 map under 6x6:
    there ``AlexNet._fc6`` folds the adaptive pool into its weight, which cuts more.
    """
    if not packing_available():
        log.warning("this PyTorch (%s) lacks oneDNN's packed linear kernels; fc layers use nn.Linear (slower)", torch.__version__)
        return 0
    if model.training:
        raise ValueError("pack_linears is for inference: call model.eval() first")
    names = ["fc7", "fc8"] + (["fc6"] if pool5_size(input_size) >= 6 else [])
    count = 0
    for tower in model.tower_pair:
        for name in names:
            layer = getattr(tower, name)
            if type(layer) is nn.Linear and layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32:
                packed = _trial(layer)
                if packed is None:
                    return count
                setattr(tower, name, packed)
                count += 1
    return count


def _trial(layer: nn.Linear) -> PackedLinear | None:
    """``layer`` packed, if the packed kernel runs here and agrees with it on a trial input; else None, logged."""
    x = torch.linspace(-1, 1, 2 * layer.in_features).view(2, layer.in_features)
    try:
        packed = PackedLinear(layer)
        with torch.inference_mode():
            ok = torch.allclose(packed(x), layer(x), rtol=1e-4, atol=1e-4)
        problem = "" if ok else "its outputs differ from nn.Linear's"
    except Exception as e:  # a private op whose signature changed in another PyTorch release
        problem = f"{type(e).__name__}: {e}"
    if problem:
        log.warning("oneDNN packed linear kernels unusable in PyTorch %s (%s); fc layers use nn.Linear (slower)", torch.__version__,
                    problem)  # fmt: skip
        return None
    return packed
